"""The sampler in its published settings (configs/paper.py PUBLISHED_SAMPLING) against a NumPy
float32 transcription of the published loop (docs/method.md section 6), step by step, with a
fake network (a fixed function of its inputs) fed to both; and the published stage boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import color, parallel
from difffccf_jax.config_cli import load_config
from difffccf_jax.inference import sampling
from difffccf_jax.model import composition, diffusion, regions, settings

SIZE = 16
KEY = 3
F32 = np.float32

# OpenCV's 8-bit YCrCb conversions as cv2.cvtColor returns them (opencv-python-headless 5.1.0):
# (R, G, B) -> (Y, Cr, Cb) from COLOR_RGB2YCrCb, and the same triple read as (Y, Cr, Cb) -> (R, G,
# B) from COLOR_YCrCb2RGB. The whole 8-bit cube was compared once, both ways: no difference.
OPENCV_VALUES = (
    ((0, 0, 0), (0, 128, 128), (0, 135, 0)),
    ((255, 255, 255), (255, 128, 128), (255, 121, 255)),
    ((255, 0, 0), (76, 255, 85), (75, 255, 28)),
    ((0, 255, 0), (150, 21, 43), (178, 0, 0)),
    ((0, 0, 255), (29, 107, 255), (0, 48, 225)),
    ((1, 2, 3), (2, 127, 129), (0, 134, 0)),
    ((200, 100, 50), (124, 182, 86), (161, 247, 62)),
    ((17, 240, 133), (161, 25, 112), (174, 0, 26)),
    ((128, 128, 128), (128, 128, 128), (128, 128, 128)),
    ((90, 3, 251), (57, 152, 237), (0, 137, 255)),
    ((254, 1, 127), (91, 244, 148), (76, 255, 252)),
)


def test_opencv8_conversions_give_opencvs_values():
    triples, forward, inverse = (np.array(column, np.uint8) for column in zip(*OPENCV_VALUES))
    np.testing.assert_array_equal(color.rgb_to_ycrcb_opencv8(triples), forward)
    np.testing.assert_array_equal(color.ycrcb_to_rgb_opencv8(triples), inverse)
    np.testing.assert_array_equal(np.asarray(jax.jit(color.jnp_rgb_to_ycrcb_opencv8)(triples)),
                                  forward)
    np.testing.assert_array_equal(np.asarray(jax.jit(color.jnp_ycrcb_to_rgb_opencv8)(triples)),
                                  inverse)
    # Cr and Cb come from the rounded Y: for (90, 3, 251) Y 57.285 -> 57 gives Cr
    # (90 - 57) 0.713 + 128 = 151.53 -> 152, where the float formula's Cr is 151.33 -> 151
    float_levels = color.rgb_to_ycrcb_uint8(triples)
    assert float_levels[9, 1] == 151 and forward[9, 1] == 152


# ---- the fake network --------------------------------------------------------------------

def fake_outputs(inputs, t, xp):
    """(eps, m1, m2) [R, H, W, 1] of the fake network: smooth fixed functions of its input
    [cond1, cond2, x^A, x^B] [R, H, W, 4] and of t [R], written for NumPy and jax.numpy."""
    c1, c2, x_a, x_b = (inputs[..., i:i + 1] for i in range(4))
    time = xp.reshape(xp.asarray(t).astype(xp.float32), (-1, 1, 1, 1)) * F32(0.1)
    eps = F32(0.8) * xp.tanh(x_a - F32(0.5) * x_b + F32(0.3) * c1 - F32(0.2) * c2 + time)
    m1 = F32(1) / (F32(1) + xp.exp(F32(-3) * (x_a - x_b) - c1 + c2))
    m2 = F32(1) / (F32(1) + xp.exp(-(x_a + x_b) - F32(2) * c1 * c2))
    return eps, m1, m2


class FakeOutput:
    def __init__(self, noise, m1, m2):
        self.noise, self.m1, self.m2 = noise, m1, m2


class FakeNetwork:
    """`model.apply` of the fake network; records each call's input and t."""

    def __init__(self, record):
        self.record = record

    def apply(self, variables, inputs, t, train=False):
        del variables, train
        jax.debug.callback(lambda i, s: self.record("input", np.asarray(i), np.asarray(s)),
                           inputs, t, ordered=True)
        return FakeOutput(*fake_outputs(inputs, t, jnp))


# ---- the NumPy transcription of the published loop -----------------------------------------

def published_tables(steps):
    """The cosine schedule's tables as the published code computes them: float32 throughout."""
    s = np.arange(steps + 1, dtype=np.float64) / steps
    abar = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - abar[1:] / abar[:-1], 0.999).astype(F32)
    alphas = F32(1) - betas
    acp = np.cumprod(alphas)
    acp_prev = np.concatenate([[F32(1)], acp[:-1]])
    return dict(sqrt_acp=np.sqrt(acp), sqrt_1m_acp=np.sqrt(F32(1) - acp),
                recip=np.sqrt(F32(1) / acp), recipm1=np.sqrt(F32(1) / acp - F32(1)),
                coef1=betas * np.sqrt(acp_prev) / (F32(1) - acp),
                coef2=(F32(1) - acp_prev) * np.sqrt(alphas) / (F32(1) - acp))


def descale(x):
    return (x + (1 << 13)) >> 14


def opencv_rgb_to_ycrcb(rgb):
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    y = descale(4899 * r + 9617 * g + 1868 * b)
    return np.clip(np.stack([y, descale((r - y) * 11682 + (128 << 14)),
                             descale((b - y) * 9241 + (128 << 14))], -1), 0, 255)


def opencv_ycrcb_to_rgb(ycrcb):
    y, cr, cb = (ycrcb[..., i].astype(np.int64) - d for i, d in enumerate((0, 128, 128)))
    return np.clip(np.stack([y + descale(22987 * cr), y + descale(-11698 * cr - 5636 * cb),
                             y + descale(29049 * cb)], -1), 0, 255).astype(np.uint8)


def published_loop(a_grey, b_rgb, start_noise, steps, record):
    """The published PET sampler for one pair, float32: a_grey uint8 [H, W], b_rgb uint8
    [H, W, 3], start_noise [3, H, W] (x = eps; x^A, x^B the conditions noised with it, this
    project's start: the published draws three samples, so both are given the same start).
    record(kind, channel, step, value) sees every intermediate; returns the RGB uint8 image."""
    tab = published_tables(steps)
    a = a_grey.astype(F32) / F32(127.5) - F32(1)
    b = opencv_rgb_to_ycrcb(b_rgb).astype(F32) / F32(127.5) - F32(1)
    third = steps // 3
    fused = []
    for channel in range(3):
        bc = b[..., channel]
        if channel == 0:
            region = np.ones_like(bc, bool)
            cond_a, cond_b = a, bc
        else:
            region = bc >= 10 * bc[0, 5] if channel == 1 else bc <= -100 * bc[0, 5]
            inside_a, inside_b = a[region], bc[region]
            standardised = ((a - inside_a.mean()) / (inside_a.std(ddof=1) + F32(1e-5))
                            * inside_b.std(ddof=1) + inside_b.mean())
            cond_a, cond_b = np.where(region, standardised, F32(0)), bc * region
        eps = start_noise[channel]
        x = eps
        x_a = tab["sqrt_acp"][-1] * cond_a + tab["sqrt_1m_acp"][-1] * eps
        x_b = tab["sqrt_acp"][-1] * cond_b + tab["sqrt_1m_acp"][-1] * eps
        for i in range(steps - 1, -1, -1):
            if i > steps - third:
                c1, c2 = cond_b, cond_b
            elif i < third:
                c1, c2 = cond_a, cond_a
            else:
                c1, c2 = cond_a, cond_b
            inputs = np.stack([c1, c2, x_a, x_b], -1)[None]
            record("input", channel, i, inputs[0])
            eps_hat, m1, m2 = (v[0, ..., 0] for v in fake_outputs(inputs, np.array([i]), np))
            f = m1 * x_a + (1 - m1) * x_b if channel == 0 else x_b + m2 * x_a  # PET: +1, gain 1
            x = (f + x) / 2

            def posterior(z):
                x0 = np.clip(tab["recip"][i] * z - tab["recipm1"][i] * eps_hat, -1, 1)
                return tab["coef1"][i] * x0 + tab["coef2"][i] * z

            x, x_a, x_b = posterior(x), posterior(x_a), posterior(x_b)
            record("step", channel, i, np.stack([x, x_a, x_b]))
            if channel == 1:  # PET Cr: reflected
                x = np.where(region, np.clip(F32(0.8) - x, -1, 1), bc)
            elif channel == 2:  # whole-frame moment matching of the masked images
                t, target = x * region, bc * region
                u = ((t - t.mean()) / (t.std(ddof=1) + F32(1e-5)) * target.std(ddof=1)
                     + target.mean())
                x = np.where(region, np.clip(np.where(t == bc[2, 2], t, u), -1, 1), bc)
            record("post", channel, i, x)
        fused.append(x)
    levels = np.floor((np.stack(fused, -1) + F32(1)) * F32(127.5))  # the uint8 cast truncates
    return opencv_ycrcb_to_rgb(np.clip(levels, 0, 255).astype(np.uint8))


# ---- the sampler, recorded ---------------------------------------------------------------

def make_pair():
    """A textured grey A and a hot-mapped blob on black for B (uint8), so both PET regions are
    neither empty nor everything."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    blob = np.exp(-((rows - 8.5) ** 2 + (cols - 7.0) ** 2) / (2 * 3.5 ** 2))
    a = np.clip(255 * (0.2 + 0.6 * blob) * rng.uniform(0.7, 1.0, (SIZE, SIZE)), 0, 255)
    uptake = np.where(blob > 0.25, 255 * blob * rng.uniform(0.8, 1.0, (SIZE, SIZE)), 0.0)
    return a.astype(np.uint8), color.apply_colormap(uptake[..., None], "hot")


def run_sampler(config, monkeypatch, a_grey, b_rgb):
    """(SampleOutput, {kind: [(step index, value)]}) of the sampler of `config` on one pair on
    one device, recording every network input, reverse step and post-step."""
    records = {"input": [], "step": [], "post": []}

    def record(kind, value, index):
        records[kind].append((int(np.max(index)), value))

    reverse_step, post_step = sampling.reverse_step, sampling.region_post_step

    def recorded_reverse_step(schedule, state, eps, m1, m2, index, *args, **kwargs):
        new = reverse_step(schedule, state, eps, m1, m2, index, *args, **kwargs)
        jax.debug.callback(lambda v, i: record("step", np.asarray(v), i),
                           jnp.stack(list(new)), index, ordered=True)
        return new

    def recorded_post_step(x, *args, **kwargs):
        out = post_step(x, *args, **kwargs)
        jax.debug.callback(lambda v: record("post", np.asarray(v), -1), out, ordered=True)
        return out

    monkeypatch.setattr(sampling, "reverse_step", recorded_reverse_step)
    monkeypatch.setattr(sampling, "region_post_step", recorded_post_step)
    network = FakeNetwork(lambda kind, value, t: record(kind, value, t))
    sample, schedule = sampling.sampler_from_config(
        config, "pet", mesh=parallel.make_mesh(jax.devices()[:1]), model=network)
    a, b = (x[None] for x in sampling_inputs(config, a_grey, b_rgb))
    out = jax.device_get(sample({}, schedule, a, b, jax.random.PRNGKey(KEY),
                                np.zeros(1, np.int32)))
    return out, records


def sampling_inputs(config, a_grey, b_rgb):
    """(a, b) as `difffccf fuse` reads the pair (`layouts.to_model_inputs`)."""
    from difffccf_jax.data import layouts
    return layouts.to_model_inputs(a_grey[..., None], b_rgb,
                                   conversion=settings.sampler_settings(config).color_conversion)


def test_published_settings_reproduce_the_published_loop_step_by_step(tiny_config_path,
                                                                      monkeypatch):
    """T = 6: one (B, B) step, three (A, B), two (A, A); every intermediate within 1e-5, the
    uint8 image equal."""
    steps = 6
    config = load_config(f"{tiny_config_path}:published_sampling",
                         [("diffusion.steps", str(steps)), ("sampling.steps", str(steps))])
    a_grey, b_rgb = make_pair()
    out, got = run_sampler(config, monkeypatch, a_grey, b_rgb)
    start_keys, _ = sampling.pair_noise_keys(jax.random.PRNGKey(KEY), np.zeros(1, np.int32))
    start_noise = np.asarray(sampling.initial_noise(start_keys, SIZE, SIZE))[..., 0]
    expected = {"input": {}, "step": {}, "post": {}}

    def record(kind, channel, index, value):
        expected[kind][channel, index] = value

    rgb = published_loop(a_grey, b_rgb, start_noise, steps, record)

    # each reverse step's records: rows Y, Cr, Cb of the one pair
    assert [i for i, _ in got["input"]] == list(range(steps - 1, -1, -1))
    assert [i for i, _ in got["step"]] == list(range(steps - 1, -1, -1))
    assert len(got["post"]) == steps
    regions_cr_cb = out.region[0, ..., 1:]
    assert 0.05 < regions_cr_cb.mean(axis=(0, 1)).min() and regions_cr_cb.mean(
        axis=(0, 1)).max() < 0.6
    for step, ((i, inputs), (_, state), (_, post)) in enumerate(
            zip(got["input"], got["step"], got["post"])):
        for channel in range(3):
            where = f"step index {i}, channel {channel}"
            np.testing.assert_allclose(inputs[channel], expected["input"][channel, i],
                                       rtol=0, atol=1e-5, err_msg=f"network input, {where}")
            np.testing.assert_allclose(state[:, channel, ..., 0], expected["step"][channel, i],
                                       rtol=0, atol=1e-5, err_msg=f"x, x^A, x^B, {where}")
            np.testing.assert_allclose(post[channel, ..., 0], expected["post"][channel, i],
                                       rtol=0, atol=1e-5, err_msg=f"post-step, {where}")
    # the Y rows' conditions: (B, B) where i > T - T // 3, (A, A) where i < T // 3, else (A, B)
    a, b = sampling_inputs(config, a_grey, b_rgb)
    for i, inputs in got["input"]:
        stage = (b[..., 0] if i > steps - steps // 3 else a[..., 0],
                 a[..., 0] if i < steps // 3 else b[..., 0])
        np.testing.assert_array_equal(inputs[0, ..., 0], stage[0])
        np.testing.assert_array_equal(inputs[0, ..., 1], stage[1])
    np.testing.assert_array_equal(out.rgb[0], rgb)


def test_published_stage_boundaries():
    """(B, B) where i > T - floor(T/3), (A, A) where i < floor(T/3), (A, B) otherwise, for
    reverse step `step` = T - 1 - i; a respaced schedule of N steps splits its own N."""
    def stages(steps):
        return [int(composition.stage_of(composition.STAGES_PUBLISHED, step, steps))
                for step in range(steps)]

    assert stages(6) == [0, 1, 1, 1, 2, 2]
    assert stages(4) == [1, 1, 1, 2]  # no (B, B) stage at T = 4
    assert stages(30) == [0] * 9 + [1] * 11 + [2] * 10
    assert stages(2000) == [0] * 665 + [1] * 669 + [2] * 666
    a, b = jnp.zeros(()), jnp.ones(())
    conditions = [tuple(float(c) for c in composition.stage_conditions(stage, a, b))
                  for stage in stages(6)]
    assert conditions == [(1, 1)] + [(0, 1)] * 3 + [(0, 0)] * 2
    # the default split: thirds of the reverse steps
    assert [int(composition.stage_of(composition.STAGES_THIRDS, s, 6)) for s in range(6)] == [
        0, 0, 1, 1, 2, 2]


def test_published_condition_standardisation_uses_the_unbiased_std():
    rng = np.random.default_rng(2)
    x, target = rng.normal(size=(2, 6, 5, 1)), rng.normal(2.0, 3.0, size=(2, 6, 5, 1))
    region = rng.uniform(size=(2, 6, 5, 1)) < 0.5
    got = np.asarray(regions.standardise_in_region(
        jnp.asarray(x, jnp.float32), jnp.asarray(target, jnp.float32), jnp.asarray(region),
        regions.PUBLISHED_STD))
    for image in range(2):
        r = region[image]
        xs, ts = x[image][r], target[image][r]
        expected = (xs - xs.mean()) / (xs.std(ddof=1) + 1e-5) * ts.std(ddof=1) + ts.mean()
        np.testing.assert_allclose(got[image][r], expected, rtol=1e-5, atol=1e-5)
        assert np.all(got[image][~r] == 0)
        # the (n - 1) cancels in the ratio of the stds: the population form differs only by
        # the 1e-5 added to A's std, a few 1e-5 here
        population = (xs - xs.mean()) / xs.std() * ts.std() + ts.mean()
        assert 2e-5 < np.abs(got[image][r] - population).max() < 1e-3


def test_float32_tables_are_computed_in_float32():
    published = published_tables(6)
    ours = diffusion.make_schedule("cosine", 6, diffusion.TABLES_FLOAT32)
    for name, table in (("sqrt_acp", ours.sqrt_alphas_cumprod),
                        ("recip", ours.sqrt_recip_alphas_cumprod),
                        ("recipm1", ours.sqrt_recipm1_alphas_cumprod),
                        ("coef1", ours.posterior_mean_coef1),
                        ("coef2", ours.posterior_mean_coef2)):
        np.testing.assert_array_equal(np.asarray(table), published[name], err_msg=name)
    default = diffusion.make_schedule("cosine", 2000)
    float32 = diffusion.make_schedule("cosine", 2000, diffusion.TABLES_FLOAT32)
    assert not np.array_equal(np.asarray(default.sqrt_recipm1_alphas_cumprod),
                              np.asarray(float32.sqrt_recipm1_alphas_cumprod))


def test_truncated_output_levels():
    fused = np.array([[-1.0, 0.0, 1.0], [0.999, -0.999, 0.5]], np.float32)
    np.testing.assert_array_equal(color.from_unit(fused, truncate=True),
                                  [[0, 127, 255], [254, 0, 191]])
    np.testing.assert_array_equal(color.from_unit(fused), [[0, 128, 255], [255, 0, 191]])


def test_published_settings_reach_the_sampler(tiny_config_path):
    published = settings.sampler_settings(load_config(f"{tiny_config_path}:published_sampling"))
    assert published.stages == composition.STAGES_PUBLISHED
    assert published.condition_std == regions.PUBLISHED_STD
    assert published.truncate_output is True
    assert published.color_conversion == color.CONVERSION_OPENCV8
    assert published.output == settings.OUTPUT_TRAJECTORY and not published.known_sources
    assert not published.register and not published.add_noise
    _, schedule = sampling.sampler_from_config(
        load_config(f"{tiny_config_path}:published_sampling"), "pet")
    full = diffusion.make_schedule("cosine", 50, diffusion.TABLES_FLOAT32)
    expected = diffusion.respace(full, diffusion.respaced_steps(50, 12), diffusion.TABLES_FLOAT32)
    np.testing.assert_array_equal(np.asarray(schedule.posterior_mean_coef2),
                                  np.asarray(expected.posterior_mean_coef2))
    # configs saved before these fields (version 1) ran with thirds, the population std, float
    # colour, rounding and float64 tables: migrated to exactly that on load
    from difffccf_jax import config_versions

    old = load_config(tiny_config_path)
    for field in ("stages", "condition_std", "color_conversion", "output_levels",
                  "schedule_precision"):
        del old.sampling[field]
    old.version = 1
    migrated = settings.sampler_settings(config_versions.migrate(old))
    assert migrated.stages == composition.STAGES_THIRDS
    assert migrated.condition_std == regions.POPULATION_STD
    assert migrated.truncate_output is False
    assert migrated.color_conversion == color.CONVERSION_FLOAT
    _, old_schedule = sampling.sampler_from_config(old, "pet")
    np.testing.assert_array_equal(
        np.asarray(old_schedule.posterior_mean_coef2),
        np.asarray(sampling.sampling_schedule("cosine", 50, 12).posterior_mean_coef2))


def test_fuse_reads_b_and_writes_levels_as_configured():
    """`difffccf fuse`'s edges: B read through OpenCV's 8-bit routine (whole levels) or the float
    formula, and the extras' fused channels truncated like the RGB image."""
    from difffccf_jax.data import layouts
    from difffccf_jax.inference import fusion
    a_grey, b_rgb = make_pair()
    opencv = color.rgb_to_ycrcb_opencv8(b_rgb).astype(np.float64)
    _, b8 = layouts.to_model_inputs(a_grey[..., None], b_rgb,
                                    conversion=color.CONVERSION_OPENCV8)
    _, b_float = layouts.to_model_inputs(a_grey[..., None], b_rgb)
    np.testing.assert_allclose((b8 + 1) * 127.5, opencv, atol=1e-4)
    float_levels = (b_float.astype(np.float64) + 1) * 127.5
    assert np.abs(float_levels - np.rint(float_levels)).max() > 0.1  # the float one is not whole
    assert 0.5 < np.abs(float_levels - opencv).max() < 1.0

    fused = np.full((2, 2, 3), 0.999, np.float32)  # level 254.87
    out = sampling.SampleOutput(fused=fused, rgb=np.zeros((2, 2, 3), np.uint8),
                                m1=np.zeros((2, 2, 3)), m2=np.zeros((2, 2, 3)),
                                region=np.ones((2, 2, 3), bool),
                                deformation=np.zeros((2, 2, 2)), warped_b=fused)
    paths = fusion.output_paths("out", "1.png", save_extras=True)
    for truncate, level in ((False, 255), (True, 254)):
        written = dict(fusion.pair_files(paths, out, truncate))
        assert np.all(written[paths["fused_y"]] == level)


@pytest.mark.parametrize("field", ["stages", "condition_std", "color_conversion",
                                   "output_levels", "schedule_precision"])
def test_an_unknown_setting_names_its_field(tiny_config_path, field):
    from difffccf_jax.errors import UserError
    config = load_config(tiny_config_path, [(f"sampling.{field}", "halves")])
    with pytest.raises(UserError, match=rf"sampling\.{field}: expected one of .*'halves'"):
        sampling.sampler_from_config(config, "pet")
