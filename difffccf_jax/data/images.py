"""Reading and writing image files: 8-bit arrays in, atomically written files out.

`read_image` returns uint8 [H, W] (grey) or [H, W, 3] (RGB) whatever the file's pixel format,
or raises UserError naming the file. Writing goes through `difffccf_jax.files.write_files`.
`resize` and `pad_with_background` (with `border_median`, the background) change an array's
size.
"""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from difffccf_jax.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_name(name):
    """True for visible files with an image extension (hidden and temporary files are not)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _to_array(image, path):
    """uint8 [H, W] or [H, W, 3] of an opened PIL image (palette, alpha, CMYK, 16-bit handled)."""
    mode = image.mode
    if mode in ("L", "1", "LA", "La"):
        return np.asarray(image.convert("L"))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.min() < 0 or values.max() > 65535:
            raise UserError(f"{path}: 32-bit integer image with values outside 0..65535; "
                            "expected an 8-bit or 16-bit image")
        return np.rint(values / 257.0).astype(np.uint8)  # 16-bit levels to 8-bit
    if mode == "F":
        raise UserError(f"{path}: floating-point image (mode F) is not supported; "
                        "expected an 8-bit or 16-bit grey or RGB image")
    return np.asarray(image.convert("RGB"))  # RGB, RGBA, P, CMYK, YCbCr, ...


def is_16_bit(path):
    """True for a 16-bit (or 32-bit integer) image file, which `read_image` scales to 8 bits
    (levels / 257); reads the header only."""
    with Image.open(path) as image:
        return image.mode.startswith("I;16") or image.mode == "I"


def read_image(path):
    """uint8 [H, W] for grey files, [H, W, 3] RGB otherwise; UserError names a bad file."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_array(image, path)
    except FileNotFoundError as error:
        raise UserError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise UserError(f"{path}: not an image file, or its header is damaged (expected "
                        f"{', '.join(IMAGE_EXTENSIONS)})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{path}: unreadable or truncated image ({error})") from error


def channels_equal(rgb):
    """True when an [H, W, 3] image has R == G == B everywhere (a grey image stored as RGB)."""
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def resize(image, size):
    """uint8 [H, W] / [H, W, 3] or float32 [H, W] resized to size x size (an int) or to
    height x width (a pair), bilinear, antialiased when shrinking."""
    height, width = (size, size) if np.ndim(size) == 0 else size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def border_median(image, xp=np):
    """Per-channel median of the border pixels (first and last row and column) of image
    [..., H, W, C] -> [..., C]: an image's background, the value it is padded with (an object
    touching part of the border does not move it). xp: the array module (jax.numpy under jit)."""
    height, width = image.shape[-3:-1]
    border = np.ones((height, width), bool)
    border[1:-1, 1:-1] = False
    return xp.median(image[..., border, :], axis=-2)


def pad_with_background(image, height, width):
    """image [h, w, C] padded at the bottom and right to [height, width, C] with its
    `border_median` (cast to the image's dtype); the image itself when it has that size."""
    if height < image.shape[0] or width < image.shape[1]:
        raise ValueError(f"cannot pad an image of shape {image.shape} to {height} x {width}")
    if image.shape[:2] == (height, width):
        return image
    padded = np.empty((height, width, image.shape[2]), image.dtype)
    padded[...] = border_median(image).astype(image.dtype)
    padded[:image.shape[0], :image.shape[1]] = image
    return padded
