"""The similarity of A and the warped B (docs/method.md section 5): soft-histogram mutual
information, the correlation ratio, local NCC and the MIND distance, and `similarity_loss`, the
two terms that training's registration terms and the sampler's refinement minimise. Each
measure is differentiable and returns one value per image, [B].
"""

import jax
import jax.numpy as jnp

from difffccf_jax.model.filters import gaussian_blur, shifted, window_moments


VALUE_RANGE = (-1.0, 1.0)  # the intensity range of images
NCC_EPS = 1e-6
LOG_EPS = 1e-10
MIND_RADIUS = 2  # pixels between a pixel and the four neighbours its MIND descriptor compares
MIND_SIGMA = 1.0  # the Gaussian patch (pixels) over which those differences are summed
CORRELATIONS = ("ratio", "ncc", "mind")  # the second similarity term (`similarity_loss`)


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


def mind_descriptor(x, radius=MIND_RADIUS, sigma=MIND_SIGMA):
    """The modality independent neighbourhood descriptor (MIND, Heinrich et al. 2012) of
    x [B, H, W, 1], [B, H, W, 4]: for the four neighbours at `radius` pixels along x and y,
    exp(-D_r / V), with D_r the Gaussian-weighted (sigma) patch distance sum (x - x_r)^2 and
    V the mean of the four D_r, divided by its largest entry. It describes the local structure,
    not the intensities, so two modalities of one anatomy have similar descriptors."""
    offsets = ((radius, 0), (-radius, 0), (0, radius), (0, -radius))
    distances = gaussian_blur(jnp.concatenate([(x - shifted(x, dx, dy)) ** 2
                                               for dx, dy in offsets], axis=-1), sigma)
    variance = jnp.mean(distances, axis=-1, keepdims=True)
    variance = variance + 1e-3 * jnp.mean(variance, axis=(1, 2, 3), keepdims=True) + LOG_EPS
    descriptor = jnp.exp(-distances / variance)
    return descriptor / jnp.max(descriptor, axis=-1, keepdims=True)


def mind_distance(a, b):
    """Mean over pixels of the L1 distance between the MIND descriptors of a and b
    [B, H, W, 1], [B]: 0 for identical local structure, at most 4."""
    return jnp.sum(jnp.mean(jnp.abs(mind_descriptor(a) - mind_descriptor(b)), axis=(1, 2)),
                   axis=-1)


def local_ncc(a, b, window=9):
    """Mean over windows of the squared local correlation of a and b [B, H, W, 1]: in [0, 1],
    1 when b is locally an affine function of a, [B]."""
    box = jnp.full((window, window), 1.0 / window ** 2)
    _, _, var_a, var_b, cov = window_moments(a, b, box)
    return jnp.mean(cov ** 2 / (var_a * var_b + NCC_EPS), axis=(1, 2, 3))


def similarity_loss(a, warped_b, loss_config):
    """(MI term, correlation term) per image, [B] each: -MI and 1 - correlation (ratio or NCC),
    or with correlation 'mind' the MIND distance (`mind_distance`) as the second term.
    loss_config: any object with mi_bins, mi_sigma, correlation and ncc_window
    (settings.LossSettings, `refinement.Refinement`)."""
    mi = mutual_information(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    if loss_config.correlation == "mind":
        return -mi, mind_distance(a, warped_b)
    if loss_config.correlation == "ratio":
        correlation = correlation_ratio(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    else:
        correlation = local_ncc(a, warped_b, loss_config.ncc_window)
    return -mi, 1.0 - correlation
