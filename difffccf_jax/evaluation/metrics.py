"""The standard image-fusion metrics, as defined in docs/metrics.md, on 8-bit grey images.

Every metric takes the fused image F and (where it compares) the sources A and B as 2-D float64
arrays [H, W] of rounded grey values on 0..255; `grey_image` makes such an array from a grey or
an RGB image. Two-source metrics are the sum of the F-versus-A and F-versus-B values, except CC
and MSE, which are means. A metric that is undefined for an input (a Pearson correlation with a
constant image, PSNR of a perfect fusion, Qabf of two all-black sources) returns None.
The two colour-fidelity metrics (COLOUR_METRICS) compare the colours of F instead: with B inside
B's functional region, with A's grey outside it.

FMI and Nabf are not implemented: they are not among the published metrics and their variants
in the field disagree.
"""

import functools

import numpy as np
from scipy import ndimage

from difffccf_jax import color
from difffccf_jax import colour_difference
from difffccf_jax import functional_region

PUBLISHED_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
# Mean CIEDE2000 difference of F from B inside B's functional region, and from A's grey outside
# it (lower is better).
COLOUR_METRICS = ("dE00-B", "dE00-A")
EXTRA_METRICS = ("AG", "PSNR", "CC", "MSE")
METRIC_NAMES = PUBLISHED_METRICS + COLOUR_METRICS + EXTRA_METRICS

# Sobel kernels of Qabf, applied as true (flipped) convolutions.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])

# Smallest height/width for which all four VIF scales keep at least one pixel (windows of
# 17, 9, 5, 3 taps, each coarser scale prefiltered 'valid' and subsampled by 2).
VIF_MIN_SIZE = 41
# SSIM's 7 x 7 window must fit.
SSIM_WINDOW = 7


def grey_image(image):
    """The rounded 8-bit grey version [H, W] float64 of a grey [H, W] / [H, W, 1] or an RGB
    [H, W, 3] image on 0..255 (uint8 or float): 0.299 R + 0.587 G + 0.114 B, then rounded."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] == 3:
        image = color.rgb_to_grey(image)[..., 0]
    elif image.ndim != 2:
        raise ValueError(f"expected a grey [H, W] or RGB [H, W, 3] image, got shape {image.shape}")
    return np.round(image)


# ---------------------------------------------------------------- single-image metrics


def entropy(f):
    """EN in bits: Shannon entropy of the histogram of round(F) (one bin per integer level)."""
    _, counts = np.unique(np.round(f), return_counts=True)
    p = counts / f.size
    return float(-np.sum(p * np.log2(p)))


def standard_deviation(f):
    """SD: population standard deviation of F."""
    return float(np.std(f))


def spatial_frequency(f):
    """SF: sqrt(mean squared horizontal difference + mean squared vertical difference)."""
    row_frequency = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    column_frequency = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(row_frequency + column_frequency))


def average_gradient(f):
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), with np.gradient's differences (central inside,
    one-sided at the first and last row/column)."""
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2)))


# ---------------------------------------------------------------- information and correlation


def _categories(x):
    """Each distinct value of x as an integer category: (codes [x.size], number of codes).
    8-bit images (integer levels 0..255) are their own codes (some codes may be unused)."""
    x = x.ravel()
    if x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x)):
        codes = x.astype(np.intp)
        return codes, int(codes.max()) + 1
    values, codes = np.unique(x, return_inverse=True)
    return codes, values.size


def mutual_information_pair(x, y):
    """MI(X, Y) in nats over the joint histogram of distinct value pairs."""
    codes_x, levels_x = _categories(x)
    codes_y, levels_y = _categories(y)
    joint = np.bincount(codes_x * levels_y + codes_y, minlength=levels_x * levels_y)
    joint = joint.reshape(levels_x, levels_y)
    count_x, count_y = joint.sum(axis=1), joint.sum(axis=0)
    i, j = np.nonzero(joint)
    c = joint[i, j].astype(np.float64)
    n = float(x.size)
    return float(np.sum(c / n * (np.log(c) + np.log(n) - np.log(count_x[i]) - np.log(count_y[j]))))


def mutual_information(f, a, b):
    """MI: MI(F, A) + MI(F, B) in nats."""
    return mutual_information_pair(f, a) + mutual_information_pair(f, b)


def pearson(x, y):
    """Pearson correlation of x and y over all pixels; None if either is constant."""
    dx, dy = x - np.mean(x), y - np.mean(y)
    sxx, syy = np.sum(dx * dx), np.sum(dy * dy)
    if sxx == 0 or syy == 0:
        return None
    return float(np.sum(dx * dy) / np.sqrt(sxx * syy))


def correlation_coefficient(f, a, b):
    """CC: (r(A, F) + r(B, F)) / 2; None if either correlation is undefined."""
    r_a, r_b = pearson(a, f), pearson(b, f)
    return None if r_a is None or r_b is None else (r_a + r_b) / 2


def sum_of_correlation_differences(f, a, b):
    """SCD: r(A, F - B) + r(B, F - A); None if either correlation is undefined."""
    r_a, r_b = pearson(a, f - b), pearson(b, f - a)
    return None if r_a is None or r_b is None else r_a + r_b


def mean_squared_error(f, a, b):
    """MSE: (mean (A - F)^2 + mean (B - F)^2) / 2."""
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2)


def peak_signal_to_noise_ratio(f, a, b):
    """PSNR: 10 log10(max(F)^2 / MSE) in dB; None when MSE is 0 (F equals both sources)."""
    mse = mean_squared_error(f, a, b)
    if mse == 0:
        return None
    return float(10 * np.log10(np.max(f) ** 2 / mse))


# ---------------------------------------------------------------- windowed statistics


def correlate_valid(x, kernel_1d):
    """x [..., H, W] correlated over its last two axes with the separable kernel
    outer(k, k), 'valid' part only: [..., H - n + 1, W - n + 1] for a kernel of n taps."""
    n = len(kernel_1d)
    rows, cols = x.shape[-2] - n + 1, x.shape[-1] - n + 1
    if rows < 1 or cols < 1:
        raise ValueError(f"an image of shape {x.shape} is smaller than the {n}-tap window")
    first = n // 2  # ndimage centres an n-tap kernel on tap n // 2
    along_rows = ndimage.correlate1d(x, kernel_1d, axis=-2)[..., first:first + rows, :]
    return ndimage.correlate1d(along_rows, kernel_1d, axis=-1)[..., first:first + cols]


@functools.lru_cache(maxsize=None)
def vif_window(size):
    """The VIF scale's 1-D window factor: the N x N Gaussian of sigma N / 5 (entries below
    eps x max set to 0, normalised to sum 1) is outer(w, w) for the returned w [N]."""
    half = (size - 1) / 2
    offsets = np.arange(-half, half + 1)
    sigma = size / 5.0
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    window[window < np.finfo(np.float64).eps * window.max()] = 0
    window /= window.sum()
    factor = window.sum(axis=0)
    if not np.allclose(np.outer(factor, factor), window, rtol=1e-12, atol=0):
        raise AssertionError(f"VIF window of size {size} is not separable")
    factor.setflags(write=False)
    return factor


def vif_pair(reference, distorted):
    """Pixel-domain VIF (VIFF) of `distorted` against `reference` over four scales, noise
    variance 2; 1.0 where num / den is NaN (both zero); None for images smaller than
    VIF_MIN_SIZE, where the coarsest scale has no pixel left.

    Both images are centred on their means first: the windowed (co)variances do not change,
    but flat regions then give exact zeros instead of cancellation noise."""
    if min(reference.shape) < VIF_MIN_SIZE:
        return None
    noise_variance, eps = 2.0, 1e-10
    ref, dist = reference - np.mean(reference), distorted - np.mean(distorted)
    num = den = 0.0
    for scale in range(1, 5):
        window = vif_window(2 ** (5 - scale) + 1)
        if scale > 1:
            ref, dist = correlate_valid(np.stack([ref, dist]), window)[:, ::2, ::2]
        mu1, mu2, ref_sq, dist_sq, cross = correlate_valid(
            np.stack([ref, dist, ref * ref, dist * dist, ref * dist]), window)
        s1 = np.maximum(ref_sq - mu1 * mu1, 0)
        s2 = np.maximum(dist_sq - mu2 * mu2, 0)
        s12 = cross - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat_ref = s1 < eps
        g[flat_ref], sv[flat_ref], s1[flat_ref] = 0, s2[flat_ref], 0
        flat_dist = s2 < eps
        g[flat_dist], sv[flat_dist] = 0, 0
        negative = g < 0
        sv[negative], g[negative] = s2[negative], 0
        sv = np.maximum(sv, eps)
        num += np.sum(np.log10(1 + g * g * s1 / (sv + noise_variance)))
        den += np.sum(np.log10(1 + s1 / noise_variance))
    with np.errstate(invalid="ignore", divide="ignore"):
        vif = num / den
    return 1.0 if np.isnan(vif) else float(vif)


def visual_information_fidelity(f, a, b):
    """VIF: VIF(A, F) + VIF(B, F); None for images smaller than VIF_MIN_SIZE."""
    vif_a, vif_b = vif_pair(a, f), vif_pair(b, f)
    return None if vif_a is None or vif_b is None else vif_a + vif_b


def ssim_pair(x, y, data_range=255.0):
    """SSIM as scikit-image's structural_similarity computes it by default: 7 x 7 uniform
    window, K1 = 0.01, K2 = 0.03, sample covariance, mean over the 'valid' interior."""
    win, k1, k2 = SSIM_WINDOW, 0.01, 0.03
    box = np.full(win, 1.0 / win)
    cov_norm = win * win / (win * win - 1.0)
    ux, uy, uxx, uyy, uxy = correlate_valid(np.stack([x, y, x * x, y * y, x * y]), box)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2)))
    return float(np.mean(ssim_map))


def structural_similarity(f, a, b, data_range=255.0):
    """SSIM: SSIM(F, A) + SSIM(F, B); data_range 255 for 0..255 images (2 reproduces numbers
    computed by old scikit-image on float images)."""
    return ssim_pair(f, a, data_range) + ssim_pair(f, b, data_range)


# ---------------------------------------------------------------- Qabf


def _edges(image):
    """Sobel edge strength and orientation [H, W] ('same' size, zero padding)."""
    sx = ndimage.convolve(image, SOBEL_X, mode="constant", cval=0.0)
    sy = ndimage.convolve(image, SOBEL_Y, mode="constant", cval=0.0)
    strength = np.sqrt(sx * sx + sy * sy)
    ratio = np.divide(sy, sx, out=np.zeros_like(sy), where=sx != 0)
    orientation = np.where(sx == 0, np.pi / 2, np.arctan(ratio))
    return strength, orientation


def _edge_preservation(source_edges, fused_edges):
    """Q_XF [H, W]: how well F keeps the edge strength and orientation of source X."""
    (g_x, a_x), (g_f, a_f) = source_edges, fused_edges
    ratio_f = np.divide(g_f, g_x, out=np.zeros_like(g_f), where=g_x > g_f)
    ratio_x = np.divide(g_x, g_f, out=np.zeros_like(g_f), where=g_x < g_f)
    strength = np.where(g_x > g_f, ratio_f, np.where(g_x < g_f, ratio_x, g_f))
    angle = 1 - np.abs(a_x - a_f) / (np.pi / 2)
    q_strength = 0.9994 / (1 + np.exp(-15 * (strength - 0.5)))
    q_angle = 0.9879 / (1 + np.exp(-22 * (angle - 0.8)))
    return q_strength * q_angle


def qabf(f, a, b):
    """Qabf (Xydeas-Petrovic): source-edge-strength-weighted edge preservation of A and B in F;
    None if neither source has any edge."""
    edges_a, edges_b, edges_f = _edges(a), _edges(b), _edges(f)
    weight = np.sum(edges_a[0] + edges_b[0])
    if weight == 0:
        return None
    kept = (_edge_preservation(edges_a, edges_f) * edges_a[0]
            + _edge_preservation(edges_b, edges_f) * edges_b[0])
    return float(np.sum(kept) / weight)


# ---------------------------------------------------------------- colour fidelity


def rgb_image(image):
    """The RGB version [H, W, 3] float64 of a grey [H, W] / [H, W, 1] or an RGB [H, W, 3] image
    on 0..255 (a grey level v becomes (v, v, v)); values are kept, not rounded."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected a grey [H, W] or RGB [H, W, 3] image, got shape {image.shape}")
    return np.broadcast_to(image, image.shape[:2] + (3,))


def colour_fidelity(fused, a, b):
    """{'dE00-B': mean CIEDE2000 of F from B inside B's functional region, 'dE00-A': mean
    CIEDE2000 of F from A's rounded grey outside it}; dE00-B is None when the region is empty
    (the outside never is: it holds the background pixel). F and B grey or RGB, A grey (or RGB,
    taken as its grey), all [H, W] on 0..255."""
    lab_f, lab_a, lab_b = (colour_difference.srgb_to_lab(rgb_image(x))
                           for x in (fused, grey_image(a), b))
    region = functional_region.of_lab(lab_b)
    to_b = colour_difference.ciede2000(lab_f[region], lab_b[region])
    to_a = colour_difference.ciede2000(lab_f[~region], lab_a[~region])
    return {"dE00-B": float(np.mean(to_b)) if region.any() else None,
            "dE00-A": float(np.mean(to_a))}


# ---------------------------------------------------------------- all at once


def all_metrics(fused, a, b, ssim_data_range=255.0):
    """Every metric for one triple (grey or RGB images on 0..255, same height and width),
    as {name: float or None} in METRIC_NAMES order: the grey metrics on the rounded grey
    versions, the colour-fidelity ones on the colours themselves."""
    colour_images = (fused, a, b)
    f, a, b = grey_image(fused), grey_image(a), grey_image(b)
    if not f.shape == a.shape == b.shape:
        raise ValueError(f"fused {f.shape}, A {a.shape} and B {b.shape} differ in size")
    if min(f.shape) < SSIM_WINDOW:
        raise ValueError(f"images of shape {f.shape} are smaller than SSIM's "
                         f"{SSIM_WINDOW} x {SSIM_WINDOW} window")
    values = dict(
        EN=entropy(f), SD=standard_deviation(f), SF=spatial_frequency(f),
        MI=mutual_information(f, a, b), SCD=sum_of_correlation_differences(f, a, b),
        VIF=visual_information_fidelity(f, a, b), Qabf=qabf(f, a, b),
        SSIM=structural_similarity(f, a, b, ssim_data_range), AG=average_gradient(f),
        PSNR=peak_signal_to_noise_ratio(f, a, b), CC=correlation_coefficient(f, a, b),
        MSE=mean_squared_error(f, a, b), **colour_fidelity(*colour_images))
    return {name: values[name] for name in METRIC_NAMES}
