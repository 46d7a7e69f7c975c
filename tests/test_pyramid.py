"""The Laplacian pyramid of the multi-scale fusion rules: exact reconstruction, known bands."""

import numpy as np
import pytest

from difffccf_jax import pyramid


def _checkerboard(shape, mean, amplitude):
    rows, cols = np.indices(shape)
    return mean + amplitude * np.where((rows + cols) % 2 == 0, 1.0, -1.0)


@pytest.mark.parametrize("shape", [(37, 50), (64, 64), (5, 3)])
def test_pyramid_reconstructs_the_image(shape):
    image = np.random.default_rng(0).uniform(0, 255, shape)
    levels = pyramid.laplacian_pyramid(image)
    assert len(levels) == pyramid.LEVELS + 1
    expected_shape = shape
    for detail in levels[:-1]:
        assert detail.shape == expected_shape
        expected_shape = tuple((side + 1) // 2 for side in expected_shape)
    assert levels[-1].shape == expected_shape
    np.testing.assert_allclose(pyramid.reconstruct(levels), image, rtol=0, atol=1e-10)
    assert np.any(np.abs(levels[0]) > 1)  # a real decomposition, not all in the base


def test_constant_image_is_all_base():
    levels = pyramid.laplacian_pyramid(np.full((20, 13), 77.0))
    for detail in levels[:-1]:
        np.testing.assert_allclose(detail, 0.0, atol=1e-12)
    np.testing.assert_allclose(levels[-1], 77.0, rtol=1e-15)


@pytest.mark.parametrize("shape", [(16, 16), (15, 22)])
def test_checkerboard_is_all_finest_detail(shape):
    """The binomial kernel removes the period-2 pattern exactly (its response there is
    (1 - 4 + 6 - 4 + 1) / 16 = 0), also at mirrored borders: the pattern is all in level 0 and
    the low frequencies are its mean."""
    image = _checkerboard(shape, mean=100.0, amplitude=30.0)
    levels = pyramid.laplacian_pyramid(image)
    np.testing.assert_allclose(levels[0], image - 100.0, atol=1e-12)
    np.testing.assert_allclose(pyramid.low_pass(image), 100.0, atol=1e-12)


def _scipy_blur(image):
    """The blur with scipy's own mirror-boundary correlation, an independent oracle."""
    from scipy import ndimage
    for axis in (0, 1):
        image = ndimage.correlate1d(image, np.array(pyramid.BINOMIAL), axis=axis, mode="mirror")
    return image


@pytest.mark.parametrize("shape", [(37, 50), (5, 3), (4, 4), (3, 7)])
def test_blur_equals_scipy_mirror_correlation(shape):
    image = np.random.default_rng(1).uniform(0, 255, shape)
    np.testing.assert_allclose(pyramid.blur(image), _scipy_blur(image), rtol=0, atol=1e-10)


def test_jax_bands_equal_numpy_bands_per_trailing_image():
    """The sampler's detail band (JAX, images stacked on a trailing axis) is the evaluation's
    (NumPy, one image at a time)."""
    import jax.numpy as jnp
    images = np.random.default_rng(2).uniform(-1, 1, (24, 40, 3))
    detail = np.asarray(pyramid.detail(jnp.asarray(images, jnp.float32)))
    for index in range(images.shape[-1]):
        np.testing.assert_allclose(detail[..., index], pyramid.detail(images[..., index]),
                                   rtol=0, atol=2e-6)
    assert np.abs(detail).max() > 0.1
