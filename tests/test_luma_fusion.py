"""The Y (luma) fusion: the mask prior, stage-consistent training conditions, the Y rows' own
quality weights, and the sampler's clean output (black backgrounds stay exactly black)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import color, functional_region, pyramid
from difffccf_jax.inference import sampling
from difffccf_jax.model import composition, diffusion, regions, settings, unet
from difffccf_jax.training import losses
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, layouts

# A two-level, one-block tiny U-Net: compiles in seconds.
SMALL = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"))
SIZE = 32


def zero_mask_head(params):
    """params whose m1 head outputs the logit 0 everywhere."""
    head = params["mask1_head"]
    conv = {name: jnp.zeros_like(value) for name, value in head["conv"].items()}
    return dict(params, mask1_head=dict(head, conv=conv))


@pytest.fixture(scope="module")
def small_model(tiny_config_path):
    config = load_config(tiny_config_path, SMALL)
    model = unet.model_from_config(config.model)
    return config, model, unet.init_params(model, jax.random.PRNGKey(0), SIZE)


@pytest.mark.slow
def test_mask_prior_offsets_the_m1_logit_by_the_trajectories_difference(small_model):
    config, model, params = small_model
    params = zero_mask_head(params)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, SIZE, SIZE, 4), minval=-1.0, maxval=1.0)
    t = jnp.array([0, 7])
    slope = float(config.model.mask_prior)
    assert slope > 0
    m1 = model.apply({"params": params}, x, t).m1
    expected = 1.0 / (1.0 + np.exp(-slope * (np.asarray(x[..., 2:3], np.float64)
                                             - np.asarray(x[..., 3:4], np.float64))))
    np.testing.assert_allclose(np.asarray(m1), expected, atol=1e-6)
    published = model.clone(mask_prior=0.0).apply({"params": params}, x, t).m1
    np.testing.assert_allclose(np.asarray(published), 0.5, atol=1e-7)


def test_compat_mode_has_no_mask_prior(paper_config_path):
    config = load_config(paper_config_path, (("model.compat", "True"),))
    assert config.model.mask_prior > 0
    assert unet.model_from_config(config.model).mask_prior == 0.0
    config = load_config(paper_config_path, (("model.mask_prior", "-1.0"),))
    with pytest.raises(Exception, match="model.mask_prior"):
        unet.model_from_config(config.model)


class Recorder:
    """A stand-in network: records its input and returns fixed outputs (m1 = m2 = mask)."""

    def __init__(self, mask):
        self.mask, self.inputs, self.timesteps = mask, None, None

    def __call__(self, variables, x, t, train=False, rngs=None):
        self.inputs, self.timesteps = x, t
        return unet.UNetOutput(jnp.zeros_like(x[..., :1]), self.mask, self.mask,
                               jnp.zeros(x.shape[:-1] + (2,), x.dtype))


def generated_batch(tiny_config_path, count=2):
    config = load_config(tiny_config_path)
    layout = layouts.layout_from_config(config.data, "pet")
    pairs = [generator.make_pair("pet", SIZE, 3, i) for i in range(count)]
    a = np.stack([color.to_unit(p.a.astype(np.float64)).reshape(SIZE, SIZE, 1) for p in pairs])
    b = np.stack([color.to_unit(color.rgb_to_ycrcb(p.b.astype(np.float64))) for p in pairs])
    rules = regions.rules_from_config(config.regions, "pet", "train")
    return config, layout, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), rules


@pytest.mark.slow
@pytest.mark.parametrize("stage_conditions", [False, True])
def test_training_shows_each_row_the_conditions_of_its_sampling_stage(tiny_config_path,
                                                                     stage_conditions):
    config, _, a, b, rules = generated_batch(tiny_config_path, count=8)
    steps = config.diffusion.steps
    schedule = diffusion.make_schedule(config.diffusion.schedule, steps)
    loss_config = dataclasses.replace(settings.loss_settings(config), registration_pass=False,
                                      stage_conditions=stage_conditions)
    network = Recorder(jnp.full((24, SIZE, SIZE, 1), 0.5))
    losses.training_losses(network, None, a, b, rules, jax.random.PRNGKey(4), schedule,
                           loss_config)
    rows = composition.channel_batch(a, b, rules)
    t = np.searchsorted(np.asarray(schedule.timesteps), np.asarray(network.timesteps))
    first, second = np.asarray(network.inputs[..., 0:1]), np.asarray(network.inputs[..., 1:2])
    cond_a, cond_b = np.asarray(rows["cond_a"]), np.asarray(rows["cond_b"])
    stages = [(3 * (steps - 1 - int(ti))) // steps for ti in t]
    assert len(set(stages)) > 1  # the draw covers more than one stage
    for row, stage in enumerate(stages):
        expected = {0: (cond_b, cond_b), 1: (cond_a, cond_b), 2: (cond_a, cond_a)}[
            stage if stage_conditions else 1]
        np.testing.assert_array_equal(first[row], expected[0][row])
        np.testing.assert_array_equal(second[row], expected[1][row])


def test_y_rows_use_the_luma_quality_weights(tiny_config_path):
    config, _, a, b, rules = generated_batch(tiny_config_path)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.steps)
    mask = jax.random.uniform(jax.random.PRNGKey(2), (6, SIZE, SIZE, 1))
    luma, chroma = (0.0, 40.0, 40.0), (30.0, 40.0, 40.0)
    loss_config = dataclasses.replace(settings.loss_settings(config), registration_pass=False,
                                      quality_weights=chroma)
    terms = losses.training_losses(
        Recorder(mask), None, a, b, rules, jax.random.PRNGKey(3), schedule,
        dataclasses.replace(loss_config, luma_quality_weights=luma))
    # The same total from the per-row definition: Y rows F (m1 A + (1 - m1) B_Y and the detail
    # path) scored with the luma weights, Cr/Cb rows as published with the chroma weights.
    rows = composition.channel_batch(a, b, rules)
    y_fused = composition.clean_luma(a, b[..., :1], mask[:2], loss_config.detail)
    y_quality = losses.quality_loss(y_fused, a, b[..., :1], luma)
    published = losses.training_losses(
        Recorder(mask), None, a, b, rules, jax.random.PRNGKey(3), schedule,
        dataclasses.replace(loss_config, luma_quality_weights=chroma))
    y_published = losses.quality_loss(y_fused, a, b[..., :1], chroma)
    difference = (float(terms["quality"]) - float(published["quality"])) * a.shape[0]
    np.testing.assert_allclose(difference, float(jnp.sum(y_quality - y_published)), rtol=1e-4)
    assert rows["chroma"].tolist() == [False, False, True, True, True, True]


def test_published_y_quality_prefers_a_copy_of_a_to_the_maximum_rule(tiny_config_path):
    """The finding behind luma_quality_weights: on generated PET/MRI pairs the published weights
    score F = A better than F = max(A, B_Y); without the SSIM term the maximum rule wins."""
    _, _, a, b, _ = generated_batch(tiny_config_path, count=8)
    y = b[..., :1]
    copy, maximum = a, jnp.maximum(a, y)

    def score(fused, weights):
        return float(jnp.mean(losses.quality_loss(fused, a, y, weights)))

    assert score(copy, (30.0, 40.0, 40.0)) < score(maximum, (30.0, 40.0, 40.0))
    assert score(maximum, (0.0, 40.0, 40.0)) < score(copy, (0.0, 40.0, 40.0))


def black_background_pairs(count):
    """Generated PET/MRI pairs with everything outside a centred disc set to exactly 0 in both
    sources: A [N, H, W, 1], B YCrCb [N, H, W, 3] in [-1, 1], and the background mask."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    outside = (rows - SIZE / 2 + 0.5) ** 2 + (cols - SIZE / 2 + 0.5) ** 2 > (0.3 * SIZE) ** 2
    a, b = [], []
    for i in range(count):
        pair = generator.make_pair("pet", SIZE, 5, i)
        grey, rgb = pair.a.reshape(SIZE, SIZE), pair.b
        grey = np.where(outside, 0, grey).astype(np.float64)
        rgb = np.where(outside[..., None], 0, rgb).astype(np.float64)
        a.append(color.to_unit(grey)[..., None])
        b.append(color.to_unit(color.rgb_to_ycrcb(rgb)))
    return np.stack(a).astype(np.float32), np.stack(b).astype(np.float32), outside


@pytest.mark.parametrize("output", settings.OUTPUTS)
def test_black_backgrounds_fuse_to_exactly_black_with_the_clean_output(tiny_config_path, output):
    config = load_config(tiny_config_path, SMALL)
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.PRNGKey(0), SIZE)
    sample = sampling.make_sampler(
        model, regions.rules_from_config(config.regions, "pet", "sample"),
        sampling.reflect_flags(config.sampling.reflect_channels, "pet"),
        dataclasses.replace(settings.sampler_settings(config), output=output))
    schedule = sampling.sampling_schedule(config.diffusion.schedule, config.diffusion.steps, 6)
    a, b, outside = black_background_pairs(4)
    out = jax.device_get(sample(params, schedule, a, b, jax.random.PRNGKey(1),
                                np.arange(4, dtype=np.int32)))
    background = out.rgb[:, outside]
    if output == settings.OUTPUT_CLEAN:
        assert np.all(background == 0)
        m1 = out.m1[..., 0]  # the Y rows' mask of the last step
        gain = config.model.detail_gain
        levels = config.model.detail_levels
        for i in range(len(a)):  # m1 A + (1 - m1) B_Y plus both detail bands, clipped
            b_y = out.warped_b[i, ..., 0].astype(np.float64)
            region = functional_region.of_rgb(color.ycrcb_levels_to_rgb_uint8(
                color.unit_to_levels(out.warped_b[i].astype(np.float64))))
            expected = (m1[i] * a[i, ..., 0] + (1 - m1[i]) * b_y
                        + gain * (1 - m1[i]) * pyramid.detail(a[i, ..., 0].astype(np.float64),
                                                              levels)
                        + gain * m1[i] * region * pyramid.detail(b_y, levels))
            np.testing.assert_allclose(out.fused[i, ..., 0], np.clip(expected, -1, 1), atol=2e-6)
    else:  # the published output keeps sampling noise in the background
        assert np.count_nonzero(background) > 0


def test_unknown_sampling_output_is_refused(tiny_config_path):
    config = load_config(tiny_config_path, (("sampling.output", "best"),))
    with pytest.raises(Exception, match="sampling.output"):
        settings.sampler_settings(config)


def run_sources(known, seed=6):
    """x^A - x^B and sqrt(abar) (A' - B') after each reverse step of a float64 run whose noise
    estimates are poor (x0 estimates far outside [-1, 1], so they clip), [(actual, expected)]."""
    rng = np.random.default_rng(seed)
    shape = (6, 5, 4, 1)
    cond_a, cond_b = rng.uniform(-0.8, 0.8, shape), rng.uniform(-0.8, 0.8, shape)
    with jax.enable_x64(True):
        schedule = diffusion.respace(diffusion.make_schedule("cosine", 50),
                                     diffusion.respaced_steps(50, 12))
        abar = np.asarray(schedule.alphas_cumprod, np.float64)
        state = sampling.initial_state(schedule, jnp.asarray(cond_a), jnp.asarray(cond_b),
                                       jnp.asarray(rng.normal(size=shape)))
        m = jnp.full(shape, 0.5)
        chroma, gain = jnp.zeros(6, bool), jnp.zeros(6)
        sources = (jnp.asarray(cond_a), jnp.asarray(cond_b)) if known else None
        differences = []
        for index in range(11, -1, -1):
            eps = jnp.asarray(3.0 * rng.normal(size=shape))
            state = sampling.reverse_step(schedule, state, eps, m, m, index, chroma, gain,
                                          sources=sources)
            previous = abar[index - 1] if index > 0 else 1.0
            differences.append((np.asarray(state.x_a - state.x_b),
                                np.sqrt(previous) * (cond_a - cond_b)))
        final = (np.asarray(state.x_a), np.asarray(state.x_b))
    return differences, final, (cond_a, cond_b)


def test_known_sources_keep_the_training_difference_where_clipped_estimates_lose_it():
    differences, (x_a, x_b), (cond_a, cond_b) = run_sources(known=True)
    for actual, expected in differences:
        np.testing.assert_allclose(actual, expected, atol=1e-9)
    np.testing.assert_allclose(x_a, cond_a, atol=1e-9)  # the last step lands on the sources
    np.testing.assert_allclose(x_b, cond_b, atol=1e-9)
    published, _, _ = run_sources(known=False)
    actual, expected = published[-1]
    assert np.max(np.abs(actual - expected)) > 0.1
