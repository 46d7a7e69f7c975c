"""Training losses (docs/method.md section 5): similarity measures, the fusion quality loss and the
per-batch loss terms of the three colour channels.

Images are NHWC float32 in [-1, 1]. Per-image measures return [B]; `training_losses` returns
scalars. Every function is differentiable with respect to its image arguments.

Chroma (Cr/Cb) rows follow the published training branches: A enters with the TRAINING sign and
gain of the task's rule, A is standardised to B_c's statistics over the region R before the
network, and the clean fused estimate is re-standardised by the published whole-frame moment
matching of the masked images, or with in-region statistics when
LossConfig.region_statistics (config.regions_statistics) is 'in_region'
(`regions.restandardise`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from difffccf_jax import color
from difffccf_jax.model import composition, diffusion, registration, regions
from difffccf_jax.errors import UserError

VALUE_RANGE = (-1.0, 1.0)  # the intensity range of network inputs
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
NCC_EPS = 1e-6
LOG_EPS = 1e-10
TERMS = ("noise", "fusion", "quality", "mi", "correlation", "smoothness", "folding")
CORRELATIONS = ("ratio", "ncc")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Plain loss settings (hashable: close over it or pass it as a static argument of jit).

    loss_scale: factor of the noise L1; quality_weights: (SSIM, gradient, intensity) weights of
    the Cr/Cb rows, luma_quality_weights those of the Y rows (`quality_loss`);
    stage_conditions: train each row with the conditions the sampler gives its noise level
    (`stage_conditions`) instead of always (A, B);
    mi_bins / mi_sigma: Parzen bins and kernel width in bins (also used by the correlation ratio);
    correlation: 'ratio' (correlation ratio) or 'ncc' (local NCC over ncc_window pixels);
    similarity_blur: standard deviation (pixels) of the Gaussian blur of A and B before the
    similarity terms, 0 for none; region_statistics: how the clean fused chroma is
    re-standardised, regions.WHOLE_FRAME (published) or regions.IN_REGION (`regions.restandardise`;
    from config.regions_statistics, which the sampler reads too)."""
    loss_scale: float = 128.0
    quality_weights: tuple = (30.0, 40.0, 40.0)
    luma_quality_weights: tuple = (30.0, 40.0, 40.0)
    stage_conditions: bool = False
    mi_bins: int = 32
    mi_sigma: float = 0.5
    correlation: str = "ratio"
    ncc_window: int = 9
    similarity_blur: float = 0.0
    region_statistics: str = regions.WHOLE_FRAME

    @classmethod
    def from_config(cls, loss, region_statistics=regions.WHOLE_FRAME):
        """From config.loss and the checked config.regions_statistics
        (`regions.statistics_from_config`); unknown or invalid values raise UserError naming the
        field."""
        if loss.correlation not in CORRELATIONS:
            raise UserError(f"loss.correlation: expected 'ratio' or 'ncc', "
                            f"got {loss.correlation!r}")
        for field in ("quality_weights", "luma_quality_weights"):
            if len(loss[field]) != 3 or min(loss[field]) < 0:
                raise UserError(f"loss.{field}: expected 3 numbers >= 0 (SSIM, gradient, "
                                f"intensity), got {tuple(loss[field])}")
        if int(loss.mi_bins) < 2 or float(loss.mi_sigma) <= 0:
            raise UserError(f"loss.mi_bins / loss.mi_sigma: expected >= 2 bins and a positive "
                            f"width, got {loss.mi_bins} / {loss.mi_sigma}")
        if int(loss.ncc_window) < 1:
            raise UserError(f"loss.ncc_window: expected a positive size, got {loss.ncc_window}")
        if float(loss.similarity_blur) < 0:
            raise UserError(f"loss.similarity_blur: expected a width >= 0 pixels, got "
                            f"{loss.similarity_blur}")
        if region_statistics not in regions.STATISTICS:
            raise UserError(f"regions_statistics: expected 'whole_frame' or 'in_region', "
                            f"got {region_statistics!r}")
        return cls(loss_scale=float(loss.loss_scale),
                   quality_weights=tuple(float(w) for w in loss.quality_weights),
                   luma_quality_weights=tuple(float(w) for w in loss.luma_quality_weights),
                   stage_conditions=bool(loss.stage_conditions),
                   mi_bins=int(loss.mi_bins), mi_sigma=float(loss.mi_sigma),
                   correlation=str(loss.correlation), ncc_window=int(loss.ncc_window),
                   similarity_blur=float(loss.similarity_blur),
                   region_statistics=str(region_statistics))


# ---- similarity between A and (warped) B --------------------------------------------------------

def soft_bin_weights(x, bins, sigma, value_range=VALUE_RANGE):
    """Parzen (Gaussian) assignment of each pixel of x [B, H, W, 1] to `bins` evenly spaced
    centres spanning value_range (both ends included); sigma in bin widths. [B, H*W, bins],
    each row sums to 1."""
    low, high = value_range
    centres = jnp.linspace(low, high, bins)
    width = (high - low) / (bins - 1)
    values = jnp.clip(x.reshape(x.shape[0], -1, 1), low, high)
    logits = -0.5 * ((values - centres) / (sigma * width)) ** 2
    return jax.nn.softmax(logits, axis=-1)


def soft_joint_histogram(a, b, bins, sigma):
    """Joint probability table of the soft-binned intensities of a and b [B, H, W, 1],
    [B, bins, bins]."""
    weights_a = soft_bin_weights(a, bins, sigma)
    weights_b = soft_bin_weights(b, bins, sigma)
    return jnp.einsum("bnk,bnl->bkl", weights_a, weights_b) / weights_a.shape[1]


def mutual_information(a, b, bins=32, sigma=0.5):
    """Differentiable mutual information (nats) of a and b [B, H, W, 1] from a Parzen joint
    histogram, [B]. MI(x, x) is at most the entropy of x's soft histogram and reaches it as
    sigma -> 0 for values on the bin centres."""
    joint = soft_joint_histogram(a, b, bins, sigma)
    p_a = jnp.sum(joint, axis=2, keepdims=True)
    p_b = jnp.sum(joint, axis=1, keepdims=True)
    return jnp.sum(joint * jnp.log((joint + LOG_EPS) / (p_a * p_b + LOG_EPS)), axis=(1, 2))


def correlation_ratio(a, b, bins=32, sigma=0.5):
    """Correlation ratio eta^2(b | a) in [0, 1], [B]: the share of b's variance explained by
    a's (soft-binned) intensity classes; 1 when b is a function of a, about 0 when independent."""
    weights = soft_bin_weights(a, bins, sigma)  # [B, N, K]
    values = b.reshape(b.shape[0], -1)
    mean = jnp.mean(values, axis=1, keepdims=True)
    counts = jnp.sum(weights, axis=1)  # [B, K]
    class_means = jnp.einsum("bnk,bn->bk", weights, values) / jnp.maximum(counts, LOG_EPS)
    between = jnp.sum(counts * (class_means - mean) ** 2, axis=1)
    total = jnp.sum((values - mean) ** 2, axis=1)
    return between / (total + LOG_EPS)


def _filter_valid(maps, kernel):
    """Each channel of maps [B, H, W, C] correlated with the 2-D kernel [k, k], no padding."""
    channels = maps.shape[-1]
    weights = jnp.tile(kernel[:, :, None, None].astype(maps.dtype), (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(maps, weights, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels)


def _window_moments(a, b, kernel):
    """Windowed means, variances and covariance of single-channel a and b [B, H, W, 1]."""
    means = _filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), kernel)
    mu_a, mu_b, aa, bb, ab = jnp.split(means, 5, axis=-1)
    return mu_a, mu_b, aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b


def gaussian_blur(x, sigma):
    """x [B, H, W, C] blurred by a Gaussian of standard deviation `sigma` pixels (truncated at
    3 sigma, edge pixels repeated outside the image); x itself for sigma 0."""
    if sigma == 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    return _filter_valid(padded, gaussian_kernel(2 * radius + 1, sigma))


def local_ncc(a, b, window=9):
    """Mean over windows of the squared local correlation of a and b [B, H, W, 1]: in [0, 1],
    1 when b is locally an affine function of a, [B]."""
    box = jnp.full((window, window), 1.0 / window ** 2)
    _, _, var_a, var_b, cov = _window_moments(a, b, box)
    return jnp.mean(cov ** 2 / (var_a * var_b + NCC_EPS), axis=(1, 2, 3))


# ---- fusion quality -----------------------------------------------------------------------------

def gaussian_kernel(size=SSIM_WINDOW, sigma=SSIM_SIGMA):
    """Normalised 2-D Gaussian window [size, size]."""
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    profile /= profile.sum()
    return jnp.asarray(np.outer(profile, profile), jnp.float32)


def ssim(x, y, data_range=2.0):
    """Structural similarity of x and y [B, H, W, 1] (Gaussian window 11, sigma 1.5,
    K1 = 0.01, K2 = 0.03, valid windows only), [B]. data_range 2 suits images in [-1, 1]."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y, var_x, var_y, cov = _window_moments(x, y, gaussian_kernel())
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x):
    """|Sobel_x| + |Sobel_y| of x [B, H, W, 1] with zero padding, [B, H, W, 1]."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gx = _filter_valid(padded, jnp.asarray(SOBEL_X))
    gy = _filter_valid(padded, jnp.asarray(SOBEL_X.T))
    return jnp.abs(gx) + jnp.abs(gy)


def quality_loss(fused, a, b, weights=(30.0, 40.0, 40.0)):
    """Multi-objective fusion loss of fused image F against sources a and b [B, H, W, 1], [B]:
    w1 (1 - (SSIM(F, a) + SSIM(F, b)) / 2) + w2 mean| |grad F| - max(|grad a|, |grad b|) |
    + w3 mean|F - max(a, b)|, with Sobel gradient magnitudes."""
    w_ssim, w_grad, w_intensity = weights
    ssim_term = 1.0 - 0.5 * (ssim(fused, a) + ssim(fused, b))
    joint_grad = jnp.maximum(sobel_magnitude(a), sobel_magnitude(b))
    grad_term = jnp.mean(jnp.abs(sobel_magnitude(fused) - joint_grad), axis=(1, 2, 3))
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
                         statistics=regions.WHOLE_FRAME):
    """Fused clean image per image [B, H, W, 1]. Y: m1 a + (1 - m1) b. Cr/Cb: F = b + sign gain
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
    return jnp.where(image_chroma, chroma_fused, fused)








def quality_weights_per_row(loss_config, chroma):
    """(SSIM, gradient, intensity) weights of `quality_loss`, each [R]: the luma weights on Y
    rows and the chroma weights on Cr/Cb rows (chroma bool [R])."""
    return tuple(jnp.where(chroma, chroma_weight, luma_weight) for chroma_weight, luma_weight
                 in zip(loss_config.quality_weights, loss_config.luma_quality_weights))


def similarity_loss(a, warped_b, loss_config):
    """(MI term, correlation term) per image, [B] each: -MI and 1 - correlation (ratio or NCC)."""
    mi = mutual_information(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    if loss_config.correlation == "ratio":
        correlation = correlation_ratio(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    else:
        correlation = local_ncc(a, warped_b, loss_config.ncc_window)
    return -mi, 1.0 - correlation


def registration_similarity(a, b, deformation, background, loss_config):
    """(MI term, correlation term) per image [B] of A against B warped by `deformation`, both
    blurred by loss_config.similarity_blur first (so that the smoothing of bilinear
    interpolation adds little); `background` (broadcastable to b) comes in from outside."""
    blur = functools.partial(gaussian_blur, sigma=loss_config.similarity_blur)
    warped_b = registration.warp(blur(b), deformation, background)
    return similarity_loss(blur(a), warped_b, loss_config)


def training_losses(apply_fn, params, a, b, task_rules, key, schedule, loss_config,
                    dropout_key=None):
    """The named loss terms of one batch, a dict of float32 scalars (keys TERMS).

    apply_fn: the model's apply (flax `model.apply`), called once as
      apply_fn({'params': params}, x [3B, H, W, 4], t [3B] int32, train=..., rngs=...)
      and returning UNetOutput(noise, m1, m2, deformation);
    a [B, H, W, 1], b [B, H, W, 3] (YCrCb), both in [-1, 1];
    task_rules: regions.TaskRules of the batch's task (numbers or arrays, so it may be traced);
    key: PRNG key for each channel's step t ~ U{0..S-1} and noise eps (shared by both sources);
    schedule: diffusion.Schedule (the network sees schedule.timesteps[t]);
    loss_config: LossConfig (static);
    dropout_key: PRNG key for dropout, or None for a deterministic forward (train=False).

    Reductions, as published: noise and fusion are sums over images, the other terms means over
    the batch; every term is summed over the three channels. mi (-MI) and correlation
    (1 - correlation) compare A with B_c warped by the predicted deformation; smoothness and
    folding regularise that deformation."""
    batch = a.shape[0]
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
                                 problems["sign_gain"], loss_config.region_statistics)
    # Quality: Y compares F with A and B_c; Cr/Cb compare F R with A' R m2 (both sources).
    masked_a = cond_a * region * out.m2
    image_chroma = composition.per_image(chroma)
    quality = quality_loss(jnp.where(image_chroma, fused * region, fused),
                           jnp.where(image_chroma, masked_a, problems["a3"]),
                           jnp.where(image_chroma, masked_a, problems["b3"]),
                           quality_weights_per_row(loss_config, chroma))
    black = jnp.repeat(jnp.asarray(color.black_ycrcb_unit()), batch)  # each row's background
    mi, correlation = registration_similarity(problems["a3"], problems["b3"], out.deformation,
                                              composition.per_image(black), loss_config)
    return dict(
        noise=jnp.sum(noise_loss(noise, out.noise, loss_config.loss_scale)),
        fusion=jnp.sum(fusion_loss(fused_t, x_a, x_b, out.m2, region, chroma)),
        quality=jnp.sum(quality) / batch,
        mi=jnp.sum(mi) / batch,
        correlation=jnp.sum(correlation) / batch,
        smoothness=jnp.sum(registration.smoothness(out.deformation)) / batch,
        folding=jnp.sum(registration.folding_penalty(out.deformation)) / batch,
    )


def weighted_total(terms, weights):
    """sum_k weights[k] * terms[k] over the names in `weights` (a term without a weight is left
    out)."""
    return sum(weights[name] * terms[name] for name in weights)
