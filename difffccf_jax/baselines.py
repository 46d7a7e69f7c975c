"""Classical fusion rules to compare the network against.

Each rule takes A, the grey anatomical image [H, W] or [H, W, 1], and B, the colour functional
image [H, W, 3] RGB, both on 0..255 (uint8 or float), and returns the fused RGB image
[H, W, 3] uint8, rounded and saturated as a PNG stores it.
"""

import numpy as np

from difffccf_jax import color


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


def ycrcb_maximum_fusion(a, b):
    """Colour-preserving rule: Y = max(A, Y of B), Cr and Cb from B."""
    y_b = color.rgb_to_grey(np.asarray(b, np.float64))[..., 0]
    return _with_chroma_of_b(np.maximum(_grey(a), y_b), b)


def ycrcb_weighted_fusion(a, b, weight=0.5):
    """Colour-preserving rule: Y = weight A + (1 - weight) (Y of B), Cr and Cb from B."""
    y_b = color.rgb_to_grey(np.asarray(b, np.float64))[..., 0]
    return _with_chroma_of_b(weight * _grey(a) + (1 - weight) * y_b, b)


BASELINES = {
    "average": average_fusion,
    "maximum": maximum_fusion,
    "ycrcb-average": ycrcb_weighted_fusion,
    "ycrcb-maximum": ycrcb_maximum_fusion,
}
