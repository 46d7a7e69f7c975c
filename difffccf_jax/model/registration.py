"""The registration pass and training's registration terms (docs/method.md sections 5 and 7):
the network's field from the clean pair (`predict_field`, shared by training and the sampler),
the warp's fill (each image's own background), and the similarity of A and the warped B summed
over B's channels (`registration_terms`).

Coordinates are corner-aligned pixel indices: pixel (row y, column x) sits at (x, y) with
x in 0..W-1 and y in 0..H-1. A displacement field u [B, H, W, 2] holds, per output pixel, the
shift in pixels along x (channel 0, columns) and along y (channel 1, rows); the deformation is
phi(x, y) = (x + u_x, y + u_y).
"""

import functools

import jax
import jax.numpy as jnp

from difffccf_jax.data import images
from difffccf_jax.model.filters import gaussian_blur
from difffccf_jax.model.similarity import similarity_loss
from difffccf_jax.model.warping import reduced_size, resize_field, warp


def pass_input(a, b):
    """The network input of the registration pass, [B, H, W, 4]: the clean pair as
    [A, B_Y, A, B_Y] (a [B, H, W, 1]; b [B, H, W, C], its first channel B's Y), shown at
    t = 0. Training (`losses.training_losses`) and the sampler use the same."""
    return jnp.concatenate([a, b[..., :1]] * 2, axis=-1)


def predict_field(network, a, b, size=0):
    """The registration pass: the field [B, H, W, 2] (pixels) that warps B onto A, from
    `network` (x [B, h, w, 4], t [B] -> UNetOutput) applied to the clean pair [A, B_Y, A, B_Y]
    at t = 0 (`pass_input`), shrunk to `size` pixels a side first (`reduced_size`;
    antialiased bilinear), the field then brought back to H x W by `resize_field`. Training and
    the sampler both call it. A fixed size shows the network the anatomy at one scale whatever
    the pair's pixel count."""
    height, width = a.shape[1:3]
    small = reduced_size(height, width, size)
    x = pass_input(a, b)
    if small != (height, width):
        x = jax.image.resize(x, (x.shape[0], *small, x.shape[-1]), "linear", antialias=True)
    out = network(x, jnp.zeros((a.shape[0],), jnp.int32))
    return resize_field(out.deformation, height, width)


def background(image):
    """The fill of `warp` for images [B, H, W, C]: each image's own background, the per-channel
    median of its border pixels (`images.border_median`), [B, 1, 1, C], without gradient.
    Black for PET on black, dark blue for a JET-mapped CT."""
    return jax.lax.stop_gradient(images.border_median(image, jnp)[:, None, None, :])


def blurred_and_warped(a, b, deformation, background, loss_config):
    """(A, B warped by `deformation`), both blurred by loss_config.similarity_blur first (so that
    the smoothing of bilinear interpolation adds little): what the similarity measures compare.
    `background` (broadcastable to b) comes in from outside (`background`)."""
    blur = functools.partial(gaussian_blur, sigma=loss_config.similarity_blur)
    return blur(a), warp(blur(b), deformation, background)


def registration_similarity(a, b, deformation, background, loss_config):
    """(MI term, correlation term) per image [B] of A against single-channel B warped by
    `deformation` (`blurred_and_warped`)."""
    return similarity_loss(*blurred_and_warped(a, b, deformation, background, loss_config),
                           loss_config)


def registration_terms(a, b, deformation, loss_config):
    """(MI term, correlation term) per pair [B] of the field `deformation` [B, H, W, 2]: A
    against each channel of B (YCrCb [B, H, W, 3]) warped by it with B's own background as fill
    (`background`), summed over the three channels. The same as `registration_similarity` per
    channel; the channels share one blur of A, one blur of B and one warp."""
    blurred_a, warped_b = blurred_and_warped(a, b, deformation, background(b), loss_config)
    mi, correlation = zip(*(similarity_loss(blurred_a, warped_b[..., c:c + 1], loss_config)
                            for c in range(b.shape[-1])))
    return sum(mi), sum(correlation)
