"""Warping and deformation regularisers against exact shifts, SciPy and analytic Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from difffccf_jax.model import registration

H, W = 12, 16
warp = jax.jit(registration.warp)  # one compile for every [2, H, W, 3] test below


@pytest.fixture(scope="module")
def image():
    return jnp.asarray(np.random.default_rng(0).uniform(size=(2, H, W, 3)), jnp.float32)


def constant_field(dx, dy, batch=2):
    return jnp.broadcast_to(jnp.array([dx, dy], jnp.float32), (batch, H, W, 2))


def test_zero_field_is_identity(image):
    np.testing.assert_array_equal(warp(image, constant_field(0.0, 0.0)), image)


def test_integer_shift_is_shifted_image_with_zero_padding(image):
    """u = (2, -1): output pixel (y, x) reads input (y - 1, x + 2); outside the image it is 0."""
    warped = np.asarray(warp(image, constant_field(2.0, -1.0)))
    expected = np.zeros_like(warped)
    expected[:, 1:, :W - 2] = np.asarray(image)[:, :H - 1, 2:]
    np.testing.assert_allclose(warped, expected, atol=1e-6)


def test_fill_is_what_comes_in_from_outside(image):
    """With a per-channel fill, the integer shift reads the fill outside the image and the
    image inside, exactly."""
    fill = jnp.array([-1.0, 0.25, 0.5])
    warped = np.asarray(jax.jit(registration.warp)(image, constant_field(2.0, -1.0), fill))
    expected = np.broadcast_to(np.asarray(fill), warped.shape).copy()
    expected[:, 1:, :W - 2] = np.asarray(image)[:, :H - 1, 2:]
    np.testing.assert_allclose(warped, expected, atol=1e-6)


def test_fractional_field_matches_scipy_bilinear(image):
    """Random sub-pixel field against scipy.ndimage.map_coordinates (order 1, zero outside)."""
    field = jnp.asarray(np.random.default_rng(1).uniform(-2.5, 2.5, (2, H, W, 2)), jnp.float32)
    warped = warp(image, field)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    img, u = np.asarray(image, np.float64), np.asarray(field, np.float64)
    for b in range(2):
        coords = [rows + u[b, ..., 1], cols + u[b, ..., 0]]
        for c in range(3):
            expected = ndimage.map_coordinates(img[b, ..., c], coords, order=1,
                                               mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(warped[b, ..., c], expected, atol=1e-5)


def test_warp_gradients(image):
    """d warp / d u_x at a pure horizontal shift of 0.3 px is I[y, x+1] - I[y, x] (finite,
    non-zero); d sum(warp) / d image holds the bilinear weights."""
    field = constant_field(0.3, 0.0)
    grad_field = jax.jit(jax.grad(lambda u: warp(image, u)[0, 5, 7, 1]))(field)
    assert np.all(np.isfinite(grad_field))
    expected = image[0, 5, 8, 1] - image[0, 5, 7, 1]
    assert float(grad_field[0, 5, 7, 0]) == pytest.approx(float(expected), rel=1e-4)
    # d/du_y at u_y = 0 takes the forward cell: I[y+1, x+0.3] - I[y, x+0.3].
    row_below = 0.7 * image[0, 6, 7, 1] + 0.3 * image[0, 6, 8, 1]
    row_here = 0.7 * image[0, 5, 7, 1] + 0.3 * image[0, 5, 8, 1]
    assert float(grad_field[0, 5, 7, 1]) == pytest.approx(float(row_below - row_here), rel=1e-4)
    grad_image = jax.jit(jax.grad(lambda img: jnp.sum(warp(img, field))))(image)
    assert np.all(np.isfinite(grad_image)) and float(jnp.sum(jnp.abs(grad_image))) > 0
    # Each source pixel gets the bilinear weights that sample it: 0.7 + 0.3 = 1, except the
    # first column, which no output reads as a right neighbour (0.7 only).
    np.testing.assert_allclose(grad_image[:, :, 1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(grad_image[:, :, 0], 0.7, atol=1e-6)


def affine_field(matrix, offset):
    """u(p) = (M - I) p + c for p = (x, y), [1, H, W, 2]."""
    rows, cols = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64),
                             indexing="ij")
    points = np.stack([cols, rows], axis=-1)
    u = points @ (np.asarray(matrix) - np.eye(2)).T + np.asarray(offset)
    return jnp.asarray(u[None], jnp.float32)


@pytest.mark.parametrize("matrix", [[[1.2, 0.3], [-0.1, 0.9]], [[0.5, 0.0], [0.0, 0.5]],
                                    [[-0.4, 0.2], [0.1, 1.0]]])
def test_jacobian_determinant_of_affine_map(matrix):
    field = affine_field(matrix, (1.5, -2.0))
    det = registration.jacobian_determinant(field)
    np.testing.assert_allclose(det, np.full((1, H, W), np.linalg.det(matrix)), atol=1e-4)
    # Folding is -det where the map reverses orientation, 0 otherwise.
    expected_folding = max(0.0, -np.linalg.det(matrix))
    assert float(registration.folding_penalty(field)[0]) == pytest.approx(expected_folding,
                                                                            abs=1e-4)


def test_smoothness_of_linear_field():
    """u_x = a x + b y, u_y = c x + d y: every forward difference is constant, so the penalty is
    a^2 + b^2 + c^2 + d^2; a constant field has none."""
    a, b, c, d = 0.2, -0.1, 0.05, 0.3
    field = affine_field([[1 + a, b], [c, 1 + d]], (0.0, 0.0))
    assert float(registration.smoothness(field)[0]) == pytest.approx(a * a + b * b + c * c + d * d,
                                                                     rel=1e-4)
    assert float(registration.smoothness(constant_field(1.0, -2.0))[0]) == 0.0
