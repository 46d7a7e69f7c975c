"""Brain slices cut from a real MRI template, and their MRI-, CT-, PET- and SPECT-like renderings.

The anatomy is the MNI ICBM152 2009a nonlinear symmetric template at 1 mm: its grey- and
white-matter probability maps and its (skull-stripped) T1 image, whose support is the brain mask,
as shipped inside nilearn's wheel under nilearn/datasets/data/ (nilearn and nibabel are
dependencies of the package). The files are read with nibabel, without importing nilearn, once per process
(`load_template`). Copyright notice and references: docs/data.md.

`random_slice` cuts one axial slice at a random level from the midbrain (12 mm below the MNI
origin) to near the vertex (66 mm above), tilted by a few degrees, rotated, scaled (head length and width apart) and shifted in
plane, and bent by a smooth elastic warp of a few millimetres. As the template has no skull,
the CSF, the skull (with its marrow layer) and the scalp are shells laid around the brain at
random, smoothly varying depths beyond a smooth hull of the brain (a signed distance map,
computed once on a 3 mm grid). The tissue probabilities are sharpened (an average of 152 brains
is blurrier than one), and 0-3 lesions (phantom.LESION_KINDS) replace some brain tissue.

The `render_*` functions turn the slice into images [H, W] float32 on 0..1: MRI (T1 or T2,
random contrast, bias field, faint Rician noise), CT (Hounsfield units through a brain window:
skull white, brain grey), PET (grey to white matter uptake about 4:1, focal hot spots, a
point-spread function of 4-6 mm FWHM, Poisson noise) and SPECT (8-12 mm FWHM, counts binned on
a grid twice as coarse, fewer counts). Lengths are in millimetres; `BrainSlice.pixel_mm`
converts them to pixels. With `noise=False` they return the clean twin: the same draws, the
same intensity scale, no scanner noise (as in data/phantom.py).
"""

import dataclasses
import functools
import importlib.util
import itertools
import os

import numpy as np

from difffccf_jax.data import phantom
from difffccf_jax.data.fields import gaussian_blur, smooth_noise
from difffccf_jax.errors import UserError

TEMPLATE_FILES = dict(
    grey="mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    white="mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    t1="mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
)
INSTALL_HINT = "reinstall difffccf-jax with its dependencies (nilearn, which ships it, and nibabel)"
HULL_GRID = 3  # voxels per step of the coarse grid of the hull's distance map

# Slice geometry, in MNI millimetres and degrees.
LEVELS_MM = (-12.0, 66.0)  # axial level of the slice centre
BRAIN_CENTRE_Y_MM = -17.0  # front-back middle of the brain, placed at the image centre
FIELD_OF_VIEW_MM = (215.0, 245.0)
MAX_TILT_DEG = (8.0, 3.0)  # about the left-right axis (pitch) and the front-back axis (roll)
MAX_ROTATION_DEG = 7.0
SCALE_RANGE = (0.92, 1.08)  # head length and width, each
ELASTIC_MM = (0.5, 2.5)

# Tissue properties per rendering: MR signal, Hounsfield units and tracer uptake relative to grey
# matter's 1 (white matter's uptake is 1 / the grey-to-white ratio).
TISSUE_T1 = dict(scalp=0.78, skull=0.05, marrow=0.6, csf=0.1, grey=0.5, white=0.8)
TISSUE_T2 = dict(scalp=0.42, skull=0.03, marrow=0.32, csf=1.0, grey=0.6, white=0.4)
TISSUE_HU = {name: hu for name, hu in phantom.TISSUE_HU.items() if name != "deep"}
TISSUE_UPTAKE = dict(scalp=0.05, skull=0.02, marrow=0.04, csf=0.03)
PET_GREY_TO_WHITE = (3.7, 4.3)
COUNTS_PIXEL_MM = 0.9  # counts are given for pixels of this width and scale with pixel area
SPECT_GREY_TO_WHITE = (2.5, 3.2)


@dataclasses.dataclass(frozen=True)
class Template:
    """The template volumes, indexed [z, y, x] (a slice's voxels lie close together):
    grey and white, the matter probabilities times 255, uint8 on the 1 mm grid whose voxel
    (0, 0, 0) lies at `origin` (MNI mm (x, y, z): x to the subject's right, y to the front, z up);
    hull_distance, float32, the signed distance in mm to a smooth hull of the brain (positive
    outside) on every HULL_GRID-th voxel."""
    grey: np.ndarray
    white: np.ndarray
    origin: np.ndarray
    hull_distance: np.ndarray


@dataclasses.dataclass
class BrainSlice:
    """Tissue fractions of one slice ([H, W] float32 each, summing to at most 1, the rest air):
    scalp, skull, marrow, csf, grey, white; lesions (phantom.Lesion, their fractions taken from
    grey and white matter); pixel_mm, the pixel width in mm."""
    fractions: dict
    lesions: list
    pixel_mm: float

    @property
    def size(self):
        return self.fractions["grey"].shape[0]

    @property
    def parenchyma(self):
        """[H, W] brain tissue fraction: grey, white and lesions."""
        return (self.fractions["grey"] + self.fractions["white"]
                + sum((lesion.fraction for lesion in self.lesions), 0.0))


def template_folder():
    """The folder of nilearn's copy of the template, found without importing nilearn; None
    unless nilearn (with the files) and nibabel are installed."""
    if importlib.util.find_spec("nibabel") is None:
        return None
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    files = [os.path.join(folder, name) for name in TEMPLATE_FILES.values()]
    return folder if all(os.path.isfile(path) for path in files) else None


def available():
    """Whether the template can be loaded (nilearn and nibabel are installed)."""
    return template_folder() is not None


def check_available():
    """Raises UserError, saying how to install it, unless the template can be loaded."""
    if not available():
        raise UserError(f"the template anatomy needs the MNI152 template: {INSTALL_HINT}; or "
                        "choose the phantom anatomy")


def _read(folder, name):
    """(data [Z, Y, X] uint8, origin [3]) of one template file, checked to be on a 1 mm grid."""
    import nibabel

    path = os.path.join(folder, TEMPLATE_FILES[name])
    image = nibabel.load(path)
    affine = np.asarray(image.affine)
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise UserError(f"{path}: expected a 1 mm grid aligned with the MNI axes, found the "
                        f"affine {affine[:3, :3].tolist()}")
    return np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.uint8).T), affine[:3, 3]


@functools.lru_cache(maxsize=1)
def load_template():
    """The Template, read once per process (about 1 s); UserError when it is not installed."""
    from scipy import ndimage

    check_available()
    folder = template_folder()
    (grey, origin), (white, _), (t1, _) = (_read(folder, name) for name in TEMPLATE_FILES)
    # The hull: the brain mask blurred by 4 mm and cut low, which fills the sulci and rounds the
    # surface; its signed distance map on the coarse grid (0 half-way between the two sides).
    # (The mask is averaged over blocks of the coarse grid; the distance map is smoothed over
    # a voxel so that its level sets, the shells' outlines, are smooth too.)
    coarse = [length // HULL_GRID for length in t1.shape]
    brain = (t1[:coarse[0] * HULL_GRID, :coarse[1] * HULL_GRID, :coarse[2] * HULL_GRID] > 0)
    brain = brain.reshape(coarse[0], HULL_GRID, coarse[1], HULL_GRID, coarse[2], HULL_GRID)
    hull = ndimage.gaussian_filter(brain.mean(axis=(1, 3, 5)), 4.0 / HULL_GRID) > 0.3
    distance = (ndimage.distance_transform_edt(~hull) - ndimage.distance_transform_edt(hull))
    distance = ndimage.gaussian_filter(distance * HULL_GRID, 1.0)
    return Template(grey=grey, white=white, origin=origin,
                    hull_distance=np.ascontiguousarray(distance, dtype=np.float32))


def _trilinear(volumes, coordinates):
    """Volumes [Z, Y, X] of one grid sampled at fractional voxel coordinates (z, y, x) (three
    float32 arrays of one shape, clamped to the grid), trilinearly: a list of float32 arrays."""
    shape = volumes[0].shape
    strides = (shape[1] * shape[2], shape[2], 1)
    index, weights = 0, []
    for values, length, stride in zip(coordinates, shape, strides):
        values = np.clip(values, np.float32(0.0), np.float32(length - 1.001))
        floor = np.floor(values)
        weights.append(values - floor)
        index = index + floor.astype(np.intp) * stride
    wz, wy, wx = weights
    results = []
    for volume in volumes:
        flat = volume.reshape(-1)
        c = [np.take(flat, index + (dz * strides[0] + dy * strides[1] + dx)).astype(np.float32)
             for dz, dy, dx in itertools.product((0, 1), repeat=3)]
        lines = [c[i] + wx * (c[i + 1] - c[i]) for i in (0, 2, 4, 6)]  # along x
        planes = [lines[i] + wy * (lines[i + 1] - lines[i]) for i in (0, 2)]  # then y
        results.append(planes[0] + wz * (planes[1] - planes[0]))  # then z
    return results


def _inside(distance_mm, pixel_mm):
    """Partial-volume fraction of a pixel whose centre lies `distance_mm` beyond an edge."""
    return np.clip(0.5 - distance_mm / pixel_mm, 0.0, 1.0).astype(np.float32)


def _slice_coordinates(rng, size, pixel_mm):
    """MNI coordinates (x, y, z) [size, size] float32 of the pixel centres of a random slice:
    tilted, rotated, scaled, shifted and elastically warped; shown radiologically (the
    subject's right on the image's left, the front at the top)."""
    centres = (np.arange(size, dtype=np.float32) + np.float32(0.5 - size / 2)) * pixel_mm
    u, v = np.meshgrid(centres, centres, indexing="xy")  # mm right and down of the centre
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    scale_x, scale_y = rng.uniform(*SCALE_RANGE, 2).tolist()
    shift_x, shift_y = rng.normal(0.0, 4.0, 2).tolist()
    amplitude = rng.uniform(*ELASTIC_MM)
    warp = [amplitude * smooth_noise(rng, u.shape, size / 6) for _ in range(3)]
    across = (cos * u - sin * v) * (1.0 / scale_x) + warp[0]
    down = (sin * u + cos * v) * (1.0 / scale_y) + warp[1]
    x, y = shift_x - across, (BRAIN_CENTRE_Y_MM + shift_y) - down
    pitch, roll = np.tan(np.deg2rad(rng.uniform(-1.0, 1.0, 2) * MAX_TILT_DEG)).tolist()
    z = (rng.uniform(*LEVELS_MM) - pitch * BRAIN_CENTRE_Y_MM) + pitch * y + roll * x + warp[2]
    return x, y, z


def _lesions(rng, size, pixel_mm, fractions):
    """0-3 lesions in the brain, each of a random kind, size (radius 3-15 mm) and irregular
    outline; each takes its fraction from the grey and white matter under it (in place)."""
    brain = fractions["grey"] + fractions["white"]
    candidates = np.flatnonzero(brain > 0.9)
    lesions = []
    for _ in range(min(rng.poisson(1.0), 3) if candidates.size else 0):
        kind = phantom.LESION_KINDS[sorted(phantom.LESION_KINDS)[rng.integers(3)]]
        row, column = divmod(int(candidates[rng.integers(candidates.size)]), brain.shape[1])
        radius = rng.uniform(3.0, 15.0) / pixel_mm
        reach = int(np.ceil(1.4 * radius)) + 3
        height, width = brain.shape
        window = (slice(max(row - reach, 0), min(row + reach + 1, height)),
                  slice(max(column - reach, 0), min(column + reach + 1, width)))
        dy, dx = np.ogrid[window[0], window[1]]
        dy, dx = (dy - row).astype(np.float32), (dx - column).astype(np.float32)
        angle = np.arctan2(dy, dx)
        outline = radius * (1.0 + sum(rng.normal(0.0, 0.1) * np.cos(k * angle
                                                                    + rng.uniform(0, 2 * np.pi))
                                      for k in (2, 3)))
        # soft-edged: 1.5 pixels wide, as a lesion's border is not a sharp line
        shape = np.clip(0.5 - (np.sqrt(dx * dx + dy * dy) - outline) / 1.5, 0.0, 1.0)
        fraction = np.zeros_like(brain)
        fraction[window] = shape * (fractions["grey"][window] + fractions["white"][window])
        for tissue in ("grey", "white"):
            fractions[tissue][window] *= 1.0 - shape
        t1, t2, hu, uptake_range = kind
        contrast = rng.uniform(0.85, 1.15)
        lesions.append(phantom.Lesion(fraction=fraction, t1=t1 * contrast,
                                      t2=min(t2 * contrast, 1.0), hu=hu * contrast,
                                      uptake=rng.uniform(*uptake_range)))
    return lesions


def random_slice(rng, size):
    """Draws one axial slice of `size` x `size` pixels (a BrainSlice)."""
    template = load_template()
    pixel_mm = rng.uniform(*FIELD_OF_VIEW_MM) / size
    x, y, z = _slice_coordinates(rng, size, pixel_mm)
    voxels = [c - float(o) for c, o in zip((z, y, x), template.origin[::-1])]
    grey, white = (p * np.float32(1.0 / 255.0)
                   for p in _trilinear([template.grey, template.white], voxels))
    (distance,) = _trilinear([template.hull_distance], [c * (1.0 / HULL_GRID) for c in voxels])

    # Shells beyond the hull: CSF up to the skull's inner table, skull (marrow in its middle),
    # scalp; each thickness varies smoothly around the head.
    def thickness(low, high):
        return rng.uniform(low, high) * (1.0 + 0.2 * smooth_noise(rng, x.shape, size / 8))

    inner = thickness(1.0, 3.0)
    bone = thickness(5.0, 8.0)
    outer = inner + bone
    intracranial = _inside(distance - inner, pixel_mm)
    skull = _inside(distance - outer, pixel_mm) - intracranial
    head = _inside(distance - outer - thickness(4.0, 8.0), pixel_mm)
    marrow = skull * np.clip(1.0 - np.abs(distance - inner - bone / 2) / (0.3 * bone), 0.0, 1.0)

    # Sharpened tissue probabilities: p ** gamma, renormalised, inside the skull.
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    powers = [p ** rng.uniform(1.5, 2.5) for p in (grey, white, csf)]
    norm = intracranial / np.maximum(sum(powers), 1e-6)
    fractions = dict(scalp=head - skull - intracranial, skull=skull - marrow, marrow=marrow,
                     csf=powers[2] * norm, grey=powers[0] * norm, white=powers[1] * norm)
    fractions = {name: np.clip(value, 0.0, 1.0).astype(np.float32)
                 for name, value in fractions.items()}
    lesions = _lesions(rng, size, pixel_mm, fractions)
    return BrainSlice(fractions=fractions, lesions=lesions, pixel_mm=float(pixel_mm))


def render_mri(anatomy, rng, weighting, noise=True):
    """MRI-like image [H, W] on 0..1 with 'T1' or 'T2' contrast; faint Rician noise unless
    noise=False."""
    table = TISSUE_T1 if weighting == "T1" else TISSUE_T2
    values = {name: value * rng.uniform(0.93, 1.07) for name, value in table.items()}
    image = phantom.mix(anatomy, values,
                        lambda lesion: lesion.t1 if weighting == "T1" else lesion.t2)
    pixel = anatomy.pixel_mm
    image *= 1.0 + 0.06 * smooth_noise(rng, image.shape, 60.0 / pixel)  # coil bias field
    image = gaussian_blur(image, 0.4 / pixel)
    sigma = rng.uniform(0.004, 0.012)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    image = phantom.normalise(magnitude if noise else image, 0.998, rng, reference=magnitude)
    return (image ** rng.uniform(0.85, 1.15)).astype(np.float32)  # display contrast


def render_ct(anatomy, rng, noise=True):
    """CT-like image [H, W] on 0..1: Hounsfield units through a brain window (40 / 80 HU,
    varied a little); Gaussian noise of 2-4 HU unless noise=False."""
    hu = phantom.mix(anatomy, TISSUE_HU, lambda lesion: lesion.hu)
    tissue = anatomy.parenchyma + sum(anatomy.fractions[name] for name in
                                      ("scalp", "skull", "marrow", "csf"))
    hu += -1000.0 * (1.0 - tissue)  # air
    hu = gaussian_blur(hu, 0.6 / anatomy.pixel_mm)
    scanner_noise = rng.uniform(2.0, 4.0) * rng.standard_normal(hu.shape, dtype=np.float32)
    if noise:
        hu += scanner_noise
    level, width = phantom.CT_WINDOW
    level, width = level + rng.uniform(-4.0, 4.0), width * rng.uniform(0.9, 1.15)
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def uptake(anatomy, rng, grey_to_white):
    """Noise-free tracer uptake [H, W]: grey matter `grey_to_white` times white matter, slow
    regional variation of +-6 %, lesions, and 0-3 focal hot spots (2-5 mm) in the brain."""
    values = {name: value * rng.uniform(0.95, 1.05) for name, value in TISSUE_UPTAKE.items()}
    values.update(grey=1.0, white=1.0 / grey_to_white)
    activity = phantom.mix(anatomy, values, lambda lesion: lesion.uptake)
    pixel, size = anatomy.pixel_mm, anatomy.size
    activity *= 1.0 + 0.06 * smooth_noise(rng, activity.shape, 20.0 / pixel)
    parenchyma = anatomy.parenchyma
    rows, columns = np.nonzero(parenchyma > 0.5)
    coordinates = np.arange(size, dtype=np.float32)
    for _ in range(int(rng.integers(0, 4)) if rows.size else 0):
        pick = int(rng.integers(rows.size))
        sigma = rng.uniform(2.0, 5.0) / pixel
        blob = (np.exp(-((coordinates[:, None] - rows[pick]) ** 2) / (2 * sigma ** 2))
                * np.exp(-((coordinates[None, :] - columns[pick]) ** 2) / (2 * sigma ** 2)))
        activity += rng.uniform(0.8, 2.0) * blob * parenchyma
    return np.maximum(activity, 0.0).astype(np.float32)


def _counts(anatomy, peak):
    """Counts at the brightest pixel: `peak` for a COUNTS_PIXEL_MM pixel, scaled with the
    pixel's area (the noise per square millimetre does not depend on the image size)."""
    return peak * (anatomy.pixel_mm / COUNTS_PIXEL_MM) ** 2


def render_pet(anatomy, rng, noise=True):
    """PET-like image [H, W] on 0..1: grey to white matter 3.7-4.3, 4-6 mm FWHM, Poisson
    noise of 100-250 counts at the peak (_counts; none with noise=False)."""
    activity = uptake(anatomy, rng, rng.uniform(*PET_GREY_TO_WHITE))
    return phantom.render_emission(activity, rng, rng.uniform(4.0, 6.0) / anatomy.pixel_mm,
                                   _counts(anatomy, rng.uniform(100.0, 250.0)), noise=noise)


def render_spect(anatomy, rng, noise=True):
    """SPECT-like image [H, W] on 0..1: grey to white matter 2.5-3.2 (perfusion), 8-12 mm FWHM,
    counts binned on a grid twice as coarse, 20-45 counts at the peak (_counts; no noise with
    noise=False)."""
    activity = uptake(anatomy, rng, rng.uniform(*SPECT_GREY_TO_WHITE))
    block = 2 if anatomy.size % 2 == 0 else 1
    return phantom.render_emission(activity, rng, rng.uniform(8.0, 12.0) / anatomy.pixel_mm,
                                   _counts(anatomy, rng.uniform(20.0, 45.0)), block=block,
                                   noise=noise)
