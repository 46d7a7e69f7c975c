"""Colour at the data edges: RGB <-> YCrCb, the JET and hot colour maps, the [-1, 1] scaling.

YCrCb is OpenCV's COLOR_RGB2YCrCb (ITU-R BT.601 full range) on 0..255 values, channels in the
order Y, Cr, Cb:

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = (R - Y) * 0.713 + 128            R = Y + 1.403 (Cr - 128)
    Cb = (B - Y) * 0.564 + 128            G = Y - 0.714 (Cr - 128) - 0.344 (Cb - 128)
                                          B = Y + 1.773 (Cb - 128)

Every function works on arrays with channels on the last axis and takes `xp`, the array module:
NumPy by default (file input and output), `jax.numpy` inside jit. Each also exists with a `jnp_`
prefix (`jnp_rgb_to_ycrcb(x)` is `rgb_to_ycrcb(x, xp=jax.numpy)`); both use the same coefficient
tables below. The `_uint8` variants round half to even and saturate like OpenCV's
`saturate_cast` (OpenCV's own uint8 path is fixed point: the two agree within one level); the
`_opencv8` variants are OpenCV's 8-bit fixed-point routines themselves, integer for integer, the
conversions the published code applies to its 8-bit images.

Colour maps turn a grey image of 0..255 levels into RGB through a 256-entry lookup table built
the way OpenCV's applyColorMap builds it (see `colormap_lut`), so 'jet' gives COLORMAP_JET.
"""

import functools

import numpy as np

LUMA = (0.299, 0.587, 0.114)  # Y from R, G, B
CHROMA_GAINS = (0.713, 0.564)  # Cr from R - Y, Cb from B - Y
CHROMA_OFFSET = 128.0
# R, G, B from (Cr - 128, Cb - 128); OpenCV's published inverse, not the exact matrix inverse.
INVERSE_CHROMA = ((1.403, 0.0), (-0.714, -0.344), (0.0, 1.773))
# The pixel (row, column) whose colour is B's background: the reference of the published region
# rules and of the functional region the colour metrics use (clipped to smaller images).
BACKGROUND_PIXEL = (0, 5)


def pixel_in_image(pixel, height, width):
    """(row, column) of `pixel` in a height x width image: the last row or column of smaller
    images."""
    return min(pixel[0], height - 1), min(pixel[1], width - 1)


def _forward_matrix():
    """[3, 3] matrix M with (Y, Cr, Cb) = M @ (R, G, B) + (0, 128, 128)."""
    luma = np.array(LUMA)
    cr = CHROMA_GAINS[0] * (np.eye(3)[0] - luma)
    cb = CHROMA_GAINS[1] * (np.eye(3)[2] - luma)
    return np.stack([luma, cr, cb])


def _inverse_matrix():
    """[3, 3] matrix N with (R, G, B) = N @ (Y, Cr - 128, Cb - 128)."""
    return np.concatenate([np.ones((3, 1)), np.array(INVERSE_CHROMA)], axis=1)


RGB_TO_YCRCB = _forward_matrix()
YCRCB_TO_RGB = _inverse_matrix()
CHROMA_OFFSETS = np.array([0.0, CHROMA_OFFSET, CHROMA_OFFSET])

# OpenCV's 8-bit YCrCb conversions (modules/imgproc color_yuv): the coefficients above as
# round(c * 2^14), each sum descaled by a rounding right shift of 14 bits.
FIXED_SHIFT = 14
FIXED_LUMA = (4899, 9617, 1868)  # R2Y, G2Y, B2Y
FIXED_CHROMA_GAINS = (11682, 9241)  # YCRI, YCBI
FIXED_INVERSE_CHROMA = ((22987, 0), (-11698, -5636), (0, 29049))  # CR2RI, CR2GI / CB2GI, CB2BI

# How 8-bit RGB becomes YCrCb levels and fused levels become 8-bit RGB: the float formulas
# (unrounded YCrCb; RGB rounded half to even), or OpenCV's 8-bit routines, as published.
CONVERSION_FLOAT = "float"
CONVERSION_OPENCV8 = "opencv8"
CONVERSIONS = (CONVERSION_FLOAT, CONVERSION_OPENCV8)

# Piecewise-linear colour maps: per channel R, G, B the knots (position in 0..1, value in 0..1).
# JET is MATLAB's / GNU Octave's jet, the base map of OpenCV's COLORMAP_JET.
JET_KNOTS = (
    ((0.0, 0.0), (0.375, 0.0), (0.625, 1.0), (0.875, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.625, 1.0), (0.875, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.125, 1.0), (0.375, 1.0), (0.625, 0.0), (1.0, 0.0)),
)
# Black - red - yellow - white, breaking at 3/8 and 3/4 like GNU Octave's hot.
HOT_KNOTS = (
    ((0.0, 0.0), (0.375, 1.0), (1.0, 1.0)),
    ((0.0, 0.0), (0.375, 0.0), (0.75, 1.0), (1.0, 1.0)),
    ((0.0, 0.0), (0.75, 0.0), (1.0, 1.0)),
)
COLORMAPS = {"jet": JET_KNOTS, "hot": HOT_KNOTS}


def _float_dtype(x, xp):
    """x's dtype when it is floating point, else float32."""
    return x.dtype if xp.issubdtype(x.dtype, xp.floating) else xp.float32


def _affine(x, matrix, offsets_before, offsets_after, xp):
    """matrix @ (x - offsets_before) + offsets_after over the last axis, in x's float dtype.

    Written as products and sums rather than a matmul, so accelerators do not drop to
    reduced-precision matmul units. NumPy adds each output channel's three products in order,
    the values of the broadcast sum without its [..., 3, 3] temporary (4x faster on a 64 px
    image, which `difffccf fuse` converts per pair on the CPU); under jit the broadcast sum is
    one fused reduction.
    """
    x = xp.asarray(x)
    dtype = _float_dtype(x, xp)
    x = x.astype(dtype) - xp.asarray(offsets_before, dtype)
    matrix, offsets_after = xp.asarray(matrix, dtype), xp.asarray(offsets_after, dtype)
    if xp is np:
        channels = [x[..., 0] * row[0] + x[..., 1] * row[1] + x[..., 2] * row[2]
                    for row in matrix]
        return np.stack(channels, axis=-1) + offsets_after
    return (x[..., None, :] * matrix).sum(axis=-1) + offsets_after


def rgb_to_ycrcb(rgb, xp=np):
    """[..., 3] RGB on 0..255 -> [..., 3] (Y, Cr, Cb) on 0..255, float (unrounded)."""
    return _affine(rgb, RGB_TO_YCRCB, np.zeros(3), CHROMA_OFFSETS, xp)


def ycrcb_to_rgb(ycrcb, xp=np):
    """[..., 3] (Y, Cr, Cb) on 0..255 -> [..., 3] RGB on 0..255, float (unrounded, unclipped)."""
    return _affine(ycrcb, YCRCB_TO_RGB, CHROMA_OFFSETS, np.zeros(3), xp)


def rgb_to_grey(rgb, xp=np):
    """[..., 3] RGB -> [..., 1] grey (the luma Y, as OpenCV's RGB2GRAY), float (unrounded)."""
    return rgb_to_ycrcb(rgb, xp=xp)[..., :1]


def to_uint8(x, xp=np):
    """Rounds half to even and saturates to 0..255 (OpenCV's saturate_cast<uchar>)."""
    return xp.clip(xp.rint(x), 0, 255).astype(xp.uint8)


def rgb_to_ycrcb_uint8(rgb, xp=np):
    """uint8 RGB -> uint8 YCrCb, as cv2.cvtColor(rgb, COLOR_RGB2YCrCb) (within one level)."""
    return to_uint8(rgb_to_ycrcb(xp.asarray(rgb).astype(xp.float32), xp=xp), xp=xp)


def ycrcb_to_rgb_uint8(ycrcb, xp=np):
    """uint8 (or 0..255 float) YCrCb -> uint8 RGB, as cv2.cvtColor(x, COLOR_YCrCb2RGB)."""
    return to_uint8(ycrcb_to_rgb(xp.asarray(ycrcb).astype(xp.float32), xp=xp), xp=xp)


def _descale(x, xp):
    """OpenCV's CV_DESCALE(x, 14) of int32 x: (x + 2^13) >> 14 (an arithmetic shift, so negative
    values round towards -infinity)."""
    return xp.right_shift(x + (1 << (FIXED_SHIFT - 1)), FIXED_SHIFT)


def _saturate(x, xp):
    return xp.clip(x, 0, 255).astype(xp.uint8)


def rgb_to_ycrcb_opencv8(rgb, xp=np):
    """uint8 RGB [..., 3] -> uint8 YCrCb, exactly cv2.cvtColor(rgb, COLOR_RGB2YCrCb): Y from
    the fixed-point luma, rounded; Cr and Cb from the ROUNDED Y (so up to 0.85 of a level from
    the float formula)."""
    r, g, b = (xp.asarray(rgb)[..., i].astype(xp.int32) for i in range(3))
    y = _descale(FIXED_LUMA[0] * r + FIXED_LUMA[1] * g + FIXED_LUMA[2] * b, xp)
    offset = int(CHROMA_OFFSET) << FIXED_SHIFT
    cr = _descale((r - y) * FIXED_CHROMA_GAINS[0] + offset, xp)
    cb = _descale((b - y) * FIXED_CHROMA_GAINS[1] + offset, xp)
    return _saturate(xp.stack([y, cr, cb], axis=-1), xp)


def ycrcb_to_rgb_opencv8(ycrcb, xp=np):
    """uint8 YCrCb [..., 3] -> uint8 RGB, exactly cv2.cvtColor(ycrcb, COLOR_YCrCb2RGB)."""
    y, cr, cb = (xp.asarray(ycrcb)[..., i].astype(xp.int32) for i in range(3))
    cr, cb = cr - int(CHROMA_OFFSET), cb - int(CHROMA_OFFSET)
    rgb = [y + _descale(cr_gain * cr + cb_gain * cb, xp)
           for cr_gain, cb_gain in FIXED_INVERSE_CHROMA]
    return _saturate(xp.stack(rgb, axis=-1), xp)


def rgb_uint8_to_ycrcb_levels(rgb, conversion=CONVERSION_FLOAT, xp=np):
    """uint8 RGB [..., 3] -> float32 YCrCb on 0..255 by `conversion`: CONVERSION_FLOAT (the float
    formula, unrounded) or CONVERSION_OPENCV8 (OpenCV's 8-bit routine, whole levels)."""
    if conversion == CONVERSION_OPENCV8:
        return rgb_to_ycrcb_opencv8(rgb, xp=xp).astype(xp.float32)
    if conversion == CONVERSION_FLOAT:
        return rgb_to_ycrcb(xp.asarray(rgb).astype(xp.float32), xp=xp)
    raise ValueError(f"conversion: expected one of {CONVERSIONS}, got {conversion!r}")


def ycrcb_levels_to_rgb_uint8(levels, conversion=CONVERSION_FLOAT, xp=np):
    """YCrCb whole levels 0..255 [..., 3] -> uint8 RGB by `conversion` (CONVERSION_FLOAT:
    `ycrcb_to_rgb_uint8`; CONVERSION_OPENCV8: OpenCV's 8-bit routine)."""
    if conversion == CONVERSION_OPENCV8:
        return ycrcb_to_rgb_opencv8(xp.asarray(levels).astype(xp.uint8), xp=xp)
    if conversion == CONVERSION_FLOAT:
        return ycrcb_to_rgb_uint8(levels, xp=xp)
    raise ValueError(f"conversion: expected one of {CONVERSIONS}, got {conversion!r}")


def to_unit(x, xp=np):
    """0..255 values -> [-1, 1] (x / 127.5 - 1), the scale the network sees."""
    x = xp.asarray(x)
    return x.astype(_float_dtype(x, xp)) / 127.5 - 1.0


def unit_to_levels(x, xp=np):
    """[-1, 1] -> 0..255 levels, unrounded: the inverse of `to_unit`."""
    return (xp.asarray(x) + 1.0) * 127.5


def from_unit(x, xp=np, truncate=False):
    """[-1, 1] -> 0..255 levels, rounded half to even (or with `truncate`, rounded down, as the
    published code's cast to uint8 does) and clipped; stays floating point."""
    x = xp.asarray(x)
    levels = (xp.floor if truncate else xp.rint)(unit_to_levels(x, xp))
    return xp.clip(levels, 0.0, 255.0).astype(_float_dtype(x, xp))


def black_ycrcb_unit():
    """The YCrCb of RGB black in [-1, 1], float32 [3]: the background of every B image."""
    return to_unit(rgb_to_ycrcb(np.zeros((1, 3))))[0].astype(np.float32)


def _piecewise_linear(knots, positions):
    """Values of the piecewise-linear curve through `knots` at `positions` (float64)."""
    xs, ys = zip(*knots)
    return np.interp(positions, xs, ys)


@functools.lru_cache(maxsize=None)
def _lut(name):
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; expected one of {sorted(COLORMAPS)}")
    f32 = np.float32
    # OpenCV tabulates the base map in float32 at i / 255 (its linspace) ...
    grid = f32(0) + np.arange(256, dtype=f32) * (f32(1) / f32(255))
    base = np.stack([_piecewise_linear(channel, np.arange(256) / 255.0)
                     for channel in COLORMAPS[name]], axis=1).astype(f32)
    # ... resamples it onto the same grid with its float32 interp1 (entry i from the segment
    # [i - 1, i]), which moves some half-level values across the rounding boundary ...
    step = grid[1:] - grid[:-1]
    resampled = base.copy()
    resampled[1:] = base[:-1] + (step[:, None] * (base[1:] - base[:-1])) / step[:, None]
    # ... and converts with convertTo(CV_8U, 255): float32 product, rounded half to even.
    lut = np.rint(resampled * f32(255)).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def colormap_lut(name="jet"):
    """[256, 3] uint8 RGB lookup table of colour map `name` ('jet' or 'hot').

    Built step by step as OpenCV's applyColorMap builds its tables (float32 base map, float32
    resampling, rounding half to even), so 'jet' reproduces COLORMAP_JET (OpenCV returns BGR;
    this table is RGB). Every sloped JET entry falls on an exact half level, which is why
    OpenCV's float32 steps are followed rather than rounding the curve directly.
    """
    return _lut(name)


def apply_colormap(grey, name="jet", xp=np):
    """[..., 1] grey levels (uint8, or 0..255 floats, rounded) -> [..., 3] uint8 RGB."""
    grey = xp.asarray(grey)
    levels = grey[..., 0]
    if not xp.issubdtype(levels.dtype, xp.integer):
        levels = xp.clip(xp.rint(levels), 0, 255)
    return xp.take(xp.asarray(colormap_lut(name)), levels.astype(xp.int32), axis=0)


def _jnp_version(function):
    """`function` with xp=jax.numpy (imported on first call, so importing this module is cheap)."""

    @functools.wraps(function)
    def jnp_function(*args, **kwargs):
        import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
        return function(*args, xp=jnp, **kwargs)

    jnp_function.__name__ = jnp_function.__qualname__ = "jnp_" + function.__name__
    return jnp_function


jnp_rgb_to_ycrcb = _jnp_version(rgb_to_ycrcb)
jnp_ycrcb_to_rgb = _jnp_version(ycrcb_to_rgb)
jnp_rgb_to_grey = _jnp_version(rgb_to_grey)
jnp_to_uint8 = _jnp_version(to_uint8)
jnp_rgb_to_ycrcb_uint8 = _jnp_version(rgb_to_ycrcb_uint8)
jnp_ycrcb_to_rgb_uint8 = _jnp_version(ycrcb_to_rgb_uint8)
jnp_rgb_to_ycrcb_opencv8 = _jnp_version(rgb_to_ycrcb_opencv8)
jnp_ycrcb_to_rgb_opencv8 = _jnp_version(ycrcb_to_rgb_opencv8)
jnp_rgb_uint8_to_ycrcb_levels = _jnp_version(rgb_uint8_to_ycrcb_levels)
jnp_ycrcb_levels_to_rgb_uint8 = _jnp_version(ycrcb_levels_to_rgb_uint8)
jnp_to_unit = _jnp_version(to_unit)
jnp_from_unit = _jnp_version(from_unit)
jnp_apply_colormap = _jnp_version(apply_colormap)
