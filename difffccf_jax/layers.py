"""U-Net building blocks (SPEC section 3), NHWC: time embedding, residual block, down- and
upsampling, skip attention and output heads. Parameters are float32; `dtype` is the compute dtype.
"""

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp


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
                   kernel_init=kernel_init, name=name)


def conv1x1(features, dtype, name):
    return nn.Conv(features, (1, 1), dtype=dtype, name=name)


def downsample(features, dtype, name):
    """3 x 3 convolution, stride 2, padding 1: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]."""
    return nn.Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=dtype,
                   name=name)


def upsample(features, dtype, name):
    """Transposed 3 x 3 convolution, stride 2: [B, H, W, C] -> [B, 2H, 2W, C].

    Equals PyTorch's ConvTranspose2d(stride=2, padding=1, output_padding=1): the input is
    dilated by 2 and padded by k - 1 - padding = 1 before and 1 + output_padding = 2 after,
    then correlated with the kernel [3, 3, in, out], which holds PyTorch's weight
    [in, out, 3, 3] flipped in both spatial axes (published_mapping's 'conv_transpose' rule).
    """
    return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                            dtype=dtype, name=name)


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
