"""Generic image filters for [B, H, W, C] maps: valid 2-D and separable correlation (as band
matrix products), windowed moments, Gaussian profile and blur, and integer shifts with edge
pixels repeated. The similarity measures and the fusion losses (SSIM, Sobel gradients) share
them.
"""

import jax
import jax.numpy as jnp
import numpy as np


def filter_valid(maps, kernel):
    """Each channel of maps [B, H, W, C] correlated with the 2-D kernel [k, k], no padding.
    Separable kernels are many times faster through `filter_separable`."""
    channels = maps.shape[-1]
    weights = jnp.tile(kernel[:, :, None, None].astype(maps.dtype), (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(maps, weights, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels)


def window_moments(a, b, kernel):
    """Windowed means, variances and covariance of single-channel a and b [B, H, W, 1]."""
    means = filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), kernel)
    mu_a, mu_b, aa, bb, ab = jnp.split(means, 5, axis=-1)
    return mu_a, mu_b, aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b


def band_matrix(size, taps):
    """[size - k + 1, size] float32: the valid correlation of a length-`size` signal with the
    1-D `taps` [k] as a matrix (row i holds the taps in columns i..i+k-1)."""
    rows = size - len(taps) + 1
    matrix = sum(tap * np.eye(rows, size, k=offset) for offset, tap in enumerate(taps))
    return matrix.astype(np.float32)


def filter_separable(maps, taps_y, taps_x):
    """Each channel of maps [B, H, W, C] correlated with the 2-D kernel outer(taps_y, taps_x),
    no padding, [B, H - k_y + 1, W - k_x + 1, C] (the SSIM windows and Sobel filters of
    losses.py, `gaussian_blur`): one 1-D pass along each axis, as products with band matrices,
    which XLA runs many times faster than a depthwise 2-D convolution. HIGHEST precision keeps
    float32 on GPUs (not TF32)."""
    height, width = maps.shape[1:3]
    return jnp.einsum("yh,bhwc,xw->byxc", band_matrix(height, taps_y), maps,
                      band_matrix(width, taps_x), precision=jax.lax.Precision.HIGHEST)


def gaussian_blur(x, sigma):
    """x [B, H, W, C] blurred by a Gaussian of standard deviation `sigma` pixels (truncated at
    3 sigma, edge pixels repeated outside the image); x itself for sigma 0."""
    if sigma == 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    profile = gaussian_profile(2 * radius + 1, sigma)
    return filter_separable(padded, profile, profile)


def shifted(x, dx, dy):
    """x [B, H, W, C] read at (x + dx, y + dy) (integer offsets), edge pixels repeated."""
    radius = max(abs(dx), abs(dy))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = x.shape[1:3]
    return padded[:, radius + dy:radius + dy + height, radius + dx:radius + dx + width]


def gaussian_profile(size, sigma):
    """Normalised 1-D Gaussian [size] (NumPy): the normalised 2-D window is its outer product
    with itself (`filter_separable`; also the SSIM window of losses.py)."""
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return profile / profile.sum()
