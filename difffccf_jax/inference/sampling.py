"""Hierarchical condition-enhancement sampling (docs/method.md section 6) as one compiled program.

Each pair's three colour channels Y, Cr, Cb are fused with A by three reverse diffusion runs that
share one batch of 3B rows, channel-major as in training (`composition.channel_batch`: rows 0..B-1
are the Y runs, then Cr, then Cb). One reverse step is the pure function `reverse_step` followed
by `region_post_step`; `make_sampler` wraps registration and the whole reverse loop (a lax.scan
over the schedule) in one jitted function whose batch is split over the devices of a mesh.

Cr/Cb follow the published sampler: the fused state is x^B + sign gain m2 x^A with the task's
SAMPLING sign and gain (config.regions.<task>.<channel>.sample; for several tasks they differ
from the training ones), and after every step x is re-standardised by the published whole-frame
moment matching of the masked images and set to B_c outside R (`region_post_step`,
`regions.restandardise`). config.regions_statistics = 'in_region' uses B_c's statistics in R
instead, the same choice training makes for its clean fused estimate. PET Cr reflects instead
(x <- 0.8 - x in R, config.sampling.reflect_channels).

Choices where docs/method.md section 6 leaves room:
- One N(0, I) sample eps per channel run starts all three states as training noises them: x^A
  and x^B are the run's two conditions noised to the first reverse step with the same eps, x is
  eps. A shared noise keeps x^A - x^B = sqrt(abar_t) (A' - B') along the whole reverse run (the
  posterior step preserves it), so the network sees source pairs like those it was trained on;
  independent starts would give x^A - x^B of order 1 at every noise level, which training never
  shows it.
- Reverse step i (i = 0 the noisiest, N steps in the schedule used) is in stage floor(3 i / N):
  conditions (B, B), then (A, B), then (A, A) (config.sampling.stages 'thirds'); 'published'
  uses the published loop's boundaries instead (`composition.published_reverse_stage`).
- The conditions are those of training: A and B_Y for Y; for Cr/Cb, inside the region R (the
  task's sampling rule on B_c) A standardised to B_c's statistics in R and B_c, outside R both 0.
- Registration: the network's deformation field for the clean pair (input [A, B_Y, A, B_Y],
  t = 0, the registration pass training scores), optionally refined by a few steps of
  optimisation of that loss plus a strain term, warps all three channels of B before the fusion
  runs (bilinear, outside the image B's own background: the median of its border pixels). Regions,
  conditions and the post-step use the warped B. The deformation state the reference carries
  through its loop never reaches the output and is left out.
- Each pair draws its noise from fold_in(key, pair id), so a pair's result does not depend on
  the batch it is fused in.

Published details that are settings (config.sampling; docs/method.md section 6 gives each its
measured effect): stages; condition_std, how A is standardised to B_c ('published': by the
(n - 1) std + 1e-5); color_conversion, B's RGB -> YCrCb and the output's YCrCb -> RGB
('opencv8': OpenCV's 8-bit routines; B's conversion happens where pairs are read,
`layouts.read_pair`); output_levels, the fused channels rounded or truncated to whole levels;
schedule_precision, the schedule tables computed in float64 or float32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from difffccf_jax import color, compilation, functional_region, parallel
from difffccf_jax.model import (composition, diffusion, refinement, regions, registration, unet,
                                warping)
from difffccf_jax.model import settings as method_settings


class SamplerState(NamedTuple):
    """The reverse-process state of a 3B batch, each [3B, H, W, 1] in the diffusion space:
    the fused image x and the two source trajectories x^A and x^B."""
    x: jnp.ndarray
    x_a: jnp.ndarray
    x_b: jnp.ndarray


class SampleOutput(NamedTuple):
    """What the sampler returns for B pairs of H x W images.

    fused [B, H, W, 3] YCrCb in [-1, 1]; rgb [B, H, W, 3] uint8; m1, m2 [B, H, W, 3] the masks of
    the last reverse step of each channel run (Y, Cr, Cb; zero for the chroma runs when they do
    not run, `channel_runs`); region [B, H, W, 3] bool, the chroma
    regions R (all true for Y); deformation [B, H, W, 2] pixels (zero when registration is off);
    warped_b [B, H, W, 3] YCrCb in [-1, 1], the B that was fused."""
    fused: jnp.ndarray
    rgb: jnp.ndarray
    m1: jnp.ndarray
    m2: jnp.ndarray
    region: jnp.ndarray
    deformation: jnp.ndarray
    warped_b: jnp.ndarray


def reflect_flags(reflect_channels, task):
    """(Cr, Cb) booleans: which chroma channels of `task` take the reflecting post-step, from
    config.sampling.reflect_channels entries like 'pet.cr'."""
    return tuple(f"{task}.{channel}" in set(reflect_channels) for channel in ("cr", "cb"))


def sampling_schedule(kind, diffusion_steps, sampling_steps, precision=diffusion.TABLES_FLOAT64):
    """The schedule the reverse process runs on: the full one of `diffusion_steps` steps, or for
    fewer `sampling_steps` a respaced one keeping evenly strided steps (both ends included);
    tables computed in `precision` (`diffusion.schedule_from_betas`)."""
    full = diffusion.make_schedule(kind, diffusion_steps, precision)
    if int(sampling_steps) == int(diffusion_steps):
        return full
    return diffusion.respace(full, diffusion.respaced_steps(diffusion_steps, sampling_steps),
                             precision)


def channels_to_last(rows):
    """[3B, H, W, 1] channel-major rows (Y block, Cr block, Cb block) -> [B, H, W, 3]."""
    return jnp.concatenate(jnp.split(rows, 3, axis=0), axis=-1)


def per_image(values):
    """[R] -> [R, 1, 1, 1], to broadcast per-row values against images."""
    return jnp.reshape(values, (-1, 1, 1, 1))


def posterior_step(schedule, z, index, eps, noise=None, x0=None):
    """z [R, H, W, 1] at schedule entry `index` moved to its posterior mean at the previous entry,
    from the x0 estimate of eps clipped to [-1, 1] (or from the given clean `x0`); with `noise`,
    plus the posterior standard deviation times noise (except at index 0)."""
    t = jnp.full((z.shape[0],), index, jnp.int32)
    if x0 is None:
        x0 = jnp.clip(diffusion.predict_x0(schedule, z, t, eps), -1.0, 1.0)
    mean, _, log_variance = diffusion.q_posterior(schedule, x0, z, t)
    if noise is None:
        return mean
    return mean + jnp.where(index > 0, jnp.exp(0.5 * log_variance), 0.0) * noise


def reverse_step(schedule, state, eps, m1, m2, index, chroma, sign_gain, noise=None,
                 sources=None):
    """One reverse step at schedule entry `index` given the network's outputs eps, m1, m2
    [3B, H, W, 1]: x <- (f + x) / 2 with the fused state f of `composition.fuse` (chroma bool [3B],
    sign_gain [3B] per row), then x, x^A and x^B each to its posterior mean (plus the same
    `noise` sample for all three in stochastic mode).

    sources: None (published: x^A and x^B from the x0 estimate of eps, like x), or the known
    conditions (cond_a, cond_b) as the x0 of x^A and x^B. The clipped estimate loses the
    difference x^A - x^B wherever both estimates clip (every pixel, at high noise), so by the
    last steps the network sees two sources that are nearly equal; with the known x0 the
    difference stays sqrt(abar) (A' - B'), as in training."""
    fused = composition.fuse(state.x_a, state.x_b, m1, m2, chroma, sign_gain)
    x = 0.5 * (fused + state.x)
    known_a, known_b = sources if sources is not None else (None, None)
    return SamplerState(posterior_step(schedule, x, index, eps, noise),
                        posterior_step(schedule, state.x_a, index, eps, noise, known_a),
                        posterior_step(schedule, state.x_b, index, eps, noise, known_b))


def region_post_step(x, b, region, chroma, reflect, reflect_offset,
                     statistics=regions.WHOLE_FRAME):
    """The chroma post-step after every reverse step (x, b [3B, H, W, 1], region bool, chroma and
    reflect bool [3B]): inside R, x re-standardised to b = B_c (`regions.restandardise`), or
    offset - x on reflecting rows (PET Cr), clipped to [-1, 1]; outside R, b. Y rows are returned
    unchanged.

    statistics (static): regions.WHOLE_FRAME, the published sampler's moment matching of x R
    against b R over the whole frame, its reference value b's value at regions.REFERENCE_PIXEL;
    or regions.IN_REGION, b's mean and std over R."""
    reference = regions.pixel_values(b, regions.REFERENCE_PIXEL)
    restored = regions.restandardise(x, b, region, reference, statistics)
    reflected = jnp.where(region, jnp.clip(reflect_offset - x, -1.0, 1.0), b)
    return jnp.where(per_image(chroma), jnp.where(per_image(reflect), reflected, restored), x)


def channel_runs(settings):
    """How many channel runs the reverse loop makes: Y, Cr and Cb, or with settings.chroma
    CHROMA_SOURCE only Y, since B's own Cr and Cb replace the chroma runs' result."""
    return 1 if settings.chroma == method_settings.CHROMA_SOURCE else 3


def complete_rows(ran, fill):
    """The 3B rows of `fill` [3B, ...] with the first ones replaced by the rows that ran."""
    return jnp.concatenate([ran, fill[ran.shape[0]:]], axis=0)


def b_region_rows(b, conversion):
    """B's functional region (`functional_region.of_rgb` of B's RGB, given back by the
    `conversion` it was read with) as 0/1 rows [3B, H, W, 1] (channel-major, as
    `composition.channel_batch`); b: YCrCb [B, H, W, 3] in [-1, 1]."""
    levels = color.unit_to_levels(b, jnp)  # as read: unrounded, or whole levels for OpenCV's
    if conversion == color.CONVERSION_OPENCV8:
        levels = jnp.rint(levels)
    rgb = color.ycrcb_levels_to_rgb_uint8(levels, conversion, xp=jnp).astype(b.dtype)
    region = functional_region.of_rgb(rgb).astype(b.dtype)[..., None]
    return jnp.concatenate([region] * 3, axis=0)


def final_rows(settings, x, m1, rows, b_region=None):
    """The sampler's result rows [3B, H, W, 1] under `settings` (a settings.SamplerSettings).
    Y rows: the trajectory x (settings.output OUTPUT_TRAJECTORY, published), or with
    OUTPUT_CLEAN the clean fused estimate of the last step's mask (`composition.clean_luma`,
    with settings.detail and, given b_region (`b_region_rows`, with settings.detail_of_b), B's
    detail band inside it; without B's detail band, the image the training quality loss scores; it
    keeps no residual sampling noise, so where A and B_Y agree, as in a black background, it is
    exactly their value). Cr/Cb rows: the trajectory (settings.chroma CHROMA_FUSED, published;
    outside R already exactly B_c), or with CHROMA_SOURCE B's own channels, so that the fused
    image keeps B's colours."""
    luma = x
    if settings.output == method_settings.OUTPUT_CLEAN:
        luma = composition.clean_luma(rows["cond_a"], rows["cond_b"], m1, settings.detail,
                                      b_region)
    chroma = rows["b3"] if settings.chroma == method_settings.CHROMA_SOURCE else x
    return jnp.where(per_image(rows["chroma"]), chroma, luma)


def warp_b(b, deformation, interpolation=warping.BILINEAR):
    """B (YCrCb [B, H, W, 3] in [-1, 1]) warped by `deformation` [B, H, W, 2] with
    `interpolation`, each pair's own background outside the image (the per-channel median of its
    border pixels, `registration.background`, as in training), clipped to [-1, 1] (bicubic
    overshoot, rounding)."""
    return jnp.clip(warping.warp(b, deformation, registration.background(b), interpolation),
                    -1.0, 1.0)


def pair_noise_keys(key, pair_ids):
    """(start keys, step keys) [B] of the pairs `pair_ids` [B]: each pair's key fold_in(key, id),
    split in two (`initial_noise`, `step_noise`)."""
    pair_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, pair_ids)
    return tuple(jnp.moveaxis(jax.vmap(jax.random.split)(pair_keys), 1, 0))


def initial_noise(pair_keys, height, width):
    """One N(0, I) sample per channel run, [3B, H, W, 1] (channel-major rows)."""
    draws = jax.vmap(lambda key: jax.random.normal(key, (3, height, width, 1)))(pair_keys)
    return jnp.moveaxis(draws, 1, 0).reshape(-1, height, width, 1)


def initial_state(schedule, cond_a, cond_b, noise):
    """The state at the first reverse step (the last schedule entry): x^A and x^B the
    conditions [3B, H, W, 1] noised there with the same `noise`, x the noise itself."""
    t = jnp.full((noise.shape[0],), schedule.betas.shape[0] - 1, jnp.int32)
    return SamplerState(noise, diffusion.q_sample(schedule, cond_a, t, noise),
                        diffusion.q_sample(schedule, cond_b, t, noise))


def step_noise(pair_keys, step, height, width):
    """The noise of reverse step `step` in stochastic mode, [3B, H, W, 1]: one sample per
    channel run, shared by x, x^A and x^B."""
    draws = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, step),
                                                   (3, height, width, 1)))(pair_keys)
    return jnp.moveaxis(draws, 1, 0).reshape(-1, height, width, 1)


def ycrcb_unit_to_rgb_uint8(fused, truncate=False, conversion=color.CONVERSION_FLOAT):
    """YCrCb in [-1, 1] [..., 3] -> RGB uint8: whole 0..255 levels (rounded, or with `truncate`
    rounded down as the published cast to uint8 does), converted by `conversion`
    (`color.ycrcb_levels_to_rgb_uint8`)."""
    return color.jnp_ycrcb_levels_to_rgb_uint8(color.jnp_from_unit(fused, truncate=truncate),
                                               conversion)


class FusionInputs(NamedTuple):
    """What the reverse steps fuse: b [B, H, W, 3] (YCrCb, registered), the deformation that
    registered it [B, H, W, 2], and `rows`, the 3B-row dict of `composition.channel_batch`
    (conditions, B's channels, regions, per-row chroma flags and signed gains)."""
    b: jnp.ndarray
    deformation: jnp.ndarray
    rows: dict


def make_sampler(model, task_rules, reflect, settings, mesh=None):
    """The whole fusion of a batch of pairs as one jitted function

        sample(params, schedule, a, b, key, pair_ids) -> SampleOutput

    a [B, H, W, 1] and b [B, H, W, 3] (YCrCb) in [-1, 1]; schedule a `diffusion.Schedule` of N
    steps (the reverse loop runs over all of them); key a PRNG key; pair_ids [B] int32 (each pair's
    noise comes from fold_in(key, pair id)). It compiles once per input shape and N.

    With settings.register, the registration pass comes first (`registration.predict_field`, as
    in training: the network on the clean pairs [A, B_Y, A, B_Y] at t = 0, shrunk to
    settings.registration_size pixels a side), refined by settings.refinement.steps steps of
    instance optimisation (`refinement.refine_field`), and the field warps B
    (settings.warp_interpolation: warping.BILINEAR, as training warps, or BICUBIC); then
    one lax.scan runs the N reverse steps, so the network is compiled once for them (and once
    for the registration pass).

    model: a `unet.UNet`; task_rules: the task's sampling `regions.TaskRules` (their regions,
    signs and gains); reflect: (Cr, Cb) booleans, the PET Cr post-step (offset - x inside R)
    instead of re-standardising (`reflect_flags`); settings: a `settings.SamplerSettings`
    (statistics: the re-standardisation of the other chroma rows, `region_post_step`; add_noise:
    stochastic mode; output: what the Y rows return, `final_rows`; known_sources: x^A and x^B
    follow their known clean sources, `reverse_step`; stages: where the hierarchical stages split
    the schedule, `composition.stage_of`; condition_std: how A is standardised to B_c,
    `regions.standardise_in_region`; truncate_output and color_conversion: how the fused YCrCb
    becomes RGB uint8, `ycrcb_unit_to_rgb_uint8`); mesh: a Mesh with axis 'data' over which
    the batch (and the 3B rows) is split, params replicated; B must be a multiple of its size;
    by default all devices.
    """
    mesh = mesh or parallel.make_mesh()
    replicated, split = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    def fusion_inputs(a, b, deformation):
        rows = composition.channel_batch(a, b, task_rules, settings.condition_std)
        return FusionInputs(b, deformation, jax.lax.with_sharding_constraint(rows, split))

    def sample_pairs(params, schedule, a, b, key, pair_ids):
        num_pairs, height, width, _ = a.shape
        num_steps = schedule.betas.shape[0]
        running = channel_runs(settings) * num_pairs  # the first rows: Y (then Cr, Cb)
        reflect_rows = np.repeat(np.array([False, *reflect]), num_pairs)[:running]
        init_keys, noise_keys = pair_noise_keys(key, pair_ids)
        start_noise = initial_noise(init_keys, height, width)[:running]

        def start(rows):
            return jax.lax.with_sharding_constraint(
                initial_state(schedule, rows["cond_a"], rows["cond_b"], start_noise), split)

        def body(carry, step):
            state, m1, m2 = carry
            index = num_steps - 1 - step
            stage = composition.stage_of(settings.stages, step, num_steps)
            conditions = composition.stage_conditions(stage, rows["cond_a"], rows["cond_b"])
            network_input = jnp.concatenate([*conditions, state.x_a, state.x_b], axis=-1)
            out = model.apply({"params": params}, network_input,
                              jnp.full((running,), schedule.timesteps[index], jnp.int32),
                              train=False)
            noise = (step_noise(noise_keys, step, height, width)[:running]
                     if settings.add_noise else None)
            sources = (rows["cond_a"], rows["cond_b"]) if settings.known_sources else None
            new = reverse_step(schedule, state, out.noise, out.m1, out.m2, index,
                               rows["chroma"], rows["sign_gain"], noise, sources)
            x = region_post_step(new.x, rows["b3"], rows["region"], rows["chroma"],
                                 reflect_rows, settings.reflect_offset, settings.statistics)
            return (new._replace(x=x), out.m1, out.m2), None

        if settings.register:
            deformation = registration.predict_field(
                lambda x, t: model.apply({"params": params}, x, t, train=False), a, b,
                settings.registration_size)
            if settings.refinement.steps:
                deformation = refinement.refine_field(a, b, deformation, settings.refinement)
            inputs = fusion_inputs(a, warp_b(b, deformation, settings.warp_interpolation),
                                   deformation)
        else:
            inputs = fusion_inputs(a, b, jnp.zeros(a.shape[:-1] + (2,), a.dtype))
        rows = jax.lax.with_sharding_constraint(
            {name: value[:running] for name, value in inputs.rows.items()}, split)
        masks = jnp.zeros_like(start_noise)
        (state, m1, m2), _ = jax.lax.scan(body, (start(rows), masks, masks),
                                          jnp.arange(num_steps))
        no_masks = jnp.zeros_like(inputs.rows["b3"])
        state, m1, m2 = (complete_rows(ran, fill) for ran, fill in (
            (state.x, inputs.rows["b3"]), (m1, no_masks), (m2, no_masks)))
        b_region = (b_region_rows(inputs.b, settings.color_conversion)
                    if settings.detail_of_b else None)
        fused = jnp.clip(channels_to_last(final_rows(settings, state, m1, inputs.rows,
                                                     b_region)), -1.0, 1.0)
        return SampleOutput(fused=fused,
                            rgb=ycrcb_unit_to_rgb_uint8(fused, settings.truncate_output,
                                                         settings.color_conversion),
                            m1=channels_to_last(m1), m2=channels_to_last(m2),
                            region=channels_to_last(inputs.rows["region"]),
                            deformation=inputs.deformation, warped_b=inputs.b)

    return compilation.jit(sample_pairs,
                           in_shardings=(replicated, replicated, split, split, replicated, split),
                           out_shardings=split)


def sampler_from_config(config, task, mesh=None, model=None):
    """(sample, schedule) fusing `task` pairs with the model, region, diffusion and sampling
    settings of `config`: the SAMPLING region rules, signs and gains of config.regions and
    `settings.sampler_settings(config)`; see `make_sampler`. model: the network, by default
    config.model's U-Net (fusion passes it wrapped in a `tiling.TiledNetwork`)."""
    sampler = method_settings.sampler_settings(config)
    sample = make_sampler(
        unet.model_from_config(config.model) if model is None else model,
        regions.rules_from_config(config.regions, task, "sample"),
        reflect_flags(sampler.reflect_channels, task), sampler, mesh=mesh)
    schedule = sampling_schedule(config.diffusion.schedule, config.diffusion.steps,
                                 config.sampling.steps, sampler.schedule_precision)
    return sample, schedule


def padded_batch_size(batch_size, num_devices):
    """The batch size rounded up to a multiple of the device count."""
    return -(-int(batch_size) // num_devices) * num_devices
