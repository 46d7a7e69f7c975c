"""Evaluating the U-Net in overlapping tiles, so that its bottleneck's graph attention, whose
memory and time grow with the square of the bottleneck's pixel count, fits on large images.

`TiledNetwork(model, tile)` has the model's `apply(variables, x, t, train)`. An input of at most
tile x tile pixels goes through the model as it is. A larger one is cut into overlapping windows
of tile x tile (`windows`; min(tile, H) x min(tile, W)), evaluated one after another (lax.map:
one window's attention in memory at a time), and every output is the blend of the windows'
outputs with weights that rise linearly from a window edge inside the image across the overlap
(`blend_weights`). Only the network is tiled: the sampler's noise, chroma regions, their
statistics and the registration warp stay whole-image.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OVERLAP_DIVISOR = 4  # neighbouring windows share at least tile // 4 pixels


def tile_starts(length, tile, overlap):
    """Offsets of the fewest windows of `tile` pixels, evenly spread, that cover [0, length) with
    at least `overlap` pixels (up to rounding) shared by neighbours; [0] when length <= tile."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


def window_shape(height, width, tile):
    """(h, w) of the network's input windows for a height x width input."""
    if height <= tile and width <= tile:
        return height, width
    return min(tile, height), min(tile, width)


def windows(height, width, tile):
    """[(top, left)] of the windows of `window_shape` covering a height x width input, row by
    row; one window, the whole input, when it fits in tile x tile."""
    if height <= tile and width <= tile:
        return [(0, 0)]
    overlap = tile // OVERLAP_DIVISOR
    return [(top, left) for top in tile_starts(height, tile, overlap)
            for left in tile_starts(width, tile, overlap)]


def edge_ramp(start, size, length, overlap):
    """[size] weights of the window [start, start + size) of an axis of `length` pixels:
    (k + 1) / (overlap + 1) rising from a window edge inside the axis, else 1."""
    k = np.arange(size)
    weight = np.ones(size)
    if start > 0:
        weight = np.minimum(weight, (k + 1) / (overlap + 1))
    if start + size < length:
        weight = np.minimum(weight, (size - k) / (overlap + 1))
    return weight


def blend_weights(height, width, tile):
    """[K, h, w, 1] float32 weights of the K `windows`, the product of `edge_ramp`s along both
    axes divided by their sum over the windows at each pixel (they sum to 1 everywhere)."""
    rows, cols = window_shape(height, width, tile)
    overlap = tile // OVERLAP_DIVISOR
    starts = windows(height, width, tile)
    ramps = [np.outer(edge_ramp(top, rows, height, overlap), edge_ramp(left, cols, width, overlap))
             for top, left in starts]
    total = np.zeros((height, width))
    for ramp, (top, left) in zip(ramps, starts):
        total[top:top + rows, left:left + cols] += ramp
    return np.stack([ramp / total[top:top + rows, left:left + cols]
                     for ramp, (top, left) in zip(ramps, starts)])[..., None].astype(np.float32)


def blend(values, weights, starts, height, width):
    """[B, height, width, C]: the windows' values [K, B, h, w, C] times their weights
    [K, h, w, 1], added up at their offsets `starts`."""
    rows, cols = values.shape[2:4]
    out = jnp.zeros(values.shape[1:2] + (height, width) + values.shape[4:], values.dtype)
    for k, (top, left) in enumerate(starts):
        out = out.at[:, top:top + rows, left:left + cols].add(weights[k] * values[k])
    return out


@dataclasses.dataclass(frozen=True)
class TiledNetwork:
    """`model` (a unet.UNet) evaluated in tile x tile windows where its input is larger."""
    model: Any
    tile: int

    def apply(self, variables, x, t, train=False):
        """The model's outputs for x [B, H, W, C], t [B], blended from the windows' outputs."""
        height, width = x.shape[1:3]
        starts = windows(height, width, self.tile)
        if len(starts) == 1:
            return self.model.apply(variables, x, t, train=train)
        rows, cols = window_shape(height, width, self.tile)
        crops = jnp.stack([x[:, top:top + rows, left:left + cols] for top, left in starts])
        outputs = jax.lax.map(lambda crop: self.model.apply(variables, crop, t, train=train),
                              crops)
        weights = blend_weights(height, width, self.tile)
        return type(outputs)(*(blend(field, weights, starts, height, width)
                               for field in outputs))
