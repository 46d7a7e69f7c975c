"""The sizes pairs are fused at: size buckets, padding to them, cropping back, tiles.

Every pair is padded at the bottom and right to its size bucket (`bucket_size`), each source
with its own background (`images.pad_with_background`: the median of its border pixels), and
every output is cropped back to the pair's own size. The sampler compiles once per bucket (and
batch size), so a folder of many sizes compiles a handful of programs. Each side is bucketed on
its own: up to the tile, to the next power-of-two multiple of the U-Net's size multiple (the
image shrunk 2^(levels - 1) times at the bottleneck); above the tile, where the network runs in
tile x tile windows (inference/tiling.py) and its cost grows with the number of windows, to the
next multiple of half a tile. Padding at the bottom and right keeps the pixels near the top-left
corner, where the region rules read their reference values, the image's own.
"""

from difffccf_jax.data import images
from difffccf_jax.errors import UserError
from difffccf_jax.inference import sampling, tiling
from difffccf_jax.model import unet

# The default tile, in bottleneck pixels a side: above it the network runs in tiles. With the
# tiny config on CPU a 512 px pair (64 x 64 bottleneck pixels) peaks at 1.3 GiB, a 1024 px pair
# (128 x 128) at 13.4 GiB, or 1.6 GiB in 512 px tiles.
TILE_BOTTLENECK = 64
# A B whose aspect ratio is A's (each side within 2 pixels, or 2 % on a side of over 100 pixels,
# of A's when scaled) is resized to A's size; another one is refused.
ASPECT_TOLERANCE = 2


def size_multiple(model_config):
    """2^(levels - 1): how many times the U-Net shrinks an image to its bottleneck."""
    return 2 ** (len(model_config.channel_mult) - 1)


def round_up(length, step):
    """`length` rounded up to a multiple of `step`."""
    return -(-length // step) * step


def bucket_side(length, multiple, tile):
    """The padded length of one side: the smallest multiple * 2^k >= length (at most the tile),
    or above the tile the next multiple of half a tile (itself a multiple of `multiple`)."""
    if length > tile:
        return round_up(length, round_up(tile // 2, multiple))
    side = multiple
    while side < length:
        side *= 2
    return min(side, tile)


def bucket_size(height, width, multiple, tile):
    """(height, width) of the bucket a height x width pair is padded to."""
    return bucket_side(height, multiple, tile), bucket_side(width, multiple, tile)


def check_resize(resize_to):
    """UserError for a --resize that is not a positive size (None: no resizing)."""
    if resize_to is not None and resize_to < 1:
        raise UserError(f"--resize {resize_to}: expected a positive number of pixels")


def check_tile(tile, multiple):
    """UserError for a --tile the model cannot use."""
    if tile < 1 or tile % multiple:
        raise UserError(f"--tile {tile}: expected a positive multiple of {multiple}, the factor "
                        "by which the checkpoint's U-Net shrinks an image to its bottleneck")


def compat_size_error(model_config, size, padded, tile, multiple):
    """The reason the published model (model.compat), whose fixed position embedding needs a
    32 x 32 bottleneck, cannot fuse a pair of `size` padded to `padded` (both (H, W)); None when
    it can (or the model is not the published one)."""
    side = unet.COMPAT_BOTTLENECK[0] * multiple
    if not model_config.compat or tiling.window_shape(*padded, tile) == (side, side):
        return None
    padding = "" if padded == size else f", padded to {padded[1]}x{padded[0]}"
    return (f"{size[1]}x{size[0]}{padding}: the published model (model.compat) fuses "
            f"{side}x{side} images only (its fixed {unet.COMPAT_BOTTLENECK[0]}x"
            f"{unet.COMPAT_BOTTLENECK[1]} bottleneck); pass --resize {side}")


def aspect_error(a_size, b_size, tolerance=ASPECT_TOLERANCE):
    """Why B of b_size cannot be resized to A's a_size (both (H, W)): their aspect ratios
    differ (either side of B scaled by the other side's factor misses A's by more than
    max(tolerance pixels, tolerance percent)); None when they match."""
    (a_height, a_width), (b_height, b_width) = a_size, b_size
    misses = (abs(b_height * a_width / b_width - a_height) / max(1.0, a_height / 100),
              abs(b_width * a_height / b_height - a_width) / max(1.0, a_width / 100))
    if max(misses) <= tolerance:
        return None
    return (f"A is {a_width}x{a_height} but B is {b_width}x{b_height}: another aspect ratio, "
            "so B is not the same view as A")


def pad_pair(a, b, height, width):
    """(a, b) padded at the bottom and right to height x width, each with its own background."""
    return (images.pad_with_background(a, height, width),
            images.pad_with_background(b, height, width))


def crop(out, index, height, width):
    """Pair `index` of a batch's SampleOutput (NumPy; fields not fetched are None) cropped to its
    top-left height x width."""
    return sampling.SampleOutput(*(None if field is None else field[index, :height, :width]
                                   for field in out))


def is_tiled(padded, tile):
    """Whether the network runs in more than one window on a pair padded to `padded` (H, W)."""
    return len(tiling.windows(*padded, tile)) > 1
