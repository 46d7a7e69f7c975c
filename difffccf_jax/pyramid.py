"""Laplacian pyramid of grey images (Burt and Adelson): the multi-scale fusion rules' bands and
the detail band of the fused Y (`composition.clean_luma`).

Images are arrays [H, W, ...] of NumPy or JAX (each function works in the array's own
namespace, so evaluation stays NumPy and the sampler stays jittable); the bands are taken over
the first two axes, the trailing ones are independent images. Blurring is the separable 5-tap
binomial kernel [1, 4, 6, 4, 1] / 16 with mirror boundaries (d c b | a b c d, which keeps a
period-2 pattern periodic at the border); `reduce` blurs and keeps every second row and column,
`expand` repeats every row and column twice (cropped to the finer level's size, so any H x W
works) and blurs. Level k of the pyramid is G_k - expand(G_k+1), where G_0 is the image and
G_k+1 = reduce(G_k); the last entry is the coarsest G, the base. Reconstruction adds the levels
back from the base, which gives the image back up to round-off whatever `expand` does.
"""

import numpy as np

BINOMIAL = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
LEVELS = 4  # detail levels of the fusion rules: the base is at 1/16 of the image's size


def _namespace(image):
    return image.__array_namespace__()


def _blur_axis(image, axis):
    xp = _namespace(image)
    pad = [(0, 0)] * image.ndim
    pad[axis] = (2, 2)
    padded = xp.pad(image, pad, mode="reflect")
    size = image.shape[axis]
    taps = [xp.take(padded, xp.arange(shift, shift + size), axis=axis) for shift in range(5)]
    return sum(weight * tap for weight, tap in zip(BINOMIAL, taps))


def blur(image):
    """The image blurred by BINOMIAL along its first two axes (mirror boundaries)."""
    return _blur_axis(_blur_axis(image, 0), 1)


def reduce(image):
    """The next coarser Gaussian level: blurred, every second row and column kept."""
    return blur(image)[::2, ::2]


def expand(image, shape):
    """A coarser level brought to `shape` (H, W): rows and columns repeated twice, cropped,
    blurred. A constant image stays constant."""
    xp = _namespace(image)
    repeated = xp.repeat(xp.repeat(image, 2, axis=0), 2, axis=1)
    return blur(repeated[:shape[0], :shape[1]])


def laplacian_pyramid(image, levels=LEVELS):
    """[detail_0, ..., detail_{levels-1}, base] of a grey image [H, W, ...]: the details from
    the finest to the coarsest, then the coarsest Gaussian level. A NumPy image is taken as
    float64."""
    current = np.asarray(image, np.float64) if isinstance(image, (np.ndarray, list)) else image
    pyramid = []
    for _ in range(levels):
        coarser = reduce(current)
        pyramid.append(current - expand(coarser, current.shape))
        current = coarser
    return pyramid + [current]


def reconstruct(pyramid):
    """The image of a Laplacian pyramid (the inverse of `laplacian_pyramid`)."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = detail + expand(image, detail.shape)
    return image


def low_pass(image, levels=LEVELS):
    """The image's low frequencies: its pyramid reconstructed from the base alone (every detail
    level zero). The image minus this is its high-pass, `detail`."""
    pyramid = laplacian_pyramid(image, levels)
    xp = _namespace(pyramid[-1])
    return reconstruct([xp.zeros_like(detail) for detail in pyramid[:-1]] + [pyramid[-1]])


def detail(image, levels=LEVELS):
    """The image's high frequencies: the image minus its `low_pass`."""
    return image - low_pass(image, levels)
