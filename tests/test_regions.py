"""Region rules: the published table, per-image thresholds and in-region standardisation."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import regions
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError

N_SIDE = 32
N = N_SIDE * N_SIDE

# SPEC section 5, as published: (kind, threshold, above) for training and sampling, sign, gain.
PUBLISHED = {
    ("spect", "cr"): (("percentile", 70, True), ("percentile", 95, True), +1, 1.0),
    ("spect", "cb"): (("percentile", 30, False), ("percentile", 7, False), -1, 1.0),
    ("adni", "cr"): (("percentile", 70, True), ("percentile", 70, True), +1, 1.0),
    ("adni", "cb"): (("percentile", 30, False), ("percentile", 30, False), -1, 1.0),
    ("ct", "cr"): (("percentile", 15, False), ("percentile", 15, False), -1, 1.0),
    ("ct", "cb"): (("percentile", 85, True), ("percentile", 85, True), +1, 1.0),
    ("gfp", "cr"): (("percentile", 7, False), ("percentile", 6.5, False), -1, 0.45),
    ("gfp", "cb"): (("percentile", 7, False), ("percentile", 6.5, False), -1, 0.45),
    ("pet", "cr"): (("background", 10, True), ("background", 10, True), -1, 1.0),
    ("pet", "cb"): (("background", -100, False), ("background", -100, False), -1, 1.0),
}


@pytest.fixture(scope="module")
def config(paper_config_path):
    return load_config(paper_config_path)


@pytest.mark.parametrize("phase", ["train", "sample"])
def test_rules_from_config_are_the_published_table(config, phase):
    for (task, channel), (train, sample, sign, gain) in PUBLISHED.items():
        rule = getattr(regions.rules_from_config(config.regions, task, phase), channel)
        kind, threshold, above = train if phase == "train" else sample
        assert rule == regions.RegionRule(regions.KINDS[kind], threshold, above, sign, gain)


def ranked_images(batch=2):
    """Images whose pixel values are distinct permutations, each image on its own value range
    (so a batch-wide threshold would select different pixels), and the ranks."""
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(N) for _ in range(batch)]).reshape(batch, N_SIDE, N_SIDE, 1)
    scale = np.array([1.0, 0.3])[:batch, None, None, None]
    offset = np.array([0.0, -0.6])[:batch, None, None, None]
    values = (ranks / (N - 1) * 2 - 1) * scale + offset
    return jnp.asarray(values, jnp.float32), ranks


def test_percentile_rules_select_published_share_per_image(config):
    """'>= q-th percentile' keeps the pixels of rank >= floor(q N / 100), '<= q-th' those of
    rank <= floor(q N / 100), counted in each image separately."""
    values, ranks = ranked_images()
    select = jax.jit(regions.region_mask)
    for (task, channel), rules in PUBLISHED.items():
        for phase, (kind, q, above) in zip(("train", "sample"), rules[:2]):
            if kind != "percentile":
                continue
            rule = getattr(regions.rules_from_config(config.regions, task, phase), channel)
            cut = int(np.floor(q * N / 100))
            expected = ranks >= cut if above else ranks <= cut
            np.testing.assert_array_equal(select(values, rule), expected,
                                          err_msg=f"{task} {channel} {phase}")
            share = expected[0].mean()
            assert share == pytest.approx((100 - q) / 100 if above else q / 100, abs=2 / N)


def test_background_rules_compare_with_reference_pixel(config):
    """PET: Cr >= 10 x and Cb <= -100 x the value at row 0, column 5, per image."""
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, (2, N_SIDE, N_SIDE, 1))
    values[0, 0, 5, 0], values[1, 0, 5, 0] = 0.02, 0.004
    rules = regions.rules_from_config(config.regions, "pet", "train")
    cr = regions.region_mask(jnp.asarray(values, jnp.float32), rules.cr)
    cb = regions.region_mask(jnp.asarray(values, jnp.float32), rules.cb)
    reference = np.array([0.02, 0.004])[:, None, None, None]
    np.testing.assert_array_equal(cr, values >= 10 * reference)
    np.testing.assert_array_equal(cb, values <= -100 * reference)
    assert 0 < np.asarray(cr).mean() < 1 and 0 < np.asarray(cb).mean() < 1


def test_rule_passed_as_traced_argument_selects_the_same(config):
    """A rule given to jit as an argument (its numbers traced) gives the same mask, so one
    compiled function serves every task."""
    values, _ = ranked_images()
    traced = jax.jit(regions.region_mask)
    for task in ("spect", "pet"):
        for rule in regions.rules_from_config(config.regions, task, "train"):
            as_arrays = regions.RegionRule(*(jnp.asarray(field) for field in rule))
            np.testing.assert_array_equal(traced(values, as_arrays),
                                          regions.region_mask(values, rule))


def test_standardise_in_region_matches_target_statistics():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(0.3, 0.2, (2, 16, 16, 1)), jnp.float32)
    b = jnp.asarray(rng.normal(-0.2, 0.5, (2, 16, 16, 1)), jnp.float32)
    region = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)) < np.array([0.3, 0.7])[:, None, None,
                                                                                 None])
    out = np.asarray(regions.standardise_in_region(a, b, region), np.float64)
    r, bb = np.asarray(region), np.asarray(b, np.float64)
    for i in range(2):
        inside = out[i][r[i]]
        assert inside.mean() == pytest.approx(bb[i][r[i]].mean(), abs=1e-5)
        assert inside.std() == pytest.approx(bb[i][r[i]].std(), rel=1e-3)
        assert np.all(out[i][~r[i]] == 0)
    # An empty region gives zeros, not NaN.
    empty = regions.standardise_in_region(a, b, jnp.zeros_like(region))
    np.testing.assert_array_equal(empty, 0.0)


def test_bad_rule_requests_raise(config):
    with pytest.raises(UserError, match="regions.mri"):
        regions.rules_from_config(config.regions, "mri", "train")
    with pytest.raises(UserError, match="'train' or 'sample'"):
        regions.rules_from_config(config.regions, "pet", "test")
    bad = copy.deepcopy(config.regions)
    bad.ct.cr.train.kind = "otsu"
    with pytest.raises(UserError, match="regions.ct.cr.train.kind"):
        regions.rules_from_config(bad, "ct", "train")
