"""Brain-like slice phantoms and their MRI-, CT-, PET- and SPECT-like renderings.

`random_slice` draws the anatomy of one axial slice as tissue fractions (partial-volume maps that
sum to at most 1, the rest being air): scalp, skull with its marrow layer, CSF (around the brain,
in the sulci, the midline fissure and the ventricles), cortical grey matter folded into gyri,
white matter, deep grey nuclei and lesions of varying size and kind. The slice level, head shape,
folding, ventricle size and lesions vary from slice to slice.

The `render_*` functions turn the fractions into images [H, W] float32 on 0..1: MRI (T1 or T2
contrast, bias field, Rician noise), CT (Hounsfield units through a brain window), and emission
images (grey matter uptake 3-4 times white matter, hot and cold lesions, focal hot spots, blurred
by a point-spread function and corrupted by Poisson-like counting noise; SPECT coarser and noisier
than PET). Lengths are given for 256 x 256 and scale with the image size.

With `noise=False` a renderer returns the clean twin of the image it renders with noise: it makes
the same random draws (the noise samples are drawn and left out), so contrast, bias field,
uptake and every later draw of the same stream are unchanged, and it is scaled to 0..1 by the
noisy image's quantile (`normalise`'s `reference`), so the two share one intensity scale and
differ only by the noise.
"""

import dataclasses

import numpy as np

from difffccf_jax.data.fields import gaussian_blur, smooth_noise

# Tissue properties per rendering. T1/T2: relative MR signal; CT: Hounsfield units; uptake:
# tracer uptake relative to grey matter (white matter's value is drawn per slice instead).
TISSUE_T1 = dict(scalp=0.72, skull=0.06, marrow=0.6, csf=0.1, grey=0.52, white=0.76, deep=0.58)
TISSUE_T2 = dict(scalp=0.45, skull=0.04, marrow=0.35, csf=0.95, grey=0.62, white=0.42, deep=0.55)
TISSUE_HU = dict(scalp=15.0, skull=1400.0, marrow=450.0, csf=8.0, grey=38.0, white=27.0,
                 deep=36.0)
TISSUE_UPTAKE = dict(scalp=0.08, skull=0.03, marrow=0.05, csf=0.04, grey=1.0, deep=1.05)
# Lesion kinds: (T1, T2, HU, uptake range); uptake > 1 is a hot lesion, < 1 a cold one.
LESION_KINDS = dict(
    tumour=(0.36, 0.85, 32.0, (1.8, 3.2)),
    infarct=(0.3, 0.9, 14.0, (0.1, 0.3)),
    haemorrhage=(0.82, 0.22, 72.0, (0.3, 0.5)),
)
CT_WINDOW = (40.0, 120.0)  # level, width in HU


@dataclasses.dataclass
class Lesion:
    """One lesion: its fraction map [H, W] and its value in each rendering."""
    fraction: np.ndarray
    t1: float
    t2: float
    hu: float
    uptake: float


@dataclasses.dataclass
class Slice:
    """Tissue fractions of one slice ([H, W] float32 each, summing to <= 1) and lesions."""
    fractions: dict
    lesions: list
    parenchyma: np.ndarray  # [H, W] brain tissue fraction (grey, white, deep and lesions)
    texture: np.ndarray  # [H, W] fine-grained random field (tissue microstructure), std 1

    @property
    def size(self):
        return self.parenchyma.shape[0]


def _inside(distance, pixel):
    """Partial-volume fraction of a pixel whose centre lies `distance` beyond an edge (negative
    inside), `pixel` being the pixel width in the same units."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0).astype(np.float32, copy=False)


def _ellipse(ex, ey, centre, axes, tilt, pixel):
    """Fraction inside the ellipse (centre, semi-axes, tilt in radians) in head coordinates."""
    dx, dy = ex - centre[0], ey - centre[1]
    cos, sin = float(np.cos(tilt)), float(np.sin(tilt))
    u, v = (cos * dx + sin * dy) / axes[0], (-sin * dx + cos * dy) / axes[1]
    return _inside((np.sqrt(u * u + v * v) - 1.0) * min(axes), pixel)


def _head_coordinates(rng, size, level):
    """Elliptic head coordinates: (ex, ey) scaled so the head outline is near radius 1, the
    normalised radius r (1 on the outline, which is perturbed by low harmonics), the angle phi
    and the pixel width in these units; float32 [size, size] each."""
    centre = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    shift_x, shift_y = rng.normal(0.0, 0.02), rng.normal(0.0, 0.02)
    x, y = centre[None, :] - shift_x, centre[:, None] - shift_y
    angle = rng.normal(0.0, 0.06)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    shrink = 1.0 - 0.15 * level ** 2
    axis_x, axis_y = rng.uniform(0.70, 0.80) * shrink, rng.uniform(0.84, 0.93) * shrink
    ex, ey = (cos * x + sin * y) / axis_x, (-sin * x + cos * y) / axis_y
    phi = np.arctan2(ey, ex)
    outline = np.ones_like(phi)
    for k in range(2, 6):
        outline += rng.normal(0.0, 0.015) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(ex * ex + ey * ey) / outline
    return ex, ey, r, phi, 2.0 / (size * axis_x)


def _lesions(rng, ex, ey, r, pixel, brain_radius, parenchyma):
    """0-3 lesions inside the parenchyma, each of a random kind, size and irregular outline."""
    size = r.shape[0]
    candidates = np.flatnonzero((parenchyma > 0.5) & (r < 0.75 * brain_radius))
    lesions = []
    for _ in range(min(rng.poisson(1.1), 3) if candidates.size else 0):
        kind = LESION_KINDS[sorted(LESION_KINDS)[rng.integers(len(LESION_KINDS))]]
        row, column = divmod(int(candidates[rng.integers(candidates.size)]), size)
        radius = rng.uniform(0.025, 0.12)
        reach = int(np.ceil(1.5 * radius / pixel)) + 2  # pixels, beyond the widest outline
        window = (slice(max(row - reach, 0), row + reach + 1),
                  slice(max(column - reach, 0), column + reach + 1))
        dx, dy = ex[window] - ex[row, column], ey[window] - ey[row, column]
        angle = np.arctan2(dy, dx)
        wobble = 1.0 + sum(rng.normal(0.0, 0.1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                           for k in (2, 3))
        fraction = np.zeros_like(r)
        fraction[window] = (_inside(np.sqrt(dx * dx + dy * dy) / wobble - radius, pixel)
                            * parenchyma[window])
        t1, t2, hu, uptake_range = kind
        contrast = rng.uniform(0.85, 1.15)
        lesions.append(Lesion(fraction=fraction, t1=t1 * contrast, t2=min(t2 * contrast, 1.0),
                              hu=hu * contrast, uptake=rng.uniform(*uptake_range)))
    return lesions


def random_slice(rng, size):
    """Draws the anatomy of one axial brain slice of `size` x `size` pixels."""
    level = rng.uniform(0.0, 1.0)  # 0: a low slice (deep nuclei), 1: near the vertex
    ex, ey, r, phi, pixel = _head_coordinates(rng, size, level)
    skull_out = 1.0 - rng.uniform(0.04, 0.06)
    skull_in = skull_out - rng.uniform(0.05, 0.075)
    brain_out = skull_in - rng.uniform(0.01, 0.025)
    head = _inside(r - 1.0, pixel)
    outer, inner = _inside(r - skull_out, pixel), _inside(r - skull_in, pixel)
    skull = outer - inner
    marrow = skull * np.clip(1.0 - np.abs(r - (skull_out + skull_in) / 2)
                             / ((skull_out - skull_in) * 0.3), 0.0, 1.0)

    # Cortex folded into gyri: CSF-filled sulci of varying depth where `fold` peaks, with the
    # grey matter ribbon reaching deeper there and white matter reaching into the gyri.
    fold = np.cos(int(rng.integers(14, 22)) * phi + 3.0 * smooth_noise(rng, r.shape, size / 12)
                  + rng.uniform(0, 2 * np.pi))
    depth = rng.uniform(0.1, 0.16) * (0.7 + 0.3 * smooth_noise(rng, r.shape, size / 10))
    sulci = (np.clip((fold - (1.0 - rng.uniform(0.12, 0.2))) / 0.06, 0.0, 1.0)
             * np.clip((r - (brain_out - depth)) / (2 * pixel), 0.0, 1.0))
    fissure = (_inside(np.abs(ex) - rng.uniform(0.008, 0.016), pixel)
               * np.clip((np.abs(ey) - rng.uniform(0.3, 0.6)) / 0.05, 0.0, 1.0))
    white_inside = _inside(r - (brain_out - rng.uniform(0.1, 0.15) * (1.1 + 0.6 * fold)), pixel)

    ventricle_scale = float(np.exp(-((level - 0.4) / 0.25) ** 2)) * rng.uniform(0.6, 1.4)
    ventricles = np.zeros_like(r)
    if ventricle_scale > 0.15:
        offset, height = rng.uniform(0.08, 0.13), rng.uniform(-0.1, 0.05)
        axes = rng.uniform(0.04, 0.07) * ventricle_scale, rng.uniform(0.18, 0.28) * ventricle_scale
        tilt = rng.uniform(0.1, 0.35)
        for side in (-1.0, 1.0):
            ventricles = np.maximum(ventricles, _ellipse(
                ex, ey, (side * offset * (0.6 + 0.4 * ventricle_scale), height), axes,
                side * tilt, pixel))
        ventricles = np.maximum(ventricles, _ellipse(
            ex, ey, (0.0, rng.uniform(0.05, 0.15)), (0.012, 0.08 * ventricle_scale), 0.0, pixel))
    deep_mask = np.zeros_like(r)
    if level < 0.6:
        offset, height = rng.uniform(0.17, 0.24), rng.uniform(-0.05, 0.1)
        axes, tilt = (rng.uniform(0.06, 0.09), rng.uniform(0.1, 0.15)), rng.uniform(-0.3, 0.3)
        for side in (-1.0, 1.0):
            deep_mask = np.maximum(deep_mask, _ellipse(ex, ey, (side * offset, height), axes,
                                                       side * tilt, pixel))

    parenchyma = _inside(r - brain_out, pixel) * (1 - sulci) * (1 - fissure) * (1 - ventricles)
    lesions = _lesions(rng, ex, ey, r, pixel, brain_out, parenchyma)
    lesion_total = sum((lesion.fraction for lesion in lesions), np.zeros_like(r))
    overlap = np.maximum(lesion_total, 1.0)  # overlapping lesions share the pixel
    for lesion in lesions:
        lesion.fraction = (lesion.fraction / overlap).astype(np.float32)
    normal = parenchyma - lesion_total / overlap
    deep = normal * deep_mask
    fractions = dict(scalp=head - outer, skull=skull - marrow, marrow=marrow,
                     csf=inner - parenchyma, grey=(normal - deep) * (1 - white_inside),
                     white=(normal - deep) * white_inside, deep=deep)
    fractions = {name: value.astype(np.float32) for name, value in fractions.items()}
    return Slice(fractions=fractions, lesions=lesions, parenchyma=parenchyma.astype(np.float32),
                 texture=smooth_noise(rng, r.shape, 1.2 * size / 256))


def mix(anatomy, tissue_values, lesion_value):
    """Sum over tissues of fraction x value, lesions included (lesion_value(lesion) each)."""
    image = sum(anatomy.fractions[name] * value for name, value in tissue_values.items())
    for lesion in anatomy.lesions:
        image = image + lesion.fraction * lesion_value(lesion)
    return image.astype(np.float32)


def normalise(image, quantile, rng, reference=None):
    """Scales so the given quantile of `reference` (default: the image itself) maps to about 1
    (with a random gain), clipped to 0..1. A clean twin is scaled by its noisy image's
    quantile: the two then share one intensity scale."""
    reference = image if reference is None else reference
    scale = np.quantile(reference[::2, ::2], quantile) * rng.uniform(0.95, 1.05)
    return np.clip(image / max(scale, 1e-6), 0.0, 1.0).astype(np.float32)


def render_mri(anatomy, rng, weighting, noise=True):
    """MRI-like image [H, W] on 0..1 with 'T1' or 'T2' contrast; Rician noise unless
    noise=False."""
    table = TISSUE_T1 if weighting == "T1" else TISSUE_T2
    values = {name: value * rng.uniform(0.92, 1.08) for name, value in table.items()}
    image = mix(anatomy, values, lambda lesion: lesion.t1 if weighting == "T1" else lesion.t2)
    scale = anatomy.size / 256
    image *= 1.0 + 0.05 * anatomy.texture * anatomy.parenchyma
    image *= 1.0 + 0.1 * smooth_noise(rng, image.shape, 60 * scale)  # coil bias field
    image = gaussian_blur(image, 0.5 * scale)
    sigma = rng.uniform(0.01, 0.03)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return normalise(magnitude if noise else image, 0.995, rng, reference=magnitude)


def render_ct(anatomy, rng, noise=True):
    """CT-like image [H, W] on 0..1: Hounsfield units through a brain window; Gaussian noise
    of 3-6 HU unless noise=False."""
    hu = mix(anatomy, TISSUE_HU, lambda lesion: lesion.hu)
    hu += -1000.0 * (1.0 - sum(anatomy.fractions.values())
                     - sum((lesion.fraction for lesion in anatomy.lesions), 0.0))
    hu = gaussian_blur(hu, 0.6 * anatomy.size / 256)
    scanner_noise = rng.uniform(3.0, 6.0) * rng.standard_normal(hu.shape, dtype=np.float32)
    if noise:
        hu += scanner_noise
    level, width = CT_WINDOW
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def uptake(anatomy, rng):
    """Noise-free tracer uptake [H, W]: grey matter 3-4 x white matter, lesions, hot spots."""
    values = {name: value * rng.uniform(0.95, 1.05) for name, value in TISSUE_UPTAKE.items()}
    values["white"] = 1.0 / rng.uniform(3.0, 4.0)
    activity = mix(anatomy, values, lambda lesion: lesion.uptake)
    activity *= 1.0 + 0.08 * smooth_noise(rng, activity.shape, 12 * anatomy.size / 256)
    size = anatomy.size
    rows, columns = np.nonzero(anatomy.parenchyma > 0.5)
    coordinates = np.arange(size, dtype=np.float32)
    for _ in range(int(rng.integers(0, 4)) if rows.size else 0):
        pick = int(rng.integers(rows.size))
        sigma = rng.uniform(1.5, 4.0) * size / 256
        blob = (np.exp(-((coordinates[:, None] - rows[pick]) ** 2) / (2 * sigma ** 2))
                * np.exp(-((coordinates[None, :] - columns[pick]) ** 2) / (2 * sigma ** 2)))
        activity += rng.uniform(0.8, 2.0) * blob * anatomy.parenchyma
    return np.maximum(activity, 0.0).astype(np.float32)


def render_emission(activity, rng, fwhm, peak_counts, block=1, noise=True):
    """Emission image [H, W] on 0..1 of `activity`: point-spread blur of `fwhm` pixels, counts
    on a grid `block` times coarser (block averaging), Poisson-like noise (the normal
    approximation) with `peak_counts` at the brightest pixel unless noise=False (the expected
    counts, of which the noisy image is an unbiased draw), and the light smoothing of a
    reconstruction."""
    size = activity.shape[0]
    blurred = gaussian_blur(activity, fwhm / 2.355)
    if block > 1:
        coarse = blurred.reshape(size // block, block, size // block, block).mean(axis=(1, 3))
        blurred = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)
    counts = np.maximum(blurred, 0.0) * (peak_counts / max(float(blurred.max()), 1e-6))
    # Poisson counting noise in its normal approximation (mean = variance = counts).
    noisy = np.maximum(counts + np.sqrt(counts) * rng.standard_normal(counts.shape, np.float32),
                       0.0) / peak_counts
    reconstructed = gaussian_blur(noisy, 0.4 * fwhm / 2.355)
    image = reconstructed if noise else gaussian_blur(counts / peak_counts, 0.4 * fwhm / 2.355)
    return normalise(image, 0.998, rng, reference=reconstructed)


def render_pet(anatomy, rng, noise=True):
    """PET-like image [H, W] on 0..1 (point spread 6-9 pixels FWHM at 256, moderate noise
    unless noise=False)."""
    scale = anatomy.size / 256
    return render_emission(uptake(anatomy, rng), rng, rng.uniform(6.0, 9.0) * scale,
                           rng.uniform(80.0, 160.0), noise=noise)


def render_spect(anatomy, rng, noise=True):
    """SPECT-like image [H, W] on 0..1: coarser (12-15 pixels FWHM at 256, counts binned on a
    grid twice as coarse) and noisier than PET (no noise with noise=False)."""
    scale = anatomy.size / 256
    block = 2 if anatomy.size % 2 == 0 else 1
    return render_emission(uptake(anatomy, rng), rng, rng.uniform(12.0, 15.0) * scale,
                           rng.uniform(20.0, 45.0), block=block, noise=noise)
