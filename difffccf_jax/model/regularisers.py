"""The displacement field's regularisers (docs/method.md section 5): the Jacobian determinant,
the folding penalty, the smoothness and the strain energy, [B] per field. Training's loss and
the sampler's refinement both weigh them; they look at the field alone, never at the images.

Fields u [B, H, W, 2] hold the shift in pixels along x (channel 0) and y (channel 1); see
`warping`.
"""

import jax.numpy as jnp


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


def strain_energy(displacement):
    """Mean over pixels of |sym grad u|^2 of linear elasticity (forward differences), [B]; see
    `refinement.registration_loss`."""
    along_x = displacement[:, :-1, 1:] - displacement[:, :-1, :-1]  # [B, H - 1, W - 1, 2]
    along_y = displacement[:, 1:, :-1] - displacement[:, :-1, :-1]
    return jnp.mean(along_x[..., 0] ** 2 + along_y[..., 1] ** 2
                    + 0.5 * (along_y[..., 0] + along_x[..., 1]) ** 2, axis=(1, 2))
