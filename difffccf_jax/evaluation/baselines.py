"""Classical fusion rules to compare the network against.

Each rule takes A, the grey anatomical image [H, W] or [H, W, 1], and B, the colour functional
image [H, W, 3] RGB, both on 0..255 (uint8 or float), and returns the fused RGB image
[H, W, 3] uint8, rounded and saturated as a PNG stores it.
"""

import numpy as np

from difffccf_jax import color
from difffccf_jax import pyramid


def _grey(a):
    """A as float64 [H, W]."""
    a = np.asarray(a, np.float64)
    return a[..., 0] if a.ndim == 3 else a


def average_fusion(a, b):
    """Per RGB channel mean of A (grey on all three channels) and B."""
    return color.to_uint8((_grey(a)[..., None] + np.asarray(b, np.float64)) / 2)


def maximum_fusion(a, b):
    """Per RGB channel maximum of A (grey on all three channels) and B."""
    return color.to_uint8(np.maximum(_grey(a)[..., None], np.asarray(b, np.float64)))


def _with_chroma_of_b(fused_y, b):
    """RGB image whose luma is `fused_y` [H, W] and whose Cr, Cb are B's."""
    ycrcb = color.rgb_to_ycrcb(np.asarray(b, np.float64))
    return color.to_uint8(color.ycrcb_to_rgb(
        np.concatenate([fused_y[..., None], ycrcb[..., 1:]], axis=-1)))


def _luma(b):
    """Y of B as float64 [H, W] (unrounded)."""
    return color.rgb_to_grey(np.asarray(b, np.float64))[..., 0]


def ycrcb_maximum_luma(a, b):
    """The fused Y [H, W] of ycrcb_maximum_fusion: max(A, Y of B), before the RGB conversion."""
    return np.maximum(_grey(a), _luma(b))


def ycrcb_weighted_luma(a, b, weight=0.5):
    """The fused Y [H, W] of ycrcb_weighted_fusion: weight A + (1 - weight) (Y of B)."""
    return weight * _grey(a) + (1 - weight) * _luma(b)


def a_luminance_luma(a, b):
    """The fused Y [H, W] of a_luminance_fusion: A itself (B's luma is ignored)."""
    del b
    return _grey(a)


def laplacian_luma(a, b, levels=pyramid.LEVELS):
    """The fused Y [H, W] of laplacian_fusion: the Laplacian pyramids of A and of B's Y fused
    per detail level by the larger magnitude (A's on a tie), at the base by the larger value."""
    pyramid_a = pyramid.laplacian_pyramid(_grey(a), levels)
    pyramid_b = pyramid.laplacian_pyramid(_luma(b), levels)
    details = [np.where(np.abs(detail_b) > np.abs(detail_a), detail_b, detail_a)
               for detail_a, detail_b in zip(pyramid_a[:-1], pyramid_b[:-1])]
    return pyramid.reconstruct(details + [np.maximum(pyramid_a[-1], pyramid_b[-1])])


def max_low_a_detail_luma(a, b, levels=pyramid.LEVELS):
    """The fused Y [H, W] of max_low_a_detail_fusion: the low frequencies of max(A, Y of B)
    plus A's high frequencies (A minus its low frequencies), the bands of pyramid.low_pass."""
    a = _grey(a)
    return pyramid.low_pass(ycrcb_maximum_luma(a, b), levels) + pyramid.detail(a, levels)


def ycrcb_maximum_fusion(a, b):
    """Colour-preserving rule: Y = max(A, Y of B), Cr and Cb from B."""
    return _with_chroma_of_b(ycrcb_maximum_luma(a, b), b)


def ycrcb_weighted_fusion(a, b, weight=0.5):
    """Colour-preserving rule: Y = weight A + (1 - weight) (Y of B), Cr and Cb from B."""
    return _with_chroma_of_b(ycrcb_weighted_luma(a, b, weight), b)


def a_luminance_fusion(a, b):
    """A's luminance with B's chroma: Y = A, Cr and Cb from B. Not a fusion rule but the
    degenerate solution of copying A (and B's colour): metrics that reward agreement with A, or
    colour fidelity to B, are won by it without selecting anything from B's luma."""
    return _with_chroma_of_b(a_luminance_luma(a, b), b)


def laplacian_fusion(a, b):
    """Multi-scale rule: Y from the Laplacian-pyramid fusion of A and Y of B (larger detail per
    level, larger base), Cr and Cb from B."""
    return _with_chroma_of_b(laplacian_luma(a, b), b)


def max_low_a_detail_fusion(a, b):
    """Multi-scale rule: Y = the maximum rule's low frequencies plus A's details, Cr and Cb
    from B: B's bright uptake without losing the anatomy's structure inside it."""
    return _with_chroma_of_b(max_low_a_detail_luma(a, b), b)


BASELINES = {
    "average": average_fusion,
    "maximum": maximum_fusion,
    "ycrcb-average": ycrcb_weighted_fusion,
    "ycrcb-maximum": ycrcb_maximum_fusion,
    "a-luminance": a_luminance_fusion,
    "laplacian": laplacian_fusion,
    "max-low-a-detail": max_low_a_detail_fusion,
}

# The fused Y [H, W] float64 of the rules that fuse in YCrCb (Cr and Cb from B), before the
# conversion to RGB and its rounding: what a Y-channel comparison of the rules should use.
LUMA_RULES = {
    "ycrcb-average": ycrcb_weighted_luma,
    "ycrcb-maximum": ycrcb_maximum_luma,
    "a-luminance": a_luminance_luma,
    "laplacian": laplacian_luma,
    "max-low-a-detail": max_low_a_detail_luma,
}
