"""The U-Net's convolutions with a faster kernel gradient on XLA's CPU backend.

    y = conv_general_dilated(x, kernel, strides, padding, dimension_numbers=...)

is `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)` signature). XLA:CPU
computes a convolution's kernel gradient as one convolution whose depth is the batch, several
times slower than the forward at batch 1-3 (jax-ml/jax #31662, #23783, openxla/xla #34273) and
about as fast as PyTorch's from a depth of 4. So on the CPU backend (`kernel_gradient_path()`,
decided when the program is traced) a float32 NHWC/HWIO convolution without dilation or groups
whose batch is under MIN_DEPTH gets a custom VJP: the output rows are cut into strips, each
strip with the input rows it reads, and the strips are stacked on the batch axis, so XLA's own
kernel gradient runs at depth MIN_DEPTH or more. The sum over the batch is the sum over the
strips, so the values are XLA's within float32 rounding. GPU and TPU keep XLA's kernels.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# From this batch on XLA:CPU's kernel gradient (compiled by `compilation.jit`) is as fast as it
# gets (256 px at 64 channels, batch 4: 0.24 s, PyTorch 0.25 s; batch 1: 0.15 s, in 4 strips
# 0.07 s).
MIN_DEPTH = 4
# Strided convolutions gained up to 8 strips at batch 1 (128 px, 128 channels: 0.050 s, in 8
# strips 0.016 s).
MIN_STRIDED_DEPTH = 8


def kernel_gradient_path(backend=None):
    """'strips' on the CPU backend, else 'xla'; `backend` defaults to jax.default_backend()."""
    return "strips" if (backend or jax.default_backend()) == "cpu" else "xla"


def strip_count(batch, strides):
    """How many strips a batch of `batch` is cut into: 1 from MIN_DEPTH on."""
    if batch >= MIN_DEPTH:
        return 1
    depth = MIN_DEPTH if tuple(strides) == (1, 1) else MIN_STRIDED_DEPTH
    return -(-depth // batch)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """lax.conv_general_dilated; on CPU, float32 NHWC/HWIO convolutions without dilation or
    groups and with a batch under MIN_DEPTH take the kernel gradient in strips (same values
    within float32 rounding). Other dtypes (bfloat16 is the accelerator setting) keep XLA's."""
    strides = tuple(window_strides)
    plain = (lhs.ndim == 4 and lhs.dtype == rhs.dtype == jnp.float32
             and feature_group_count == 1 and batch_group_count == 1
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and precision is None and preferred_element_type is None
             and _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
             and strip_count(lhs.shape[0], strides) > 1)
    if plain and kernel_gradient_path() == "strips":
        pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
                if isinstance(padding, str) else padding)
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        if min(min(p) for p in pads) >= 0:
            return conv(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers):
    if dimension_numbers is None:
        return False
    return (lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs_shape, rhs_shape, NHWC))


def _xla_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, strides, padding):
    """x [B, H, W, C] correlated with kernel [kH, kW, C, F], `strides` (sH, sW), explicit
    `padding` ((lo, hi), (lo, hi)) >= 0: [B, Ho, Wo, F], XLA's forward and input gradient,
    the kernel gradient of `kernel_gradient`."""
    return _xla_conv(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _xla_conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), x)
    dk = kernel_gradient(x, g, kernel.shape[:2], strides, padding,
                         strip_count(x.shape[0], strides))
    return input_vjp(g)[0], dk.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_gradient(x, g, kernel_size, strides, padding, strips):
    """d/d kernel of sum(g * conv(x, kernel)): [kH, kW, C, F], XLA's kernel gradient of the
    output rows cut into `strips` strips stacked on the batch axis.

    x [B, H, W, C]; g [B, Ho, Wo, F], the output gradient; padding ((lo, hi), (lo, hi)) >= 0.
    The last strip is completed with zero gradient rows, which add nothing; an output of fewer
    rows than `strips` gets one strip per row.
    """
    (kh, _), (sh, _) = kernel_size, strides
    batch, out_rows = g.shape[:2]
    rows = -(-out_rows // strips)  # output rows per strip
    strips = -(-out_rows // rows)  # none left empty where there are fewer rows than strips
    span = (rows - 1) * sh + kh  # the input rows one strip reads
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    short = (strips * rows - 1) * sh + kh - xp.shape[1]
    xp = jnp.pad(xp, ((0, 0), (0, max(short, 0)), (0, 0), (0, 0)))
    x_strips = jnp.concatenate([xp[:, i * rows * sh:i * rows * sh + span]
                                for i in range(strips)])
    g = jnp.pad(g, ((0, 0), (0, strips * rows - out_rows), (0, 0), (0, 0)))
    g_strips = g.reshape(batch, strips, rows, *g.shape[2:]).swapaxes(0, 1).reshape(
        strips * batch, rows, *g.shape[2:])
    kernel = jnp.zeros((*kernel_size, x.shape[-1], g.shape[-1]), x.dtype)
    _, kernel_vjp = jax.vjp(lambda k: _xla_conv(x_strips, k, strides, ((0, 0), (0, 0))), kernel)
    return kernel_vjp(g_strips)[0]
