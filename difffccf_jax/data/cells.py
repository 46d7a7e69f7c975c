"""Cell-culture phantoms: a phase-contrast image and the matching GFP fluorescence image.

Cells are irregular ellipses with a nucleus. In phase contrast they are darker than the medium,
granular inside and ringed by a bright halo; in the GFP channel a random subset of cells
expresses the fluorescent protein with its own brightness, blurred slightly and on a dark,
weakly autofluorescent background. Lengths are given for 256 x 256 and scale with the size.
With `noise=False` the renderers leave out the camera noise (its samples are still drawn, so
every other draw is unchanged): the clean twin of the same image.
"""

import dataclasses

import numpy as np

from difffccf_jax.data.fields import gaussian_blur, smooth_noise


@dataclasses.dataclass
class Culture:
    """Per pixel: the normalised radius to the nearest cell outline (< 1 inside a cell), the
    same for nuclei, and the index of the cell that owns the pixel (-1: medium)."""
    radius: np.ndarray  # [H, W] float32
    nucleus_radius: np.ndarray  # [H, W] float32
    owner: np.ndarray  # [H, W] int32
    num_cells: int


def _cell_radius(x, y, centre, axes, tilt, wobble):
    """Normalised elliptic radius (1 on the outline) of pixels (x, y) for one cell."""
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = np.cos(tilt), np.sin(tilt)
    u, v = (cos * dx + sin * dy) / axes[0], (-sin * dx + cos * dy) / axes[1]
    angle = np.arctan2(v, u)
    outline = 1.0 + sum(amplitude * np.cos(k * angle + phase) for k, amplitude, phase in wobble)
    return np.sqrt(u * u + v * v) / outline


def random_culture(rng, size):
    """Draws 12-30 cells (for 256 x 256; proportionally to the area otherwise)."""
    scale = size / 256
    num_cells = max(3, int(round(rng.uniform(12, 30) * scale ** 2)))
    radius = np.full((size, size), np.inf, np.float32)
    nucleus_radius = np.full((size, size), np.inf, np.float32)
    owner = np.full((size, size), -1, np.int32)
    for index in range(num_cells):
        centre = rng.uniform(0, size, 2)
        length = max(rng.uniform(6.0, 14.0) * scale, 2.0)
        axes = length * rng.uniform(1.0, 1.8), length
        tilt = rng.uniform(0, np.pi)
        wobble = [(k, rng.normal(0, 0.06), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
        reach = int(np.ceil(axes[0] * 1.6)) + 2
        x0, x1 = max(int(centre[0]) - reach, 0), min(int(centre[0]) + reach + 1, size)
        y0, y1 = max(int(centre[1]) - reach, 0), min(int(centre[1]) + reach + 1, size)
        if x0 >= x1 or y0 >= y1:
            continue
        x = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        cell = _cell_radius(x, y, centre, axes, tilt, wobble)
        nucleus_centre = centre + rng.normal(0, 0.2 * length, 2)
        nucleus = _cell_radius(x, y, nucleus_centre, (0.4 * length, 0.33 * length), tilt, [])
        window = (slice(y0, y1), slice(x0, x1))
        closer = cell < radius[window]
        radius[window] = np.where(closer, cell, radius[window])
        owner[window] = np.where(closer, index, owner[window])
        nucleus_radius[window] = np.minimum(nucleus_radius[window],
                                            np.where(cell < 1.0, nucleus, np.inf))
    return Culture(radius=radius, nucleus_radius=nucleus_radius, owner=owner,
                   num_cells=num_cells)


def _inside(radius, edge_width):
    """Soft inside fraction of the outline at normalised radius 1."""
    return np.clip((1.0 - radius) / edge_width + 0.5, 0.0, 1.0).astype(np.float32)


def render_phase_contrast(culture, rng, noise=True):
    """Phase-contrast image [H, W] on 0..1: grey medium, dark granular cells, bright halos;
    camera noise unless noise=False."""
    shape = culture.radius.shape
    scale = shape[0] / 256
    cell = _inside(culture.radius, 0.12)
    nucleus = _inside(culture.nucleus_radius, 0.15) * cell
    halo = np.exp(-((culture.radius - 1.15) / 0.12) ** 2) * (1.0 - cell)
    medium = 0.5 + 0.03 * smooth_noise(rng, shape, 40 * scale)
    granules = 0.05 * smooth_noise(rng, shape, 1.0 * scale)
    inside = rng.uniform(0.3, 0.4) + granules - 0.08 * nucleus
    image = medium * (1.0 - cell) + inside * cell + rng.uniform(0.3, 0.45) * halo
    image = gaussian_blur(image, 0.6 * scale)
    camera_noise = 0.015 * rng.standard_normal(shape, dtype=np.float32)
    if noise:
        image += camera_noise
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_fluorescence(culture, rng, noise=True):
    """GFP intensity [H, W] on 0..1: a random 30-70 % of the cells glow with their own
    brightness (nuclei a little brighter), blurred, on a weak autofluorescent background with
    camera noise (none with noise=False)."""
    shape = culture.radius.shape
    expressing = rng.uniform(size=culture.num_cells) < rng.uniform(0.3, 0.7)
    expressing[rng.integers(culture.num_cells)] = True  # at least one cell glows
    brightness = np.where(expressing, rng.uniform(0.3, 1.0, culture.num_cells), 0.0)
    per_pixel = np.where(culture.owner >= 0, brightness[np.maximum(culture.owner, 0)], 0.0)
    cell = _inside(culture.radius, 0.12)
    nucleus = _inside(culture.nucleus_radius, 0.15)
    intensity = per_pixel * cell * (0.85 + 0.2 * nucleus)
    intensity = gaussian_blur(intensity.astype(np.float32), 1.5 * shape[0] / 256)
    camera_noise = 0.015 * rng.standard_normal(shape, dtype=np.float32)
    intensity += 0.02 + (camera_noise if noise else 0.0)
    return np.clip(intensity, 0.0, 1.0)


def gfp_to_rgb(intensity):
    """GFP intensity [H, W] on 0..1 -> [H, W, 3] RGB on 0..1: green, whitening slightly when
    saturated."""
    return np.stack([0.15 * intensity ** 2, intensity, 0.1 * intensity], axis=-1)
