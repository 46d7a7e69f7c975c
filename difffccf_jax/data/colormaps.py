"""Colour maps that show an emission image as clinics display it: [H, W] on 0..1 ->
[H, W, 3] RGB on 0..1, black where there is no uptake.

| name         | colours from no to peak uptake                        | used for                 |
|--------------|-------------------------------------------------------|--------------------------|
| hot          | black, red, yellow, white (GNU Octave's hot)          | PET, SPECT (template)    |
| rainbow      | black, violet, blue, cyan, green, yellow, orange, red | SPECT (template)         |
| jet_on_black | JET, forced to black where there is no signal         | PET (phantom)            |

`hot` and `jet` are the tables of `color.colormap_lut`; `rainbow` is the nuclear-medicine
rainbow of clinical viewers (it starts from black, unlike JET, whose dark blue would tint the
whole background).
"""

import functools

import numpy as np

from difffccf_jax import color

# Per channel R, G, B: the knots (position in 0..1, value in 0..1) of a piecewise-linear map.
RAINBOW_KNOTS = (
    ((0.0, 0.0), (0.06, 0.0), (0.15, 0.35), (0.28, 0.0), (0.55, 0.0), (0.7, 1.0), (1.0, 1.0)),
    ((0.0, 0.0), (0.28, 0.0), (0.42, 0.9), (0.55, 0.85), (0.7, 1.0), (0.85, 0.45), (1.0, 0.0)),
    ((0.0, 0.0), (0.06, 0.0), (0.15, 0.5), (0.28, 1.0), (0.42, 1.0), (0.55, 0.0), (1.0, 0.0)),
)
NAMES = ("hot", "rainbow", "jet_on_black")
JET_BLACK_RAMP = (0.02, 0.06)  # jet_on_black: black below 0.02, full JET from 0.02 + 0.06 on


@functools.lru_cache(maxsize=None)
def lut(name):
    """[256, 3] uint8 RGB table of `name` ('hot', 'rainbow' or 'jet')."""
    if name != "rainbow":
        return color.colormap_lut(name)
    positions = np.arange(256) / 255.0
    table = np.stack([np.interp(positions, *zip(*knots)) for knots in RAINBOW_KNOTS], axis=1)
    table = color.to_uint8(table * 255.0)
    table.setflags(write=False)
    return table


def colorize(values, name):
    """Emission image [H, W] on 0..1 -> [H, W, 3] RGB on 0..1 through colour map `name`."""
    if name not in NAMES:
        raise ValueError(f"unknown colour map {name!r}; expected one of {', '.join(NAMES)}")
    levels = color.to_uint8(np.asarray(values) * 255.0)
    rgb = np.take(lut("jet" if name == "jet_on_black" else name), levels, axis=0)
    if name != "jet_on_black":
        return rgb * np.float32(1.0 / 255.0)
    start, width = JET_BLACK_RAMP
    return rgb * (np.clip((values - start) / width, 0.0, 1.0) / 255.0)[..., None]
