"""The U-Net's convolutions with a faster kernel gradient on XLA's CPU backend.

    y = conv_general_dilated(x, kernel, strides, padding, dimension_numbers=...)

is `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)` signature). On the CPU
backend (`kernel_gradient_path()`, decided when the program is traced) a float32 NHWC/HWIO
convolution without dilation or groups gets a custom VJP: the input gradient is XLA's own, the
kernel gradient one matrix product per kernel tap. XLA:CPU computes the kernel gradient as one
convolution whose depth is the batch, several times slower than the forward at batch 1-4
(jax-ml/jax #31662, #23783, openxla/xla #34273). GPU and TPU keep XLA's kernels.

The per-tap products need no im2col gather: with the padded input [B, Hp, Wp, C] flattened to
rows [B Hp Wp, C] and the output gradient [B, Ho, Wo, F] zero-padded to [B, Hp, Wp, F] and
flattened the same way, tap (i, j) pairs output row r with input row r + i Wp + j, a contiguous
run of rows. A stride-s convolution is the sum of s x s stride-1 ones, one per phase of the
padded input (its rows and columns congruent to (p, q) mod s).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# The per-tap products pay where each is large: every convolution of the paper U-Net at batch 1
# has B H W C F = 2^28 multiply-adds per tap, and per layer the products took 0.3-0.6 x XLA's
# time (the stand-in step 24 % less); at 2^23-2^24 (the tiny config; 64 px, 64 channels) they
# took 0.9-1.8 x, so smaller convolutions keep XLA's kernel gradient.
GEMM_MIN_TAP_WORK = 2 ** 27


def kernel_gradient_path(backend=None):
    """'gemm' (per-tap matrix products) on the CPU backend, else 'xla'; `backend` defaults to
    jax.default_backend()."""
    return "gemm" if (backend or jax.default_backend()) == "cpu" else "xla"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """lax.conv_general_dilated; on CPU, float32 NHWC/HWIO convolutions without dilation or
    groups, of at least GEMM_MIN_TAP_WORK multiply-adds per tap (B H W C F), take the per-tap
    kernel gradient (same values within float32 rounding). Other dtypes (bfloat16 is the
    accelerator setting) keep XLA's."""
    strides = tuple(window_strides)
    plain = (lhs.ndim == 4 and lhs.dtype == rhs.dtype == jnp.float32
             and feature_group_count == 1 and batch_group_count == 1
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and precision is None and preferred_element_type is None
             and _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
             and math.prod(lhs.shape) * rhs.shape[-1] >= GEMM_MIN_TAP_WORK)
    if plain and kernel_gradient_path() == "gemm":
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
    dk = kernel_gradient(x, g, kernel.shape[:2], strides, padding)
    return input_vjp(g)[0], dk.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_gradient(x, g, kernel_size, strides, padding):
    """d/d kernel of sum(g * conv(x, kernel)): [kH, kW, C, F] float32, one matrix product
    [C, rows] @ [rows, F] per tap over contiguous rows of the padded input.

    x [B, H, W, C]; g [B, Ho, Wo, F], the output gradient; padding ((lo, hi), (lo, hi)) >= 0.
    """
    kh, kw = kernel_size
    sh, sw = strides
    c, f = x.shape[-1], g.shape[-1]
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    taps = {}
    for p in range(min(sh, kh)):
        for q in range(min(sw, kw)):
            phase = xp[:, p::sh, q::sw] if (sh, sw) != (1, 1) else xp
            hq, wq = phase.shape[1:3]
            offsets = {(i, j): (i - p) // sh * wq + (j - q) // sw
                       for i in range(p, kh, sh) for j in range(q, kw, sw)}
            rows = phase.shape[0] * hq * wq - max(offsets.values())
            gx = jnp.pad(g, ((0, 0), (0, hq - g.shape[1]), (0, wq - g.shape[2]), (0, 0)))
            gx = gx.reshape(-1, f)[:rows]
            xf = phase.reshape(-1, c)
            for tap, offset in offsets.items():
                taps[tap] = lax.dot_general(xf[offset:offset + rows], gx, (((0,), (0,)), ((), ())),
                                            preferred_element_type=jnp.float32)
    return jnp.stack([taps[i, j] for i in range(kh) for j in range(kw)]).reshape(kh, kw, c, f)
