"""Colour conversions against OpenCV's published formulas, and the JET / hot colour maps."""

import jax
import numpy as np
import pytest

from difffccf_jax import color

SHIFT = 14  # OpenCV's yuv_shift: 8-bit conversions in 14-bit fixed point
HALF = 1 << (SHIFT - 1)


def descale(x):
    """OpenCV's CV_DESCALE(x, 14): rounding right shift."""
    return (x + HALF) >> SHIFT


def saturate(x):
    return np.clip(x, 0, 255)


def opencv_rgb_to_ycrcb_fixed(r, g, b):
    """OpenCV's integer RGB2YCrCb: coefficients round(c * 2^14) of 0.299, 0.587, 0.114, 0.713,
    0.564 and delta = 128 << 14."""
    y = descale(r * 4899 + g * 9617 + b * 1868)
    cr = descale((r - y) * 11682 + (128 << SHIFT))
    cb = descale((b - y) * 9241 + (128 << SHIFT))
    return saturate(y), saturate(cr), saturate(cb)


def opencv_ycrcb_to_rgb_fixed(y, cr, cb):
    """OpenCV's integer YCrCb2RGB: round(c * 2^14) of 1.403, -0.714, -0.344, 1.773."""
    r = y + descale((cr - 128) * 22987)
    g = y + descale((cr - 128) * -11698 + (cb - 128) * -5636)
    b = y + descale((cb - 128) * 29049)
    return saturate(r), saturate(g), saturate(b)


def published_rgb_to_ycrcb(r, g, b):
    """The documented float formulas (float64), rounded and saturated."""
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr = (r - y) * 0.713 + 128
    cb = (b - y) * 0.564 + 128
    return tuple(saturate(np.rint(v)) for v in (y, cr, cb))


def published_ycrcb_to_rgb(y, cr, cb):
    r = y + 1.403 * (cr - 128)
    g = y - 0.714 * (cr - 128) - 0.344 * (cb - 128)
    b = y + 1.773 * (cb - 128)
    return tuple(saturate(np.rint(v)) for v in (r, g, b))


GRID = np.arange(0, 256, 3)  # 0, 3, ..., 255: 86 values per channel, both ends included


def grid_triples():
    """[86^3, 3] int64: every triple of grid values."""
    return np.stack(np.meshgrid(GRID, GRID, GRID, indexing="ij"), axis=-1).reshape(-1, 3)


def test_uint8_conversions_agree_with_opencv_on_a_full_grid():
    """Every triple of the grid, both directions: within one level of OpenCV's fixed-point code
    and of the documented float formulas."""
    triples = grid_triples()
    as_float = triples.T.astype(np.float64)
    ours = color.rgb_to_ycrcb_uint8(triples.astype(np.uint8)).astype(np.int64)
    fixed = np.stack(opencv_rgb_to_ycrcb_fixed(*triples.T), axis=1)
    published = np.stack(published_rgb_to_ycrcb(*as_float), axis=1)
    assert np.abs(ours - fixed).max() <= 1
    assert np.abs(ours - published).max() <= 1
    # only float32-versus-float64 near-ties may differ from the float64 formula
    assert np.all(ours == published, axis=1).mean() >= 0.999
    ours = color.ycrcb_to_rgb_uint8(triples.astype(np.uint8)).astype(np.int64)
    fixed = np.stack(opencv_ycrcb_to_rgb_fixed(*triples.T), axis=1)
    published = np.stack(published_ycrcb_to_rgb(*as_float), axis=1)
    assert np.abs(ours - fixed).max() <= 1
    assert np.abs(ours - published).max() <= 1


def test_numpy_conversions_equal_the_broadcast_product_sum_bit_for_bit():
    """NumPy's channel-by-channel sums give exactly matrix @ x as a broadcast product and sum
    (checked once on all 2**24 uint8 colours; here on a grid and on random floats)."""
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    rng = np.random.default_rng(0)
    for x in (grid.astype(np.float32), rng.uniform(-20, 280, (64, 48, 3)).astype(np.float32),
              rng.uniform(-20, 280, (64, 48, 3))):
        for convert, matrix, before, after in (
                (color.rgb_to_ycrcb, color.RGB_TO_YCRCB, 0.0, color.CHROMA_OFFSETS),
                (color.ycrcb_to_rgb, color.YCRCB_TO_RGB, color.CHROMA_OFFSETS, 0.0)):
            shifted = x - np.asarray(before, x.dtype)
            expected = ((shifted[..., None, :] * np.asarray(matrix, x.dtype)).sum(axis=-1)
                        + np.asarray(after, x.dtype))
            result = convert(x)
            assert result.dtype == x.dtype
            np.testing.assert_array_equal(result, expected)


def test_known_opencv_values():
    """Pure colours as cv2.cvtColor(COLOR_RGB2YCrCb) gives them."""
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]], np.uint8)
    expected = [[76, 255, 85], [150, 21, 44], [29, 107, 255], [255, 128, 128], [0, 128, 128]]
    np.testing.assert_array_equal(color.rgb_to_ycrcb_uint8(rgb), expected)


def test_float_round_trip_is_within_the_published_coefficients_mismatch():
    """OpenCV's inverse coefficients are not the exact inverse (1.403 * 0.713 = 1.000339):
    the float round trip errs by at most ~0.12 levels, and by 0 on greys."""
    rgb = np.random.default_rng(0).uniform(0, 255, (100000, 3))
    back = color.ycrcb_to_rgb(color.rgb_to_ycrcb(rgb))
    assert np.abs(back - rgb).max() < 0.15
    grey = np.repeat(np.linspace(0, 255, 11)[:, None], 3, axis=1)
    np.testing.assert_allclose(color.ycrcb_to_rgb(color.rgb_to_ycrcb(grey)), grey, atol=1e-9)


def test_uint8_round_trip_within_two_levels():
    """Rounding Y, Cr and Cb to integers moves RGB by at most 0.5 + 1.773 * 0.5 + rounding."""
    rgb = grid_triples()
    back = color.ycrcb_to_rgb_uint8(color.rgb_to_ycrcb_uint8(rgb.astype(np.uint8)))
    assert np.abs(back.astype(int) - rgb).max() <= 2


def test_grey_is_luma():
    rgb = np.array([[10.0, 200.0, 30.0]])
    np.testing.assert_allclose(color.rgb_to_grey(rgb), [[0.299 * 10 + 0.587 * 200 + 0.114 * 30]])


def test_unit_scaling_round_trips_every_level():
    levels = np.arange(256, dtype=np.uint8)
    unit = color.to_unit(levels)
    assert unit.dtype == np.float32 and unit[0] == -1.0 and unit[255] == 1.0
    np.testing.assert_array_equal(color.from_unit(unit), levels.astype(np.float32))
    np.testing.assert_array_equal(color.from_unit(np.array([-3.0, 0.0, 3.0])), [0.0, 128.0, 255.0])


def test_jnp_versions_match_numpy_inside_jit():
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (64, 3)).astype(np.uint8)
    rgb = rng.uniform(0, 255, (64, 3)).astype(np.float32)

    @jax.jit
    def convert(rgb8, rgb):
        return dict(ycrcb=color.jnp_rgb_to_ycrcb(rgb), back=color.jnp_ycrcb_to_rgb(rgb),
                    ycrcb8=color.jnp_rgb_to_ycrcb_uint8(rgb8),
                    rgb8=color.jnp_ycrcb_to_rgb_uint8(rgb8),
                    unit=color.jnp_to_unit(rgb8), levels=color.jnp_from_unit(rgb / 127.5 - 1),
                    jet=color.jnp_apply_colormap(rgb8[:, :1], "jet"))

    out = jax.device_get(convert(rgb8, rgb))
    np.testing.assert_allclose(out["ycrcb"], color.rgb_to_ycrcb(rgb), atol=1e-3)
    np.testing.assert_allclose(out["back"], color.ycrcb_to_rgb(rgb), atol=1e-3)
    np.testing.assert_array_equal(out["ycrcb8"], color.rgb_to_ycrcb_uint8(rgb8))
    np.testing.assert_array_equal(out["rgb8"], color.ycrcb_to_rgb_uint8(rgb8))
    np.testing.assert_allclose(out["unit"], color.to_unit(rgb8), atol=1e-6)
    np.testing.assert_array_equal(out["levels"], np.clip(np.rint(rgb), 0, 255))
    np.testing.assert_array_equal(out["jet"], color.colormap_lut("jet")[rgb8[:, 0]])
    assert out["ycrcb8"].dtype == np.uint8 and out["unit"].dtype == np.float32


def jet_closed_form(levels):
    """MATLAB's jet on x = level / 255, scaled to 0..255 (float64, unrounded), RGB."""
    x = levels / 255.0
    curves = [np.minimum(4 * x - 1.5, 4.5 - 4 * x), np.minimum(4 * x - 0.5, 3.5 - 4 * x),
              np.minimum(4 * x + 0.5, 2.5 - 4 * x)]
    return 255.0 * np.clip(np.stack(curves, axis=1), 0.0, 1.0)


def test_jet_matches_opencv_colormap_jet():
    lut = color.colormap_lut("jet").astype(int)
    exact = jet_closed_form(np.arange(256))
    assert lut.shape == (256, 3)
    assert np.abs(lut - exact).max() <= 0.5 + 1e-9  # every entry is a rounding of the curve
    away_from_ties = np.abs(exact - np.floor(exact) - 0.5) > 0.01
    np.testing.assert_array_equal(lut[away_from_ties], np.rint(exact[away_from_ties]))
    # cv2.applyColorMap gives BGR (128, 0, 0) for 0 and (0, 0, 128) for 255; in RGB:
    np.testing.assert_array_equal(lut[0], [0, 0, 128])
    np.testing.assert_array_equal(lut[255], [128, 0, 0])
    # OpenCV's table climbs in steps of exactly 4 levels along each slope (128, 132, ...).
    np.testing.assert_array_equal(lut[:32, 2], 128 + 4 * np.arange(32))
    np.testing.assert_array_equal(lut[32:96, 2], 255)
    np.testing.assert_array_equal(lut[96:160, 1], 255)
    np.testing.assert_array_equal(lut[160:224, 0], 255)
    for channel, segment in ((0, slice(97, 159)), (1, slice(33, 95)), (2, slice(97, 159)),
                             (0, slice(225, 255)), (1, slice(161, 223))):
        assert set(np.abs(np.diff(lut[segment, channel]))) == {4}


def test_hot_runs_black_red_yellow_white():
    lut = color.colormap_lut("hot").astype(int)
    np.testing.assert_array_equal(lut[0], [0, 0, 0])
    np.testing.assert_array_equal(lut[255], [255, 255, 255])
    assert np.all(np.diff(lut, axis=0) >= 0)  # every channel non-decreasing
    assert lut[96, 0] == 255 and lut[96, 2] == 0  # red saturates at 3/8
    assert lut[192, 1] == 255 and lut[191, 2] == 0  # green at 3/4, where blue starts


def test_apply_colormap_maps_grey_images_through_the_table():
    grey = np.array([[[0], [128]], [[200], [255]]], np.uint8)
    rgb = color.apply_colormap(grey, "jet")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], color.colormap_lut("jet")[200])
    np.testing.assert_array_equal(color.apply_colormap(grey.astype(np.float32) + 0.3, "jet"), rgb)
    with pytest.raises(ValueError, match="unknown colour map 'viridis'"):
        color.colormap_lut("viridis")
