"""Region rules: the published table (training and sampling rule, sign and gain), per-image
thresholds, in-region standardisation and the published whole-frame re-standardisation."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax.model import regions
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError

N_SIDE = 32
N = N_SIDE * N_SIDE

# docs/method.md section 5, as published: (kind, threshold, above, sign, gain) for training and for
# sampling; unpublished sampling entries (ADNI; CT's regions) are the training ones.
PUBLISHED = {
    ("spect", "cr"): (("percentile", 70, True, +1, 1.0), ("percentile", 95, True, +1, 1.0)),
    ("spect", "cb"): (("percentile", 30, False, -1, 1.0), ("percentile", 7, False, -1, 1.0)),
    ("adni", "cr"): (("percentile", 70, True, +1, 1.0), ("percentile", 70, True, +1, 1.0)),
    ("adni", "cb"): (("percentile", 30, False, -1, 1.0), ("percentile", 30, False, -1, 1.0)),
    ("ct", "cr"): (("percentile", 15, False, -1, 1.0), ("percentile", 15, False, -1, 1.0)),
    ("ct", "cb"): (("percentile", 85, True, +1, 1.0), ("percentile", 85, True, -1, 1.0)),
    ("gfp", "cr"): (("percentile", 7, False, -1, 0.45), ("percentile", 6.5, False, +1, 1.0)),
    ("gfp", "cb"): (("percentile", 7, False, -1, 0.45), ("percentile", 6.5, False, +1, 1.0)),
    ("pet", "cr"): (("background", 10, True, -1, 1.0), ("background", 10, True, +1, 1.0)),
    ("pet", "cb"): (("background", -100, False, -1, 1.0), ("background", -100, False, +1, 1.0)),
}


@pytest.fixture(scope="module")
def config(paper_config_path):
    return load_config(paper_config_path)


@pytest.mark.parametrize("phase", ["train", "sample"])
def test_rules_from_config_are_the_published_table(config, phase):
    for (task, channel), (train, sample) in PUBLISHED.items():
        rule = getattr(regions.rules_from_config(config.regions, task, phase), channel)
        kind, threshold, above, sign, gain = train if phase == "train" else sample
        assert rule == regions.RegionRule(regions.KINDS[kind], threshold, above, sign, gain)


def test_the_phase_chooses_sign_and_gain(config):
    """The published training branches and sampler fuse A with different signs and gains."""
    def sign_gain(task, channel, phase):
        rule = getattr(regions.rules_from_config(config.regions, task, phase), channel)
        return rule.sign, rule.gain

    for channel in ("cr", "cb"):
        assert sign_gain("pet", channel, "train") == (-1.0, 1.0)
        assert sign_gain("pet", channel, "sample") == (1.0, 1.0)
        assert sign_gain("gfp", channel, "train") == (-1.0, 0.45)
        assert sign_gain("gfp", channel, "sample") == (1.0, 1.0)
    assert sign_gain("ct", "cb", "train") == (1.0, 1.0)
    assert sign_gain("ct", "cb", "sample") == (-1.0, 1.0)
    assert sign_gain("spect", "cb", "train") == sign_gain("spect", "cb", "sample") == (-1.0, 1.0)


def test_sign_gain_and_statistics_are_overridable(paper_config_path):
    config = load_config(paper_config_path, [("regions.pet.cr.sample.sign", "-1"),
                                             ("regions.gfp.cb.train.gain", "0.6"),
                                             ("regions_statistics", "in_region")])
    assert regions.rules_from_config(config.regions, "pet", "sample").cr.sign == -1.0
    assert regions.rules_from_config(config.regions, "pet", "sample").cb.sign == 1.0
    assert regions.rules_from_config(config.regions, "pet", "train").cr.sign == -1.0
    assert regions.rules_from_config(config.regions, "gfp", "train").cb.gain == 0.6
    assert regions.rules_from_config(config.regions, "gfp", "sample").cb.gain == 1.0
    assert regions.statistics_from_config(config) == regions.IN_REGION
    assert regions.statistics_from_config(load_config(paper_config_path)) == regions.WHOLE_FRAME
    with pytest.raises(UserError, match="regions.pet.cr.sample.sign"):
        regions.rules_from_config(
            load_config(paper_config_path, [("regions.pet.cr.sample.sign", "0.5")]).regions,
            "pet", "sample")
    with pytest.raises(UserError, match="regions.gfp.cr.train.gain"):
        regions.rules_from_config(
            load_config(paper_config_path, [("regions.gfp.cr.train.gain", "-1")]).regions,
            "gfp", "train")
    with pytest.raises(UserError, match="regions_statistics"):
        regions.statistics_from_config(
            load_config(paper_config_path, [("regions_statistics", "per_batch")]))


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
        for phase, (kind, q, above, _, _) in zip(("train", "sample"), rules):
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


# ---- re-standardisation of the fused chroma ------------------------------------------------

def published_restandardise(x, b, region, reference):
    """Float64 NumPy transcription of the published post-step of one image: t = x R standardised
    by its own whole-frame mean and (unbiased, torch) std + 1e-5, given the whole-frame mean and
    std of b R; pixels where t == reference keep t; clipped; b outside R."""
    t = np.where(region, x, 0.0)
    source = np.where(region, b, 0.0)
    out = (t - t.mean()) / (t.std(ddof=1) + 1e-5) * source.std(ddof=1) + source.mean()
    keep = t == reference
    out[keep] = t[keep]
    return np.where(region, np.clip(out, -1.0, 1.0), b)


def in_region_restandardise(x, b, region):
    """Float64 in-region statistics (population std), clipped, b outside R: the old behaviour."""
    xs, bs = x[region], b[region]
    out = (x - xs.mean()) / xs.std() * bs.std() + bs.mean()
    return np.where(region, np.clip(out, -1.0, 1.0), b)


def chroma_case(seed, shares, size=24):
    """x (a fused chroma, mean 0.5 in R) and b (B_c, mean -0.4) [B, H, W, 1] float32, random
    regions covering `shares` of each image, and per-image references b at REFERENCE_PIXEL."""
    rng = np.random.default_rng(seed)
    shape = (len(shares), size, size, 1)
    x = rng.normal(0.5, 0.15, shape).astype(np.float32)
    b = np.clip(rng.normal(-0.4, 0.1, shape), -1, 1).astype(np.float32)
    region = rng.uniform(size=shape) < np.asarray(shares)[:, None, None, None]
    return x, b, region


def test_whole_frame_moment_matching_matches_published_formula():
    x, b, region = chroma_case(4, [0.08, 0.3, 0.6, 0.95])
    reference = b[:, 2:3, 2:3, :].copy()  # the published sampler's reference: B_c at (2, 2)
    # image 1: the reference pixel lies in R and the reference is t's own value there (the
    # published training branch), so that pixel keeps its raw value
    region[1, 2, 2, 0] = True
    reference[1] = x[1, 2, 2, 0]
    restandardise = jax.jit(regions.restandardise, static_argnums=4)
    got = np.asarray(restandardise(jnp.asarray(x), jnp.asarray(b), jnp.asarray(region),
                                   jnp.asarray(reference), regions.WHOLE_FRAME))
    x64, b64 = x.astype(np.float64), b.astype(np.float64)
    for i in range(len(x)):
        expected = published_restandardise(x64[i], b64[i], region[i], float(reference[i, 0, 0, 0]))
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=2e-6, err_msg=f"image {i}")
        np.testing.assert_array_equal(got[i][~region[i]], b[i][~region[i]])
    assert got[1, 2, 2, 0] == x[1, 2, 2, 0]
    neighbour = got[1][region[1]][np.argsort(np.abs(x[1][region[1]] - x[1, 2, 2, 0]))[1]]
    assert abs(neighbour - x[1, 2, 2, 0]) > 0.05  # its neighbours in value were moved

    # On 8 % of the image whole-frame statistics are not B_c's statistics in R: the mean in R
    # stays far from B_c's, while the in-region option reproduces it.
    in_region = np.asarray(restandardise(jnp.asarray(x), jnp.asarray(b), jnp.asarray(region),
                                         jnp.asarray(reference), regions.IN_REGION))
    r0 = region[0]
    assert 0.05 < r0.mean() < 0.11
    assert in_region[0][r0].mean() == pytest.approx(b[0][r0].mean(), abs=1e-4)
    assert abs(got[0][r0].mean() - b[0][r0].mean()) > 0.3
    assert np.abs(got[0] - in_region[0]).max() > 0.3


def test_in_region_option_is_the_old_behaviour():
    x, b, region = chroma_case(5, [0.08, 0.5])
    got = np.asarray(jax.jit(regions.restandardise, static_argnums=4)(
        jnp.asarray(x), jnp.asarray(b), jnp.asarray(region), jnp.zeros((2, 1, 1, 1)),
        regions.IN_REGION))
    for i in range(2):
        expected = in_region_restandardise(x[i].astype(np.float64), b[i].astype(np.float64),
                                           region[i])
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=2e-6)


def test_whole_frame_gradients_stay_finite_for_degenerate_regions():
    """An empty region (t = 0) and a region of a constant x over the whole frame have zero
    variance; the published std + 1e-5 with sqrt(var) would give NaN gradients there."""
    x, b, _ = chroma_case(6, [0.0, 0.0, 0.0])
    x[1] = 0.25  # exact in binary: the whole-frame mean is 0.25 and the variance exactly 0
    region = np.zeros(x.shape, bool)
    region[1] = True
    region[2, 3:9, 4:12] = True

    def loss(values, statistics):
        reference = regions.pixel_values(jnp.where(region, values, 0.0), regions.REFERENCE_PIXEL)
        return jnp.sum(regions.restandardise(values, jnp.asarray(b), jnp.asarray(region),
                                             reference, statistics) ** 2)

    for statistics in regions.STATISTICS:
        grad = jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(x), statistics)
        assert np.all(np.isfinite(np.asarray(grad))), statistics
        assert np.abs(np.asarray(grad[2])).max() > 0  # the ordinary image does get gradients


def test_statistics_option_is_checked():
    with pytest.raises(ValueError, match="statistics"):
        regions.restandardise(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 1)),
                              jnp.ones((1, 4, 4, 1), bool), jnp.zeros((1, 1, 1, 1)), "per_batch")
