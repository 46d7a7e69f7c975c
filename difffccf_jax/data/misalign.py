"""Known misregistration: a small random affine motion plus a smooth elastic warp.

Displacement convention (shared with `warping.warp` and the network's deformation head):
a displacement field d is [H, W, 2] float32 in pixels, channel 0 along x (columns) and channel 1
along y (rows); warping an image by d samples it at (x + dx, y + dy), bilinearly, zero outside.

A misaligned image is made by sampling the aligned one through a motion u, which is analytic
(an affine map plus a few long-wavelength sinusoids): moved(q) = aligned(q + u(q)). The field
saved with a pair is the d that undoes this, so that warping the moved image by d realigns it:
moved(p + d(p)) = aligned(p), i.e. d(p) = -u(p + d(p)), solved by fixed-point iteration (a
contraction, since u's gradient is small). At 256 x 256 and strength 1 the largest component of
d over an image is about 3 pixels on average and rarely above 4 (in the corners, over
background). A strength s multiplies every range of the motion (angles, zoom, shear, shift and
elastic amplitude): small images need s > 1 for a misalignment of a pixel or more.
"""

import dataclasses

import numpy as np

from difffccf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Motion:
    """u(x, y) = linear @ ((x, y) - centre) + translation + sum of sinusoidal waves, in pixels.

    linear [2, 2] (the affine matrix minus the identity), centre [2], translation [2];
    waves: amplitudes [K, 2] (pixels, x and y), frequencies [K, 2] (cycles per pixel along x
    and y), phases [K].
    """
    linear: np.ndarray
    centre: np.ndarray
    translation: np.ndarray
    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray

    def __call__(self, x, y):
        """(u_x, u_y) at pixel coordinates x, y (float32 arrays of one shape)."""
        linear, centre = self.linear.tolist(), self.centre.tolist()
        translation = self.translation.tolist()
        dx, dy = x - centre[0], y - centre[1]
        ux = linear[0][0] * dx + linear[0][1] * dy + translation[0]
        uy = linear[1][0] * dx + linear[1][1] * dy + translation[1]
        for amplitude, frequency, phase in zip(self.amplitudes.tolist(),
                                               self.frequencies.tolist(), self.phases.tolist()):
            wave = np.sin((2 * np.pi * frequency[0]) * x + (2 * np.pi * frequency[1]) * y
                          + phase)
            ux += amplitude[0] * wave
            uy += amplitude[1] * wave
        return ux, uy


MAX_STRENGTH = 6.0  # up to here d's fixed-point iteration converges (a contraction)


def check_strength(strength):
    """Raises UserError unless 0 < strength <= MAX_STRENGTH."""
    if not 0 < strength <= MAX_STRENGTH:
        raise UserError(f"motion strength {strength} is outside (0, {MAX_STRENGTH}]")


def random_motion(rng, size, strength=1.0):
    """A small motion for a size x size image: at `strength` 1, rotation up to 0.6 degrees,
    scale and shear up to 1.2 % and 0.8 %, translation up to 1.2 pixels, and 2-3 elastic waves
    (wavelengths of a quarter to the whole image) of up to 0.5 pixels each (lengths scale with
    size / 256); every range is multiplied by `strength` (at most MAX_STRENGTH)."""
    check_strength(strength)
    scale = strength * size / 256
    angle = np.deg2rad(rng.uniform(-0.6, 0.6) * strength)
    zoom = rng.uniform(-0.012, 0.012, 2) * strength
    shear = rng.uniform(-0.008, 0.008) * strength
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = rotation @ np.array([[1.0 + zoom[0], shear], [0.0, 1.0 + zoom[1]]])
    num_waves = rng.integers(2, 4)
    wavelength = rng.uniform(0.25, 1.0, num_waves) * size
    direction = rng.uniform(0, 2 * np.pi, num_waves)
    frequencies = np.stack([np.cos(direction), np.sin(direction)], axis=1) / wavelength[:, None]
    return Motion(linear=affine - np.eye(2), centre=np.full(2, (size - 1) / 2),
                  translation=rng.uniform(-1.2, 1.2, 2) * scale,
                  amplitudes=rng.uniform(-0.5, 0.5, (num_waves, 2)) * scale,
                  frequencies=frequencies, phases=rng.uniform(0, 2 * np.pi, num_waves))


MEAN_ERROR_PX = (2.0, 4.0)  # `head_motion`: the range of its mean end-point error, pixels


def _rigid_elastic(size, angle, translation, amplitudes, frequencies, phases):
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Motion(linear=rotation - np.eye(2), centre=np.full(2, (size - 1) / 2),
                  translation=translation, amplitudes=amplitudes, frequencies=frequencies,
                  phases=phases)


def head_motion(rng, size, mean_error=MEAN_ERROR_PX):
    """The misregistration of two scans of one head, for a size x size image: a rigid motion
    (the head moved between the scans: a rotation about the image centre and a translation)
    plus a smooth elastic part (2-3 sinusoidal waves, wavelengths of a quarter to the whole
    image), with no change of scale (both scanners know their pixel size).

    Its shape is drawn first (rotation up to 3 degrees, translation up to 3 pixels per axis,
    waves of up to 0.5 pixels per axis, as at 128 px), then every length is scaled so that the
    mean over the image of |u| is a number drawn uniformly from `mean_error` (pixels; the mean
    end-point error of B before registration), whatever the size."""
    low, high = mean_error
    if not 0 < low <= high:
        raise UserError(f"mean misregistration {mean_error}: expected 0 < low <= high pixels")
    angle = np.deg2rad(rng.uniform(-3.0, 3.0)) * 128 / size  # as many pixels at any size
    translation = rng.uniform(-3.0, 3.0, 2)
    num_waves = rng.integers(2, 4)
    wavelength = rng.uniform(0.25, 1.0, num_waves) * size
    direction = rng.uniform(0, 2 * np.pi, num_waves)
    frequencies = np.stack([np.cos(direction), np.sin(direction)], axis=1) / wavelength[:, None]
    amplitudes = rng.uniform(-0.5, 0.5, (num_waves, 2))
    phases = rng.uniform(0, 2 * np.pi, num_waves)
    target = rng.uniform(low, high)
    x, y = pixel_grid(size)
    # The rotation's displacement is (R(angle) - I) p, linear in the angle to within angle^2 / 2
    # (0.14 % at 3 degrees): scaling every length scales the mean |u| alike. A second pass
    # removes the rest.
    for _ in range(2):
        motion = _rigid_elastic(size, angle, translation, amplitudes, frequencies, phases)
        ux, uy = motion(x, y)
        factor = target / float(np.mean(np.hypot(ux, uy)))
        angle, translation, amplitudes = (angle * factor, translation * factor,
                                          amplitudes * factor)
    return _rigid_elastic(size, angle, translation, amplitudes, frequencies, phases)


def pixel_grid(size):
    """(x, y) pixel coordinates [size, size] each, float32."""
    coordinates = np.arange(size, dtype=np.float32)
    return np.meshgrid(coordinates, coordinates, indexing="xy")


def _undoing_displacement(motion, x, y, ux, uy, iterations):
    """Solves d(p) = -u(p + d(p)) by fixed-point iteration from d = -u(p) (ux, uy = u(p)).
    Each iteration shrinks the error by about the motion's largest gradient (well below 1
    up to MAX_STRENGTH)."""
    dx, dy = -ux, -uy
    for _ in range(iterations):
        ux, uy = motion(x + dx, y + dy)
        dx, dy = -ux, -uy
    return np.stack([dx, dy], axis=-1).astype(np.float32)


def sample_bilinear(image, x, y):
    """Samples [H, W] or [H, W, C] `image` at float pixel coordinates x, y ([h, w] each),
    bilinearly, counting pixels outside the image as zero; float32."""
    height, width = image.shape[:2]
    channels = image.shape[2:]
    # One zero pixel before and two after each axis: clipped coordinates then index in range.
    padded = np.zeros((height + 3, width + 3) + channels, np.float32)
    padded[1:height + 1, 1:width + 1] = image
    flat = padded.reshape((height + 3) * (width + 3), -1)
    x = np.clip(x, -1.0, width).astype(np.float32) + 1.0
    y = np.clip(y, -1.0, height).astype(np.float32) + 1.0
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    index = y0.astype(np.int64) * (width + 3) + x0.astype(np.int64)

    def gather(offset):
        return np.take(flat, index + offset, axis=0)

    top = gather(0) * (1.0 - fx) + gather(1) * fx
    bottom = gather(width + 3) * (1.0 - fx) + gather(width + 4) * fx
    result = top * (1.0 - fy) + bottom * fy
    return result.reshape(x.shape + channels)


def apply_motion(image, motion, iterations=12):
    """(moved image, displacement): `image` [H, W(, C)] sampled at q + u(q), and the [H, W, 2]
    float32 field d with d(p) = -u(p + d(p)) that realigns it (module docstring)."""
    x, y = pixel_grid(image.shape[0])
    ux, uy = motion(x, y)
    moved = sample_bilinear(image, x + ux, y + uy)
    return moved, _undoing_displacement(motion, x, y, ux, uy, iterations)
