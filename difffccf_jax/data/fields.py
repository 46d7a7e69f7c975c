"""Gaussian blurs and smooth random fields on the pixel grid, in float32.

Edges are periodic (a blur near one edge sees the opposite edge); the generated images have
dark or statistically uniform borders, so this does not show. Small blurs are direct separable
convolutions, larger ones products in the Fourier domain; smooth noise is drawn on a grid
coarser than its correlation length and interpolated, which keeps the generator fast.
"""

import functools

import numpy as np
from PIL import Image

DIRECT_BLUR_MAX_SIGMA = 2.0


@functools.lru_cache(maxsize=64)
def _gaussian_transfer(height, width, sigma):
    """[height, width // 2 + 1] Fourier transfer function of a Gaussian of std `sigma` pixels."""
    rate = -2.0 * np.pi ** 2 * sigma ** 2
    fy, fx = np.fft.fftfreq(height), np.fft.rfftfreq(width)
    return np.outer(np.exp(rate * fy ** 2), np.exp(rate * fx ** 2)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _gaussian_taps(sigma):
    radius = int(np.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _convolve_axis(image, taps, axis):
    """Periodic convolution of `image` with symmetric `taps` along axis 0 or 1."""
    radius, length = len(taps) // 2, image.shape[axis]
    image = np.moveaxis(image, axis, 0)
    padded = np.concatenate([image[length - radius:], image, image[:radius]], axis=0)
    result = taps[radius] * image
    for offset in range(1, radius + 1):
        result += taps[radius + offset] * (padded[radius - offset:radius - offset + length]
                                           + padded[radius + offset:radius + offset + length])
    return np.moveaxis(result, 0, axis)


def gaussian_blur(image, sigma):
    """[H, W] or [H, W, C] `image` blurred by a Gaussian of std `sigma` pixels, float32."""
    image = np.asarray(image, np.float32)
    if sigma < 0.3:
        return image
    sigma = round(float(sigma), 2)
    if sigma <= DIRECT_BLUR_MAX_SIGMA:
        taps = _gaussian_taps(sigma)
        return _convolve_axis(_convolve_axis(image, taps, 0), taps, 1)
    height, width = image.shape[:2]
    transfer = _gaussian_transfer(height, width, sigma)
    if image.ndim == 3:
        transfer = transfer[..., None]
    spectrum = np.fft.rfft2(image, axes=(0, 1)) * transfer
    return np.fft.irfft2(spectrum, s=(height, width), axes=(0, 1)).astype(np.float32)


def upsample(image, shape):
    """[h, w] float32 -> [H, W] by bilinear interpolation (pixel centres aligned)."""
    resized = Image.fromarray(np.asarray(image, np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(resized)


def smooth_noise(rng, shape, sigma):
    """[H, W] Gaussian random field with correlation length ~`sigma` pixels, mean 0, std 1.

    White noise on a grid `factor` times coarser (spacing at most sigma / 2) is blurred by
    sigma / factor and interpolated back to `shape`.
    """
    factor = max(1, min(int(sigma // 2), min(shape) // 8))
    coarse_shape = (-(-shape[0] // factor), -(-shape[1] // factor))
    field = gaussian_blur(rng.standard_normal(coarse_shape, dtype=np.float32), sigma / factor)
    if factor > 1:
        field = upsample(field, shape)
    field = field - field.mean()
    return field / max(float(field.std()), 1e-12)
