"""U-Net building blocks (docs/method.md section 3), NHWC: time embedding, residual block, down- and
upsampling, skip attention and output heads. Parameters are float32; `dtype` is the compute dtype.
"""

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from difffccf_jax.model import cpu_conv


class BlockSettings(NamedTuple):
    """What every normalised block shares."""
    norm_groups: int
    norm_eps: float
    dropout: float
    dtype: Any


def group_norm(settings, name):
    return nn.GroupNorm(num_groups=settings.norm_groups, epsilon=settings.norm_eps,
                        use_fast_variance=False, dtype=settings.dtype, name=name)


def conv3x3(features, dtype, name, kernel_init=nn.linear.default_kernel_init):
    """3 x 3 convolution, stride 1, zero padding 1 (PyTorch padding=1)."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                   kernel_init=kernel_init, name=name,
                   conv_general_dilated=cpu_conv.conv_general_dilated)


def conv1x1(features, dtype, name):
    return nn.Conv(features, (1, 1), dtype=dtype, name=name,
                   conv_general_dilated=cpu_conv.conv_general_dilated)


def downsample(features, dtype, name):
    """3 x 3 convolution, stride 2, padding 1: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]."""
    return nn.Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype,
                   name=name, conv_general_dilated=cpu_conv.conv_general_dilated)


def _conv_nhwc(x, kernel, padding):
    """Stride-1 correlation of x [B, H, W, C] with kernel [kH, kW, C, F]; padding per axis."""
    return cpu_conv.conv_general_dilated(x, kernel, (1, 1), padding,
                                         dimension_numbers=cpu_conv.NHWC)


def transposed_conv3x3_stride2(x, kernel):
    """Transposed 3 x 3 convolution with stride 2, [B, H, W, C] -> [B, 2H, 2W, F].

    Equals flax's ConvTranspose(strides (2, 2), padding ((1, 2), (1, 2))) with kernel
    [3, 3, C, F]: the input dilated by 2, padded by 1 before and 2 after, correlated with the
    kernel. Along each axis output 2m then takes kernel tap 1 at input m, and output 2m + 1
    taps 0 and 2 at inputs m and m + 1 (m + 1 = H is zero), so it is computed as four stride-1
    convolutions, one per output phase ("sub-pixel" form), interleaved. Its gradients are
    plain convolutions too, which XLA's CPU backend runs several times faster than the
    gradient of a dilated convolution.
    """
    even, odd = slice(1, 2), slice(0, 3, 2)  # the taps of even and odd outputs
    no_pad, pad_after = (0, 0), (0, 1)
    phases = [[_conv_nhwc(x, kernel[rows, cols], (row_pad, col_pad))
               for cols, col_pad in ((even, no_pad), (odd, pad_after))]
              for rows, row_pad in ((even, no_pad), (odd, pad_after))]
    b, h, w, f = phases[0][0].shape
    # [row phase][col phase] of [B, H, W, F] -> [B, H, 2 (row phase), W, 2 (col phase), F].
    stacked = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    return stacked.reshape(b, 2 * h, 2 * w, f)


class Upsample(nn.Module):
    """Transposed 3 x 3 convolution, stride 2, with bias: [B, H, W, C] -> [B, 2H, 2W, features].

    Equals PyTorch's ConvTranspose2d(stride=2, padding=1, output_padding=1) whose weight
    [in, out, 3, 3], flipped in both spatial axes, is the kernel [3, 3, in, out] here
    (published_mapping's 'conv_transpose' rule); the parameters (kernel, bias) and their
    initialisation are those of flax's nn.ConvTranspose.
    """
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.linear.default_kernel_init,
                            (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = transposed_conv3x3_stride2(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


def upsample(features, dtype, name):
    """The decoder's exact 2x upsampling (see Upsample)."""
    return Upsample(features, dtype, name=name)


def timestep_embedding(t, width):
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / half), i < half.

    t: [B] diffusion steps; returns [B, width] float32 (width even).
    """
    half = width // 2
    frequencies = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimeEmbedding(nn.Module):
    """Linear(model_channels -> width), SiLU, Linear(width -> width) of the sinusoid of t."""
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sinusoid):
        hidden = nn.silu(nn.Dense(self.width, dtype=self.dtype, name="hidden")(sinusoid))
        return nn.Dense(self.width, dtype=self.dtype, name="out")(hidden)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, Conv3x3; + Linear(SiLU(time embedding)); GroupNorm, SiLU, Dropout,
    Conv3x3; + shortcut (Conv1x1 when the channel count changes).

    x [B, H, W, C_in], temb [B, T] -> [B, H, W, features].
    """
    features: int
    settings: BlockSettings

    @nn.compact
    def __call__(self, x, temb, train):
        dtype = self.settings.dtype
        h = conv3x3(self.features, dtype, "conv1")(nn.silu(group_norm(self.settings, "norm1")(x)))
        h = h + nn.Dense(self.features, dtype=dtype, name="time_proj")(nn.silu(temb))[:, None, None]
        h = nn.silu(group_norm(self.settings, "norm2")(h))
        h = nn.Dropout(self.settings.dropout, deterministic=not train)(h)
        h = conv3x3(self.features, dtype, "conv2")(h)
        if x.shape[-1] != self.features:
            x = conv1x1(self.features, dtype, "shortcut")(x)
        return h + x


class SkipAttention(nn.Module):
    """Channel attention sigmoid(MLP(avgpool x) + MLP(maxpool x)) (MLP: shared 1x1 convs
    C -> C/reduction, ReLU, -> C) times spatial attention sigmoid(Conv1x1(C -> 1) x), times x.

    [B, H, W, C] -> [B, H, W, C].
    """
    reduction: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        fc1 = conv1x1(max(c // self.reduction, 1), self.dtype, "fc1")
        fc2 = conv1x1(c, self.dtype, "fc2")

        def mlp(pooled):
            return fc2(nn.relu(fc1(pooled)))

        channel = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2), keepdims=True))
                             + mlp(jnp.max(x, axis=(1, 2), keepdims=True)))
        spatial = nn.sigmoid(conv1x1(1, self.dtype, "spatial")(x))
        return channel * spatial * x


class OutputHead(nn.Module):
    """GroupNorm, SiLU, Conv3x3(C -> features): [B, H, W, C] -> [B, H, W, features] float32."""
    features: int
    settings: BlockSettings
    kernel_init: Callable = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x):
        h = nn.silu(group_norm(self.settings, "norm")(x))
        h = conv3x3(self.features, self.settings.dtype, "conv", self.kernel_init)(h)
        return h.astype(jnp.float32)
