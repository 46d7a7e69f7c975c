"""The hierarchical sampler: one step against a float64 NumPy oracle, the region post-step, and the
whole compiled reverse process on the tiny model (4 simulated devices)."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from difffccf_jax import color, functional_region, pyramid
from difffccf_jax.data import generator
from difffccf_jax.inference import sampling
from difffccf_jax.model import composition, diffusion, regions, settings, unet, warping
from difffccf_jax.config_cli import load_config

NUM_PAIRS = 4
# The tiny config with a two-level, one-block U-Net: the sampler compiles in a few seconds.
TEST_OVERRIDES = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"))
SHIFT = (1.5, -1.0)  # the deformation (pixels along x, along y) the test network predicts


def synthetic_pairs(num_pairs, size, seed):
    """Grey A (textured anatomy with a bright blob) and a hot-mapped B (the blob's uptake on
    black), as [N, H, W, 1] and YCrCb [N, H, W, 3] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    a, b = [], []
    for _ in range(num_pairs):
        centre = rng.uniform(0.35 * size, 0.65 * size, 2)
        radius = rng.uniform(0.15 * size, 0.25 * size)
        blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * radius ** 2))
        a.append(255 * (0.2 + 0.6 * blob) * rng.uniform(0.8, 1.0, (size, size)))
        uptake = np.where(blob > 0.2, 255 * blob, 0.0)
        b.append(color.rgb_to_ycrcb(color.apply_colormap(uptake[..., None], "hot")))
    return (color.to_unit(np.stack(a)[..., None]).astype(np.float32),
            color.to_unit(np.stack(b)).astype(np.float32))


def shifting_params(params, max_displacement):
    """params whose deformation head predicts the constant field SHIFT (zero kernel, bias
    atanh(shift / max_displacement))."""
    bias = np.arctanh(np.array(SHIFT) / max_displacement).astype(np.float32)
    head = params["deformation_head"]
    conv = dict(head["conv"], kernel=jnp.zeros_like(head["conv"]["kernel"]), bias=jnp.asarray(bias))
    return dict(params, deformation_head=dict(head, conv=conv))


class CompileCounter(logging.Handler):
    """Counts the compilations of functions named `name` that jax.log_compiles reports."""

    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.pattern = f"Compiling jit({name})"
        self.count = 0

    def emit(self, record):
        self.count += record.getMessage().startswith(self.pattern)


def registering_published_settings(config):
    """The sampler settings of `config` with the network's field warping B (bilinear, no
    refinement) and the published output, chroma and source steps."""
    built = settings.sampler_settings(config)
    return dataclasses.replace(
        built, register=True, output=settings.OUTPUT_TRAJECTORY, chroma=settings.CHROMA_FUSED,
        known_sources=False,
        refinement=dataclasses.replace(built.refinement, steps=0),
        warp_interpolation=warping.BILINEAR)


@pytest.fixture(scope="module")
def setup(tiny_config_path):
    config = load_config(tiny_config_path, TEST_OVERRIDES)
    model = unet.model_from_config(config.model)
    params = shifting_params(unet.init_params(model, jax.random.PRNGKey(0), 32),
                             config.model.max_displacement)
    sample = sampling.make_sampler(
        model, regions.rules_from_config(config.regions, "pet", "sample"),
        sampling.reflect_flags(config.sampling.reflect_channels, "pet"),
        registering_published_settings(config))
    schedule = sampling.sampling_schedule(config.diffusion.schedule, config.diffusion.steps,
                                          config.sampling.steps)
    a, b = synthetic_pairs(NUM_PAIRS, 32, seed=1)
    ids = np.arange(NUM_PAIRS, dtype=np.int32)
    counter = CompileCounter("sample_pairs")
    logger = logging.getLogger("jax._src.interpreters.pxla")
    logger.addHandler(counter)
    try:
        with jax.log_compiles():
            first = jax.device_get(sample(params, schedule, a, b, jax.random.PRNGKey(7), ids))
            compiles = [counter.count]
            second = jax.device_get(sample(params, schedule, a, b, jax.random.PRNGKey(7), ids))
            other_key = jax.device_get(sample(params, schedule, a, b, jax.random.PRNGKey(8), ids))
            compiles.append(counter.count)
            # a full schedule of as many steps, and it respaced keeping every step
            full = diffusion.make_schedule(config.diffusion.schedule, config.sampling.steps)
            every_step = diffusion.respace(full, np.arange(config.sampling.steps))
            with_full = jax.device_get(sample(params, full, a, b, jax.random.PRNGKey(7), ids))
            compiles.append(counter.count)
            with_respaced = jax.device_get(
                sample(params, every_step, a, b, jax.random.PRNGKey(7), ids))
            compiles.append(counter.count)
    finally:
        logger.removeHandler(counter)
    return dict(sample=sample, params=params, schedule=schedule, a=a, b=b, first=first,
                second=second, other_key=other_key, with_full=with_full,
                with_respaced=with_respaced, compiles=compiles)


# ---- one reverse step and the post-step against NumPy ------------------------------------

def oracle_schedule(steps):
    """float64 abar, posterior coefficients and log variance of the cosine schedule."""
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    i = np.arange(steps, dtype=np.float64)
    betas = np.minimum(1 - f((i + 1) / steps) / f(i / steps), 0.999)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    log_variance = np.log(np.maximum(betas * (1 - abar_prev) / (1 - abar), 1e-20))
    return abar, coef1, coef2, log_variance


@pytest.mark.parametrize("index, stochastic", [(17, False), (17, True), (0, True)])
def test_reverse_step_matches_numpy_oracle(index, stochastic):
    rng = np.random.default_rng(index)
    shape = (6, 5, 4, 1)  # 2 pairs x (Y, Cr, Cb), channel-major rows
    x, x_a, x_b, eps, noise = (rng.normal(size=shape) for _ in range(5))
    m1, m2 = rng.uniform(size=shape), rng.uniform(size=shape)
    chroma = np.array([False, False, True, True, True, True])
    sign_gain = np.array([0.0, 0.0, -1.0, -1.0, 0.45, 0.45])
    schedule = diffusion.make_schedule("cosine", 50)
    state = sampling.SamplerState(*(jnp.asarray(v, jnp.float32) for v in (x, x_a, x_b)))
    got = jax.jit(sampling.reverse_step)(
        schedule, state, *(jnp.asarray(v, jnp.float32) for v in (eps, m1, m2)), index,
        jnp.asarray(chroma), jnp.asarray(sign_gain, jnp.float32),
        jnp.asarray(noise, jnp.float32) if stochastic else None)

    abar, coef1, coef2, log_variance = oracle_schedule(50)
    rows = chroma[:, None, None, None]
    fused = np.where(rows, x_b + sign_gain[:, None, None, None] * m2 * x_a,
                     m1 * x_a + (1 - m1) * x_b)
    for name, z in (("x", (fused + x) / 2), ("x_a", x_a), ("x_b", x_b)):
        x0 = np.clip(np.sqrt(1 / abar[index]) * z - np.sqrt(1 / abar[index] - 1) * eps, -1, 1)
        expected = coef1[index] * x0 + coef2[index] * z
        if stochastic and index > 0:
            expected = expected + np.exp(0.5 * log_variance[index]) * noise
        np.testing.assert_allclose(getattr(got, name), expected, rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_sources_start_noised_like_training_and_keep_their_difference():
    # x^A - x^B = sqrt(abar) (A' - B') at the start and after every reverse step (while the x0
    # estimates stay inside [-1, 1]), as for the training noise of one shared eps; float64, as
    # float32 rounding of the noisy states is amplified by 1 / sqrt(abar) at the noisiest step
    rng = np.random.default_rng(5)
    shape = (6, 5, 4, 1)
    cond_a, cond_b = rng.uniform(-0.2, 0.2, shape), rng.uniform(-0.2, 0.2, shape)
    noise = rng.normal(size=shape)
    with jax.enable_x64(True):
        schedule = diffusion.respace(diffusion.make_schedule("cosine", 50),
                                     diffusion.respaced_steps(50, 12))
        abar = np.asarray(schedule.alphas_cumprod, np.float64)
        state = sampling.initial_state(schedule, *map(jnp.asarray, (cond_a, cond_b, noise)))
        np.testing.assert_allclose(state.x, noise, rtol=1e-12)
        np.testing.assert_allclose(state.x_a, np.sqrt(abar[-1]) * cond_a
                                   + np.sqrt(1 - abar[-1]) * noise, rtol=1e-6, atol=1e-7)
        m = jnp.full(shape, 0.5)
        chroma, gain = jnp.zeros(6, bool), jnp.zeros(6)
        for index in range(11, -1, -1):
            # a noise estimate whose x0 for x^A is a value u in [-0.5, 0.5]
            u = rng.uniform(-0.5, 0.5, shape)
            eps = (np.asarray(state.x_a) - np.sqrt(abar[index]) * u) / np.sqrt(1 - abar[index])
            state = sampling.reverse_step(schedule, state, jnp.asarray(eps), m, m, index,
                                          chroma, gain)
            previous = abar[index - 1] if index > 0 else 1.0
            np.testing.assert_allclose(np.asarray(state.x_a) - np.asarray(state.x_b),
                                       np.sqrt(previous) * (cond_a - cond_b), atol=1e-6)


def published_post_step(x, b, region, reference):
    """Float64 transcription of the published sampler's chroma post-step of one row:
    normalize_with_ref_distribution(x R, B_c R, ref) (whole-frame mean and torch's unbiased std,
    std + 1e-5, pixels of x R equal to ref left as they are), clamp, B_c outside R."""
    t, source = x * region, b * region
    out = (t - t.mean()) / (t.std(ddof=1) + 1e-5) * source.std(ddof=1) + source.mean()
    keep = t == reference
    out[keep] = t[keep]
    return b * ~region + np.clip(out, -1, 1) * region


@pytest.mark.parametrize("statistics", [regions.WHOLE_FRAME, regions.IN_REGION])
def test_region_post_step_matches_numpy_oracle(statistics):
    rng = np.random.default_rng(3)
    shape = (6, 8, 8, 1)  # 2 pairs; Cr rows reflect, Cb rows re-standardise
    x = rng.normal(0.2, 0.6, shape)
    b = rng.uniform(-1, 1, shape)
    region = rng.uniform(size=shape) < 0.4
    region[4, 2, 2] = True  # the reference pixel in R: the sampler's reference is B_c's value
    chroma = np.repeat([False, True, True], 2)
    reflect = np.repeat([False, True, False], 2)
    post_step = jax.jit(sampling.region_post_step, static_argnums=(5, 6))
    got = np.asarray(post_step(
        jnp.asarray(x, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(region),
        jnp.asarray(chroma), jnp.asarray(reflect), 0.8, statistics))
    x, b = x.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)

    for row in range(6):
        inside, outside = region[row], ~region[row]
        if not chroma[row]:
            np.testing.assert_allclose(got[row], x[row], rtol=1e-6)
            continue
        np.testing.assert_array_equal(got[row][outside], b[row][outside].astype(np.float32))
        if reflect[row]:
            expected = np.clip(0.8 - x[row][inside], -1, 1)
        elif statistics == regions.WHOLE_FRAME:
            expected = published_post_step(x[row], b[row], region[row], b[row, 2, 2, 0])[inside]
        else:
            xs, bs = x[row][inside], b[row][inside]
            expected = np.clip((xs - xs.mean()) / xs.std() * bs.std() + bs.mean(), -1, 1)
        np.testing.assert_allclose(got[row][inside], expected, rtol=1e-4, atol=1e-5)


def test_pet_reverse_step_and_post_step_match_the_published_sampler(tiny_config_path):
    """One reverse step of the sampler for PET pairs (sampling rules of the config: sign +1 for
    Cr and Cb, Cr reflected, Cb re-standardised over the whole frame) against a float64
    transcription of the published p_sample and post-step."""
    config = load_config(tiny_config_path)
    rules = regions.rules_from_config(config.regions, "pet", "sample")
    reflect = np.repeat(np.array([False, *sampling.reflect_flags(
        config.sampling.reflect_channels, "pet")]), 2)
    a, b = synthetic_pairs(2, 16, seed=4)
    rng = np.random.default_rng(9)
    shape = (6, 16, 16, 1)
    x, x_a, x_b, eps = (rng.normal(size=shape).astype(np.float32) for _ in range(4))
    m1, m2 = (rng.uniform(size=shape).astype(np.float32) for _ in range(2))
    schedule, index = diffusion.make_schedule("cosine", 20), 7

    @jax.jit
    def step(a, b, x, x_a, x_b, eps, m1, m2):
        rows = composition.channel_batch(a, b, rules)
        new = sampling.reverse_step(schedule, sampling.SamplerState(x, x_a, x_b), eps, m1, m2,
                                    index, rows["chroma"], rows["sign_gain"])
        post = sampling.region_post_step(new.x, rows["b3"], rows["region"], rows["chroma"],
                                         reflect, float(config.sampling.reflect_offset),
                                         regions.statistics_from_config(config))
        return new._replace(x=post), rows["region"]

    got, region = step(a, b, x, x_a, x_b, eps, m1, m2)

    x, x_a, x_b, eps, m1, m2 = (v.astype(np.float64) for v in (x, x_a, x_b, eps, m1, m2))
    b_rows = np.concatenate([b[..., c:c + 1] for c in range(3)]).astype(np.float64)
    background = b_rows[:, :1, 5:6]
    expected_region = np.concatenate([np.ones((2, 16, 16, 1), bool),
                                      b_rows[2:4] >= 10 * background[2:4],
                                      b_rows[4:] <= -100 * background[4:]])
    np.testing.assert_array_equal(region, expected_region)
    for rows in (slice(2, 4), slice(4, 6)):
        assert 0.02 < expected_region[rows].mean() < 0.9
    abar, coef1, coef2, _ = oracle_schedule(20)
    fused = np.concatenate([m1[:2] * x_a[:2] + (1 - m1[:2]) * x_b[:2],
                            x_b[2:] + m2[2:] * x_a[2:]])  # PET sampler: imgf = x_t2 + m2 x_t1

    def posterior(z):
        x0 = np.clip(np.sqrt(1 / abar[index]) * z - np.sqrt(1 / abar[index] - 1) * eps, -1, 1)
        return coef1[index] * x0 + coef2[index] * z

    new_x = posterior((fused + x) / 2)
    expected = new_x.copy()
    r = expected_region
    expected[2:4] = b_rows[2:4] * ~r[2:4] + np.clip(0.8 - new_x[2:4], -1, 1) * r[2:4]
    for row in (4, 5):
        expected[row] = published_post_step(new_x[row], b_rows[row], r[row],
                                            b_rows[row, 2, 2, 0])
    np.testing.assert_allclose(got.x, expected, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got.x_a, posterior(x_a), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got.x_b, posterior(x_b), rtol=1e-4, atol=2e-5)


def test_sampler_from_config_passes_the_sampling_rules_and_statistics(tiny_config_path,
                                                                      monkeypatch):
    captured = {}

    def fake_make_sampler(model, task_rules, reflect, sampler, mesh=None):
        captured.update(task_rules=task_rules, reflect=reflect, settings=sampler)
        return "sample"

    monkeypatch.setattr(sampling, "make_sampler", fake_make_sampler)
    for statistics in regions.STATISTICS:
        config = load_config(tiny_config_path, [("regions_statistics", statistics)])
        sampling.sampler_from_config(config, "gfp")
        assert captured["task_rules"] == regions.rules_from_config(config.regions, "gfp",
                                                                   "sample")
        assert captured["task_rules"].cr.sign == 1.0 and captured["task_rules"].cr.gain == 1.0
        assert captured["settings"].statistics == statistics
        assert captured["reflect"] == (False, False)
    for interpolation in warping.INTERPOLATIONS:
        config = load_config(tiny_config_path, [("sampling.warp_interpolation", interpolation)])
        sampling.sampler_from_config(config, "pet")
        assert captured["settings"].warp_interpolation == interpolation
        assert captured["reflect"] == (True, False)  # PET Cr reflects


def test_stages_split_the_schedule_in_thirds():
    for steps, sizes in ((12, [4, 4, 4]), (2000, [667, 667, 666]), (50, [17, 17, 16])):
        a, b = jnp.zeros(()), jnp.ones(())
        pairs = [tuple(float(c) for c in
                       composition.stage_conditions(composition.reverse_stage(i, steps), a, b))
                 for i in range(steps)]
        expected = [(1.0, 1.0)] * sizes[0] + [(0.0, 1.0)] * sizes[1] + [(0.0, 0.0)] * sizes[2]
        assert pairs == expected


# ---- the whole compiled sampler -------------------------------------------------------------

def test_sampler_compiles_once_per_shape_and_step_count(setup):
    # the first call compiles; calls with another key, another schedule of as many steps
    # (full or respaced) reuse that compilation
    assert setup["compiles"] == [1, 1, 1, 1]


def test_outputs_have_shapes_ranges_and_consistent_colour(setup):
    out = setup["first"]
    assert out.fused.shape == out.rgb.shape == out.warped_b.shape == (NUM_PAIRS, 32, 32, 3)
    assert out.m1.shape == out.m2.shape == out.region.shape == (NUM_PAIRS, 32, 32, 3)
    assert out.deformation.shape == (NUM_PAIRS, 32, 32, 2)
    assert out.rgb.dtype == np.uint8 and out.region.dtype == bool
    assert out.fused.min() >= -1 and out.fused.max() <= 1
    assert 0 <= out.m1.min() and out.m1.max() <= 1 and 0 <= out.m2.min() and out.m2.max() <= 1
    np.testing.assert_array_equal(out.rgb, color.ycrcb_to_rgb_uint8(color.from_unit(out.fused)))
    # the fused Y run is neither B's nor A's channel copied through
    assert np.abs(out.fused[..., 0] - out.warped_b[..., 0]).max() > 0.05
    assert np.abs(out.fused[..., 0] - setup["a"][..., 0]).max() > 0.05


def test_registration_warps_b_by_the_predicted_field(setup):
    out, b = setup["first"], setup["b"]
    np.testing.assert_allclose(out.deformation, np.broadcast_to(SHIFT, out.deformation.shape),
                               rtol=1e-5)
    # B sampled at (x + 1.5, y - 1) bilinearly, black (Y -1, Cr = Cb = 128) outside the image
    black = color.to_unit(color.rgb_to_ycrcb(np.zeros(3)))
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
    for i in range(NUM_PAIRS):
        for c in range(3):
            expected = ndimage.map_coordinates(b[i, ..., c].astype(np.float64),
                                               [rows + SHIFT[1], cols + SHIFT[0]], order=1,
                                               mode="grid-constant", cval=black[c])
            np.testing.assert_allclose(out.warped_b[i, ..., c], expected, atol=1e-5)
    # the regions are the PET sampling rules on the warped B: Cr >= 10 x and Cb <= -100 x the
    # background pixel (row 0, column 5)
    background = out.warped_b[:, :1, 5:6, :]
    np.testing.assert_array_equal(out.region[..., 1],
                                  out.warped_b[..., 1] >= 10 * background[..., 1])
    np.testing.assert_array_equal(out.region[..., 2],
                                  out.warped_b[..., 2] <= -100 * background[..., 2])
    assert out.region[..., 0].all()


def test_region_post_step_keeps_b_outside_the_region(setup):
    out = setup["first"]
    for channel in (1, 2):  # Cr reflects (PET), Cb re-standardises
        region = out.region[..., channel]
        assert 0.05 < region.mean() < 0.95  # the test data has real regions
        np.testing.assert_array_equal(out.fused[..., channel][~region],
                                      out.warped_b[..., channel][~region])
        assert not np.array_equal(out.fused[..., channel][region],
                                  out.warped_b[..., channel][region])


def test_deterministic_mode_is_bit_reproducible(setup):
    for name, first, second in zip(sampling.SampleOutput._fields, setup["first"], setup["second"]):
        np.testing.assert_array_equal(first, second, err_msg=name)
    # the key does matter: it draws the initial states
    assert np.abs(setup["first"].fused - setup["other_key"].fused).max() > 1e-3


def test_respaced_schedule_with_every_step_equals_full_schedule(setup):
    full, respaced = setup["with_full"], setup["with_respaced"]
    np.testing.assert_array_equal(full.region, respaced.region)
    # respace recomputes the tables in float64: they agree with the full ones to 1 ulp, and
    # the chroma post-step's re-standardisation amplifies that rounding to a few 1e-4
    np.testing.assert_allclose(full.fused, respaced.fused, atol=5e-4)
    # the 12 steps strided out of 50 are another schedule, with another result
    assert np.abs(full.fused - setup["first"].fused).max() > 1e-3


def test_a_pairs_result_does_not_depend_on_its_batch(setup):
    order = np.array([2, 0, 3, 1])
    out = setup["sample"](setup["params"], setup["schedule"], setup["a"][order],
                          setup["b"][order], jax.random.PRNGKey(7), order.astype(np.int32))
    np.testing.assert_allclose(np.asarray(out.fused), setup["first"].fused[order], atol=1e-6)


def stored_rgb(b):
    """B's RGB levels (uint8 values as float64 [H, W, 3]) of B in YCrCb [H, W, 3] in [-1, 1],
    from its unrounded YCrCb levels, as the float conversion read them."""
    return color.ycrcb_levels_to_rgb_uint8(color.unit_to_levels(np.asarray(b, np.float64))).astype(
        np.float64)


def test_colour_keeping_output_has_bs_chroma_and_the_detail_path_in_y(setup, tiny_config_path):
    """The shipped output choices: Cr and Cb are B's own (the chroma runs skipped, Y as when
    they run), and Y is the clean estimate m1 A + (1 - m1) B_Y plus the gain times A's detail
    band where B is kept and B's detail band where A is kept inside B's functional region (a
    NumPy oracle from the returned mask and the evaluation's region); gain 0 gives the
    published clean estimate."""
    config = load_config(tiny_config_path, TEST_OVERRIDES)
    model = unet.model_from_config(config.model)
    rules = regions.rules_from_config(config.regions, "pet", "sample")
    shipped = dataclasses.replace(settings.sampler_settings(config), register=False)
    assert shipped.chroma == settings.CHROMA_SOURCE and shipped.detail.gain > 0
    assert shipped.detail_of_b
    a, b = setup["a"], setup["b"]
    ids = np.arange(NUM_PAIRS, dtype=np.int32)
    outputs = {}
    for chroma, gain, of_b in ((settings.CHROMA_SOURCE, shipped.detail.gain, True),
                               (settings.CHROMA_SOURCE, shipped.detail.gain, False),
                               (settings.CHROMA_SOURCE, 0.0, True),
                               (settings.CHROMA_FUSED, 0.0, True)):
        chosen = dataclasses.replace(shipped, chroma=chroma, detail_of_b=of_b,
                                     detail=settings.FusionDetail(gain, 4))
        sample = sampling.make_sampler(model, rules, (True, False), chosen)
        outputs[chroma, gain, of_b] = jax.device_get(
            sample(setup["params"], setup["schedule"], a, b, jax.random.PRNGKey(7), ids))
    # B's chroma: the chroma runs are not run (their masks are zero) and Y is what it is when
    # they run
    fused_chroma = outputs.pop((settings.CHROMA_FUSED, 0.0, True))
    own_chroma = outputs[settings.CHROMA_SOURCE, 0.0, True]
    np.testing.assert_allclose(own_chroma.fused[..., 0], fused_chroma.fused[..., 0], atol=1e-5)
    np.testing.assert_array_equal(own_chroma.m1[..., 1:], 0.0)
    assert np.abs(fused_chroma.fused[..., 1:] - b[..., 1:]).max() > 0.05
    for (_, gain, of_b), out in outputs.items():
        np.testing.assert_array_equal(out.fused[..., 1:], np.clip(b[..., 1:], -1, 1))  # B's own
        for i in range(NUM_PAIRS):
            a_i, b_y, m1 = (np.asarray(x, np.float64) for x in
                            (a[i, ..., 0], b[i, ..., 0], out.m1[i, ..., 0]))
            region = functional_region.of_rgb(stored_rgb(b[i])) if of_b else 0.0
            expected = (m1 * a_i + (1 - m1) * b_y + gain * (1 - m1) * pyramid.detail(a_i, 4)
                        + gain * m1 * region * pyramid.detail(b_y, 4))
            np.testing.assert_allclose(out.fused[i, ..., 0], np.clip(expected, -1, 1),
                                       atol=2e-5)
    # each detail band changes the image: A's where B is kept (m1 < 1), B's where A is kept
    # inside B's region
    with_a_detail = outputs[settings.CHROMA_SOURCE, shipped.detail.gain, False]
    with_both = outputs[settings.CHROMA_SOURCE, shipped.detail.gain, True]
    assert np.abs(with_a_detail.fused[..., 0] - own_chroma.fused[..., 0]).max() > 0.01
    assert np.abs(with_both.fused[..., 0] - with_a_detail.fused[..., 0]).max() > 0.01


@pytest.mark.parametrize("task", ["pet", "spect"])
@pytest.mark.parametrize("conversion", color.CONVERSIONS)
def test_the_samplers_region_of_b_is_the_evaluations(task, conversion):
    """B's functional region as the sampler computes it (JAX, float32, from B's YCrCb as read
    with `conversion`) is the region the colour metrics use (NumPy, float64) of the RGB that
    the conversion gives back: B's stored RGB itself with the float formulas, on generated
    pairs."""
    pairs = [generator.make_pair(task, 48, 3, i) for i in range(3)]
    levels = [color.rgb_uint8_to_ycrcb_levels(p.b, conversion) for p in pairs]
    rows = np.asarray(sampling.b_region_rows(
        jnp.asarray(np.stack([color.to_unit(x) for x in levels]), jnp.float32), conversion))
    read = [color.ycrcb_levels_to_rgb_uint8(x, conversion) for x in levels]
    if conversion == color.CONVERSION_FLOAT:
        assert all(np.array_equal(x, p.b) for x, p in zip(read, pairs))
    expected = np.stack([functional_region.of_rgb(x) for x in read])
    assert 0.02 < expected.mean() < 0.9  # the pairs have a region and a background
    np.testing.assert_array_equal(rows[..., 0], np.concatenate([expected] * 3).astype(np.float32))