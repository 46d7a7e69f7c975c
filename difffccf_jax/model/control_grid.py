"""A low-dimensional field: a grid of control points, interpolated bilinearly (corner-aligned) to
every pixel. The network's deformation head and the sampler's refinement both work on it, so
that a field has few degrees of freedom and stays smooth.
"""

import jax.numpy as jnp
import numpy as np


def interpolation_matrix(size, points):
    """[size, points] float32: linear interpolation from `points` >= 2 control points, the first
    on pixel 0 and the last on pixel size - 1 (corner-aligned), to every pixel."""
    position = np.arange(size) * (points - 1) / max(size - 1, 1)
    left = np.clip(np.floor(position).astype(int), 0, points - 2)
    weight = position - left
    matrix = np.zeros((size, points))
    matrix[np.arange(size), left] = 1.0 - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix.astype(np.float32)


def grid_to_field(control, height, width):
    """The field [B, height, width, C] bilinearly interpolated from control points
    [B, G_y, G_x, C] on a regular corner-aligned grid (exact for affine fields)."""
    rows = interpolation_matrix(height, control.shape[1])
    cols = interpolation_matrix(width, control.shape[2])
    return jnp.einsum("hg,bgkc,wk->bhwc", rows, control, cols)


def field_to_grid(field, points):
    """The control points [B, points, points, C] whose bilinear field (`grid_to_field`) is the
    least-squares fit of `field` [B, H, W, C]: a linear projection that reproduces constant and
    affine fields exactly."""
    rows = np.linalg.pinv(interpolation_matrix(field.shape[1], points)).astype(np.float32)
    cols = np.linalg.pinv(interpolation_matrix(field.shape[2], points)).astype(np.float32)
    return jnp.einsum("gh,bhwc,kw->bgkc", rows, field, cols)
