"""B's functional region: where the colour functional image shows its signal.

The region is defined once, from B alone, and used everywhere: the colour-fidelity metrics score
F against B inside it and against A's grey outside it (`evaluation.metrics`), and the sampler adds
B's detail band inside it where the fused Y keeps A (`composition.clean_luma`). It holds the
pixels whose colour differs from B's background colour, its colour at color.BACKGROUND_PIXEL (row
0, column 5, or the last column of narrower images), by at least DELTA_E in CIEDE2000: a clearly
visible signal. Images are NumPy or JAX arrays [..., H, W, 3] (each in its own namespace).
"""

from difffccf_jax import color
from difffccf_jax import colour_difference

DELTA_E = 20.0  # the CIEDE2000 difference from the background that counts as signal


def of_lab(lab_b):
    """The region, bool [..., H, W], of B given as CIELAB [..., H, W, 3]."""
    row, column = color.pixel_in_image(color.BACKGROUND_PIXEL, *lab_b.shape[-3:-1])
    background = lab_b[..., row:row + 1, column:column + 1, :]
    return colour_difference.ciede2000(lab_b, background) >= DELTA_E


def of_rgb(rgb_b):
    """The region, bool [..., H, W], of B given as sRGB [..., H, W, 3] on 0..255."""
    return of_lab(colour_difference.srgb_to_lab(rgb_b))
