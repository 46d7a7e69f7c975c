"""Warping an image by a displacement field (docs/method.md section 7): the interpolation taps
(bilinear, Keys bicubic), the warp itself, and bringing a field computed on a shrunk image back
to the full image's pixels. Kept apart from the losses because training, the sampler and the
data generator's oracle all warp the same way.

Coordinates are corner-aligned pixel indices: pixel (row y, column x) sits at (x, y) with
x in 0..W-1 and y in 0..H-1. A displacement field u [B, H, W, 2] holds, per output pixel, the
shift in pixels along x (channel 0, columns) and along y (channel 1, rows); the deformation is
phi(x, y) = (x + u_x, y + u_y).
"""

import jax
import jax.numpy as jnp


BILINEAR = "bilinear"
BICUBIC = "bicubic"
INTERPOLATIONS = (BILINEAR, BICUBIC)
KEYS_A = -0.5  # the Keys cubic convolution kernel's parameter: exact on quadratics


def interpolation_taps(fraction, interpolation):
    """((offset, weight), ...) along one axis for a sample at floor + `fraction` (in [0, 1)):
    the two neighbours of linear interpolation, or the four of Keys' cubic convolution (a =
    -0.5), which keeps more of the image's sharpness (its weights sum to 1 and may be
    negative)."""
    if interpolation == BILINEAR:
        return ((0, 1.0 - fraction), (1, fraction))
    a = KEYS_A

    def near(t):  # |t| <= 1
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a

    return ((-1, far(1.0 + fraction)), (0, near(fraction)), (1, near(1.0 - fraction)),
            (2, far(2.0 - fraction)))


def warp(image, displacement, fill=0.0, interpolation=BILINEAR):
    """image [B, H, W, C] sampled at (x + u_x, y + u_y): bilinear or bicubic (`interpolation`),
    `fill` (broadcastable to the image) outside it.

    Images in [-1, 1] need the fill of their own background (`registration.background`), not 0: a mid-grey
    border skews the similarity measures of section 5 towards no warp at all. Differentiable with
    respect to the image and the displacement [B, H, W, 2] (pixels). Bicubic values can leave the
    image's range by a little (the kernel's negative lobes)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {INTERPOLATIONS}")
    image = image - fill
    batch, height, width, channels = image.shape
    rows = jnp.arange(height, dtype=displacement.dtype)[None, :, None]
    cols = jnp.arange(width, dtype=displacement.dtype)[None, None, :]
    x = cols + displacement[..., 0]
    y = rows + displacement[..., 1]
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    flat = image.reshape(batch, height * width, channels)
    result = jnp.zeros(image.shape, image.dtype)
    for dy, wy in interpolation_taps(y - y0, interpolation):
        for dx, wx in interpolation_taps(x - x0, interpolation):
            xi = x0.astype(jnp.int32) + dx
            yi = y0.astype(jnp.int32) + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
            weight = jnp.where(inside, wx * wy, 0.0)[..., None]
            result = result + weight * values.reshape(image.shape)
    return result + fill


def reduced_size(height, width, size):
    """(h, w): an H x W image shrunk, keeping its aspect, so that its longer side is `size`
    pixels (never enlarged; size 0: unchanged)."""
    scale = max(1.0, max(height, width) / size) if size else 1.0
    return max(1, round(height / scale)), max(1, round(width / scale))


def resize_field(field, height, width):
    """A field [B, h, w, 2] in pixels of its h x w image resampled (bilinearly, pixel centres
    aligned as jax.image.resize aligns images) to height x width, its x component scaled by
    width / w and its y component by height / h: the same motion in the new image's pixels."""
    small_height, small_width = field.shape[1:3]
    if (small_height, small_width) == (height, width):
        return field
    resized = jax.image.resize(field, (field.shape[0], height, width, 2), "linear")
    return resized * jnp.array([width / small_width, height / small_height], field.dtype)
