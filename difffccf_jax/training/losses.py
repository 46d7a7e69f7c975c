"""Training losses (docs/method.md section 5): the fusion quality loss and the per-batch loss
terms of the three colour channels. The similarity measures of the registration terms live in
`similarity` (the sampler's refinement uses them too).

Images are NHWC float32 in [-1, 1]. Per-image measures return [B]; `training_losses` returns
scalars. Every function is differentiable with respect to its image arguments.

Chroma (Cr/Cb) rows follow the published training branches: A enters with the TRAINING sign and
gain of the task's rule, A is standardised to B_c's statistics over the region R before the
network, and the clean fused estimate is re-standardised by the published whole-frame moment
matching of the masked images, or with in-region statistics when
settings.LossSettings.region_statistics (config.regions_statistics) is 'in_region'
(`regions.restandardise`). The functions take their settings as a `settings.LossSettings`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from difffccf_jax.model import composition, diffusion, filters, registration, regions, regularisers

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
TERMS = ("noise", "fusion", "quality", "mi", "correlation", "smoothness", "folding")


# ---- fusion quality -----------------------------------------------------------------------------

def ssim_against(x, references, data_range=2.0):
    """Structural similarity of x [B, H, W, 1] with each channel of references [B, H, W, R]
    (Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, valid windows only), [B, R].
    data_range 2 suits images in [-1, 1]. The windowed means of x, the references, their squares
    and cross products are one filtered stack, so x's own moments are computed once for all."""
    count = references.shape[-1]
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    profile = filters.gaussian_profile(SSIM_WINDOW, SSIM_SIGMA)
    stack = jnp.concatenate([x, references, x * x, references ** 2, x * references], axis=-1)
    means = filters.filter_separable(stack, profile, profile)
    mu_x, mu_r, xx, rr, xr = jnp.split(means, np.cumsum([1, count, 1, count]), axis=-1)
    var_x, var_r, cov = xx - mu_x ** 2, rr - mu_r ** 2, xr - mu_x * mu_r
    ssim_map = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)
                / ((mu_x ** 2 + mu_r ** 2 + c1) * (var_x + var_r + c2)))
    return jnp.mean(ssim_map, axis=(1, 2))


def ssim(x, y, data_range=2.0):
    """Structural similarity of x and y [B, H, W, 1] (`ssim_against`), [B]."""
    return ssim_against(x, y, data_range)[:, 0]


SOBEL_SMOOTH = np.array([1.0, 2.0, 1.0])
SOBEL_DERIVATIVE = np.array([-1.0, 0.0, 1.0])  # Sobel_x = outer(SOBEL_SMOOTH, SOBEL_DERIVATIVE)


def sobel_magnitude(x):
    """|Sobel_x| + |Sobel_y| of each channel of x [B, H, W, C] with zero padding,
    [B, H, W, C]; both filters are separable (`filters.filter_separable`)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gx = filters.filter_separable(padded, SOBEL_SMOOTH, SOBEL_DERIVATIVE)
    gy = filters.filter_separable(padded, SOBEL_DERIVATIVE, SOBEL_SMOOTH)
    return jnp.abs(gx) + jnp.abs(gy)


def quality_loss(fused, a, b, weights=(30.0, 40.0, 40.0)):
    """Multi-objective fusion loss of fused image F against sources a and b [B, H, W, 1], [B]:
    w1 (1 - (SSIM(F, a) + SSIM(F, b)) / 2) + w2 mean| |grad F| - max(|grad a|, |grad b|) |
    + w3 mean|F - max(a, b)|, with Sobel gradient magnitudes. The SSIM moments and the Sobel
    filters of F, a and b are each one stacked computation."""
    w_ssim, w_grad, w_intensity = weights
    sources = jnp.concatenate([a, b], axis=-1)
    ssim_term = 1.0 - jnp.mean(ssim_against(fused, sources), axis=-1)
    grad_fused, grad_a, grad_b = jnp.split(
        sobel_magnitude(jnp.concatenate([fused, sources], axis=-1)), 3, axis=-1)
    grad_term = jnp.mean(jnp.abs(grad_fused - jnp.maximum(grad_a, grad_b)), axis=(1, 2, 3))
    intensity_term = jnp.mean(jnp.abs(fused - jnp.maximum(a, b)), axis=(1, 2, 3))
    return w_ssim * ssim_term + w_grad * grad_term + w_intensity * intensity_term


# ---- the three-channel fusion -------------------------------------------------------------------


def noise_loss(noise, predicted, loss_scale):
    """loss_scale * ||eps - eps_hat||_1 / (H W) per image, [B] (the caller sums over images)."""
    height, width = noise.shape[1:3]
    return loss_scale * jnp.sum(jnp.abs(noise - predicted), axis=(1, 2, 3)) / (height * width)


def fusion_loss(fused_t, x_a, x_b, m2, region, chroma):
    """Fusion loss in noise space per image, [B]: (|f_t - x_a| + |f_t - x_b|)_1 / (H W) for Y,
    |(f_t - m2 x_a) R|_1 / (H W) for Cr/Cb."""
    height, width = x_a.shape[1:3]
    luma = jnp.abs(fused_t - x_a) + jnp.abs(fused_t - x_b)
    chroma_term = jnp.abs((fused_t - m2 * x_a) * region)
    per_pixel = jnp.where(composition.per_image(chroma), chroma_term, luma)
    return jnp.sum(per_pixel, axis=(1, 2, 3)) / (height * width)


def clean_fused_estimate(a, b, b_original, m1, m2, region, chroma, sign_gain,
                         statistics=regions.WHOLE_FRAME, detail=None):
    """Fused clean image per image [B, H, W, 1]. Y: m1 a + (1 - m1) b, with A's detail band
    where B is kept when `detail` (a settings.FusionDetail) has a gain
    (`composition.clean_luma`). Cr/Cb: F = b + sign gain
    a R m2 (the TRAINING sign and gain), brought back to b_original's statistics by
    `regions.restandardise`, clipped to [-1, 1], b_original outside R.

    statistics (static): regions.WHOLE_FRAME, the published moment matching of F R against
    b_original R over the whole frame, where the reference value is F R's own value at
    regions.REFERENCE_PIXEL (as in the published training branch); or regions.IN_REGION,
    b_original's mean and std over R. a, b: the network's conditions (for Cr/Cb, A standardised
    in R and B_c * R)."""
    image_chroma = composition.per_image(chroma)
    fused = composition.fuse(jnp.where(image_chroma, a * region, a), b, m1, m2, chroma,
                             sign_gain)
    chroma_fused = regions.restandardise(fused, b_original, region, None, statistics)
    luma = fused if detail is None else composition.clean_luma(a, b, m1, detail)
    return jnp.where(image_chroma, chroma_fused, luma)


def quality_weights_per_row(loss_config, chroma):
    """(SSIM, gradient, intensity) weights of `quality_loss`, each [R]: the luma weights on Y
    rows and the chroma weights on Cr/Cb rows (chroma bool [R])."""
    return tuple(jnp.where(chroma, chroma_weight, luma_weight) for chroma_weight, luma_weight
                 in zip(loss_config.quality_weights, loss_config.luma_quality_weights))


def random_windows(key, side, *images):
    """The same random side x side window of every image [B, H, W, C] in `images`, drawn per
    pair from `key` (images no larger than side are returned whole)."""
    height, width = images[0].shape[1:3]
    if side >= height and side >= width:
        return images
    side_y, side_x = min(side, height), min(side, width)
    corners = jax.random.randint(key, (images[0].shape[0], 2), 0,
                                 jnp.array([height - side_y + 1, width - side_x + 1]))

    def window(image, corner):
        return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0),
                                     (side_y, side_x, image.shape[-1]))

    return tuple(jax.vmap(window)(image, corners) for image in images)


def training_losses(apply_fn, params, a, b, task_rules, key, schedule, loss_config,
                    dropout_key=None):
    """The named loss terms of one batch, a dict of float32 scalars (keys TERMS).

    apply_fn: the model's apply (flax `model.apply`), called as
      apply_fn({'params': params}, x [3B, H, W, 4], t [3B] int32, train=..., rngs=...)
      and returning UNetOutput(noise, m1, m2, deformation); with
      loss_config.registration_pass first once more, deterministically (train=False), on the
      registration pass's input (`registration.predict_field`: [A, B_Y, A, B_Y] at t = 0,
      shrunk to loss_config.registration_size);
    a [B, H, W, 1], b [B, H, W, 3] (YCrCb), both in [-1, 1];
    task_rules: regions.TaskRules of the batch's task (numbers or arrays, so it may be traced);
    key: PRNG key for each channel's step t ~ U{0..S-1} and noise eps (shared by both sources);
    schedule: diffusion.Schedule (the network sees schedule.timesteps[t]);
    loss_config: settings.LossSettings (static);
    dropout_key: PRNG key for dropout, or None for a deterministic forward (train=False).

    Reductions, as published: noise and fusion are sums over images, the other terms means over
    the batch; every term is summed over the three channels. mi (-MI) and correlation
    (1 - correlation, or the MIND distance) compare A with B_c warped by the predicted
    deformation with B's own background as fill; smoothness and folding regularise that
    deformation. With loss_config.registration_pass the deformation is the registration pass's,
    one per pair, which warps all three channels of B (as in the sampler); otherwise each
    channel row's own, at the row's t and conditions."""
    batch = a.shape[0]
    if loss_config.registration_pass:  # first: a recording stand-in keeps the main call's input
        field = registration.predict_field(
            lambda x, t: apply_fn({"params": params}, x, t, train=False), a, b,
            loss_config.registration_size)
        mi, correlation = registration.registration_terms(a, b, field, loss_config)
    if loss_config.diffusion_crop:
        key, crop_key = jax.random.split(key)
        a, b = random_windows(crop_key, loss_config.diffusion_crop, a, b)
    problems = composition.channel_batch(a, b, task_rules)
    cond_a, cond_b, region, chroma = (problems[name] for name in
                                      ("cond_a", "cond_b", "region", "chroma"))
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (3 * batch,), 0, schedule.betas.shape[0])
    noise = jax.random.normal(noise_key, cond_a.shape, cond_a.dtype)
    x_a = diffusion.q_sample(schedule, cond_a, t, noise)
    x_b = diffusion.q_sample(schedule, cond_b, t, noise)
    first, second = cond_a, cond_b
    if loss_config.stage_conditions:
        steps = schedule.betas.shape[0]
        stage = composition.reverse_stage(steps - 1 - t, steps)
        first, second = composition.stage_conditions(stage, cond_a, cond_b)
    network_input = jnp.concatenate([first, second, x_a, x_b], axis=-1)
    if dropout_key is None:
        out = apply_fn({"params": params}, network_input, schedule.timesteps[t], train=False)
    else:
        out = apply_fn({"params": params}, network_input, schedule.timesteps[t], train=True,
                       rngs={"dropout": dropout_key})

    fused_t = composition.fuse(x_a, x_b, out.m1, out.m2, chroma, problems["sign_gain"])
    fused = clean_fused_estimate(cond_a, cond_b, problems["b3"], out.m1, out.m2, region, chroma,
                                 problems["sign_gain"], loss_config.region_statistics,
                                 loss_config.detail)
    # Quality: Y compares F with A and B_c; Cr/Cb compare F R with A' R m2 (both sources).
    masked_a = cond_a * region * out.m2
    image_chroma = composition.per_image(chroma)
    quality = quality_loss(jnp.where(image_chroma, fused * region, fused),
                           jnp.where(image_chroma, masked_a, problems["a3"]),
                           jnp.where(image_chroma, masked_a, problems["b3"]),
                           quality_weights_per_row(loss_config, chroma))
    if not loss_config.registration_pass:
        field = out.deformation  # [3B, ...]: each channel row warps its own B_c
        mi, correlation = registration.registration_similarity(
            problems["a3"], problems["b3"], field,
            jnp.concatenate(jnp.split(registration.background(b), 3, axis=-1)), loss_config)
    return dict(
        noise=jnp.sum(noise_loss(noise, out.noise, loss_config.loss_scale)),
        fusion=jnp.sum(fusion_loss(fused_t, x_a, x_b, out.m2, region, chroma)),
        quality=jnp.sum(quality) / batch,
        mi=jnp.sum(mi) / batch,
        correlation=jnp.sum(correlation) / batch,
        smoothness=jnp.sum(regularisers.smoothness(field)) / batch,
        folding=jnp.sum(regularisers.folding_penalty(field)) / batch,
    )


def weighted_total(terms, weights):
    """sum_k weights[k] * terms[k] over the names in `weights` (a term without a weight is left
    out)."""
    return sum(weights[name] * terms[name] for name in weights)
