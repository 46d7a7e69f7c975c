"""Laplacian pyramid of a grey image (Burt and Adelson), for the multi-scale fusion rules.

Blurring is the separable 5-tap binomial kernel [1, 4, 6, 4, 1] / 16 with mirror boundaries
(d c b | a b c d, which keeps a period-2 pattern periodic at the border); `reduce` blurs and keeps
every second row and column, `expand` repeats every row and column twice (cropped to the finer
level's size, so any H x W works) and blurs. Level k of the pyramid is G_k - expand(G_k+1),
where G_0 is the image and G_k+1 = reduce(G_k); the last entry is the coarsest G, the base.
Reconstruction adds the levels back from the base, which gives the image back up to float64
round-off whatever `expand` does.
"""

import numpy as np
from scipy import ndimage

BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
LEVELS = 4  # detail levels of the fusion rules: the base is at 1/16 of the image's size


def blur(image):
    """The image [H, W] float64 blurred by BINOMIAL along both axes (mirror boundaries)."""
    for axis in (0, 1):
        image = ndimage.correlate1d(image, BINOMIAL, axis=axis, mode="mirror")
    return image


def reduce(image):
    """The next coarser Gaussian level: blurred, every second row and column kept."""
    return blur(image)[::2, ::2]


def expand(image, shape):
    """A coarser level brought to `shape` (H, W): rows and columns repeated twice, cropped,
    blurred. A constant image stays constant."""
    repeated = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    return blur(repeated[:shape[0], :shape[1]])


def laplacian_pyramid(image, levels=LEVELS):
    """[detail_0, ..., detail_{levels-1}, base] of a grey image [H, W] (float64): the details
    from the finest to the coarsest, then the coarsest Gaussian level."""
    current = np.asarray(image, np.float64)
    pyramid = []
    for _ in range(levels):
        coarser = reduce(current)
        pyramid.append(current - expand(coarser, current.shape))
        current = coarser
    return pyramid + [current]


def reconstruct(pyramid):
    """The image [H, W] of a Laplacian pyramid (the inverse of `laplacian_pyramid`)."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + expand(image, detail.shape)
    return image


def low_pass(image, levels=LEVELS):
    """The image's low frequencies: its pyramid reconstructed from the base alone (every detail
    level zero). The image minus this is its high-pass."""
    pyramid = laplacian_pyramid(image, levels)
    return reconstruct([np.zeros_like(detail) for detail in pyramid[:-1]] + [pyramid[-1]])
