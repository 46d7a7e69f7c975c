"""Warping by a displacement field and the field's regularisers (docs/method.md sections 5 and 7).

Coordinates are corner-aligned pixel indices: pixel (row y, column x) sits at (x, y) with
x in 0..W-1 and y in 0..H-1. A displacement field u [B, H, W, 2] holds, per output pixel, the
shift in pixels along x (channel 0, columns) and along y (channel 1, rows); the deformation is
phi(x, y) = (x + u_x, y + u_y).
"""

import jax.numpy as jnp


def warp(image, displacement, fill=0.0):
    """image [B, H, W, C] sampled at (x + u_x, y + u_y): bilinear, `fill` (broadcastable to the
    image) outside it.

    Images in [-1, 1] need the fill of their background (black: Y -1), not 0: a mid-grey border
    skews the similarity measures of section 5 towards no warp at all. Differentiable with
    respect to the image and the displacement [B, H, W, 2] (pixels)."""
    image = image - fill
    batch, height, width, channels = image.shape
    rows = jnp.arange(height, dtype=displacement.dtype)[None, :, None]
    cols = jnp.arange(width, dtype=displacement.dtype)[None, None, :]
    x = cols + displacement[..., 0]
    y = rows + displacement[..., 1]
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    flat = image.reshape(batch, height * width, channels)
    result = jnp.zeros(image.shape, image.dtype)
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            xi = x0.astype(jnp.int32) + dx
            yi = y0.astype(jnp.int32) + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
            weight = jnp.where(inside, wx * wy, 0.0)[..., None]
            result = result + weight * values.reshape(image.shape)
    return result + fill


def jacobian_determinant(displacement):
    """det of the Jacobian of (x, y) -> (x + u_x, y + u_y), [B, H, W], by central differences
    (one-sided at the border), exact for affine fields."""
    u_x, u_y = displacement[..., 0], displacement[..., 1]
    dux_dy, dux_dx = jnp.gradient(u_x, axis=(1, 2))
    duy_dy, duy_dx = jnp.gradient(u_y, axis=(1, 2))
    return (1.0 + dux_dx) * (1.0 + duy_dy) - dux_dy * duy_dx


def folding_penalty(displacement):
    """Mean over pixels of max(0, -det J): how much the deformation folds, [B]."""
    return jnp.mean(jnp.maximum(-jacobian_determinant(displacement), 0.0), axis=(1, 2))


def smoothness(displacement):
    """Mean squared forward difference of the field along x and along y, summed over both
    directions and both components, [B]."""
    d_rows = displacement[:, 1:] - displacement[:, :-1]
    d_cols = displacement[:, :, 1:] - displacement[:, :, :-1]
    return (jnp.sum(d_rows ** 2, axis=(1, 2, 3)) / (d_rows.shape[1] * d_rows.shape[2])
            + jnp.sum(d_cols ** 2, axis=(1, 2, 3)) / (d_cols.shape[1] * d_cols.shape[2]))
