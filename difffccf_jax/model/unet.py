"""The multi-head Chebyshev-graph U-Net (docs/method.md section 3), NHWC.

    model = model_from_config(config.model)
    params = init_params(model, key, image_size)
    out = model.apply({'params': params}, x, t, train=False)   # a UNetOutput

x [B, H, W, 4] = [cond_A, cond_B, x_t^A, x_t^B], t [B] int32. One encoder feeds a graph
bottleneck and two decoders with their own skip attention: the noise decoder (noise head) and
the fusion decoder (mask heads m1, m2 and the deformation head).
"""

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from difffccf_jax.model import control_grid, graph
from difffccf_jax.errors import UserError
from difffccf_jax.model.layers import (BlockSettings, OutputHead, ResBlock, SkipAttention, TimeEmbedding,
                                 conv3x3, downsample, timestep_embedding, upsample)

# The published model's fixed positional embedding (compatibility mode): 32 x 32 x 512.
COMPAT_BOTTLENECK = (32, 32, 512)
COMPAT_NORM_EPS = 1e-5
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class UNetOutput(NamedTuple):
    """Network outputs at input resolution, float32."""
    noise: jax.Array  # [B, H, W, 1] predicted noise
    m1: jax.Array  # [B, H, W, 1] fusion mask in [0, 1]
    m2: jax.Array  # [B, H, W, 1] fusion mask in [0, 1]
    deformation: jax.Array  # [B, H, W, 2] pixels; channel 0 along x (columns), 1 along y (rows)


class Encoder(nn.Module):
    """Per level: residual blocks, then a stride-2 downsample except at the last level.

    Returns the encoded map and one skip per level (taken after the level's last layer).
    """
    channels: Sequence[int]
    num_res_blocks: int
    settings: BlockSettings

    @nn.compact
    def __call__(self, x, temb, train):
        skips = []
        for level, features in enumerate(self.channels):
            for i in range(self.num_res_blocks):
                x = ResBlock(features, self.settings, name=f"level{level}_res{i}")(x, temb, train)
            if level < len(self.channels) - 1:
                x = downsample(features, self.settings.dtype, f"level{level}_down")(x)
            skips.append(x)
        return x, skips


class Middle(nn.Module):
    """Residual blocks at the bottleneck width."""
    num_blocks: int
    settings: BlockSettings

    @nn.compact
    def __call__(self, x, temb, train):
        for i in range(self.num_blocks):
            x = ResBlock(x.shape[-1], self.settings, name=f"res{i}")(x, temb, train)
        return x


class Decoder(nn.Module):
    """One decoder: x = h + att(last skip); decoder level j (encoder level l = L-1-j) runs
    residual blocks to the channels of encoder level l-1 (model_channels at j = L-1), upsamples
    when j > 0, then adds the attended skip of level l-1, cropping x to its size first.

    h [B, h, w, C_last] and the encoder skips -> [B, H', W', model_channels].
    """
    channels: Sequence[int]
    model_channels: int
    num_res_blocks: int
    attention_reduction: int
    settings: BlockSettings

    def attend(self, x, skip, level):
        x = x[:, :skip.shape[1], :skip.shape[2]]
        return x + SkipAttention(self.attention_reduction, self.settings.dtype,
                                 name=f"skip_attention{level}")(skip)

    @nn.compact
    def __call__(self, h, skips, temb, train):
        x = self.attend(h, skips[-1], len(skips) - 1)
        for j in range(len(self.channels)):
            level = len(self.channels) - 1 - j
            features = self.channels[level - 1] if level > 0 else self.model_channels
            for i in range(self.num_res_blocks):
                x = ResBlock(features, self.settings, name=f"level{j}_res{i}")(x, temb, train)
            if j > 0:
                x = upsample(features, self.settings.dtype, f"level{j}_up")(x)
            if level > 0:
                x = self.attend(x, skips[level - 1], level - 1)
        return x


def bottleneck_tokens(h, compat):
    """h plus the grid position embedding; scrambled as published when `compat`. [B, H, W, C]."""
    if compat and h.shape[1:] != COMPAT_BOTTLENECK:
        raise UserError(
            f"model.compat: the published model's fixed position embedding needs a "
            f"{COMPAT_BOTTLENECK} bottleneck (image size 256 with the paper channels), "
            f"got {tuple(h.shape[1:])}")
    h = h + jnp.asarray(graph.grid_position_embedding(*h.shape[1:]), h.dtype)
    return graph.scramble_tokens(h) if compat else h


class UNet(nn.Module):
    """The multi-head U-Net: __call__(x [B, H, W, in_channels], t [B], train) -> UNetOutput.

    Any H, W work (the decoder crops to the skips' sizes and the outputs to H x W); sizes
    divisible by 2^(levels-1) need no cropping. compat reproduces the published model: scrambled
    bottleneck tokens, a 32 x 32 x 512 bottleneck only, deformation = [m1, m2] (no own head).
    deformation_grid: the deformation head's field on G x G control points (`deformation_field`),
    0 for one per pixel; deformation_features: the channels of the deformation head's own
    encoder (`RegistrationBranch`), or () for a head on the fusion decoder's features. The
    fields have no defaults: `model_from_config` builds it from config.model.
    """
    in_channels: int
    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: int
    dropout: float
    time_embed_mult: int
    norm_groups: int
    norm_eps: float
    attention_reduction: int
    graph_heads: int
    graph_ffn_width: int
    cheb_order: int
    laplacian: str
    max_displacement: float
    deformation_grid: int
    deformation_features: Sequence[int]
    mask_prior: float
    compat: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, t, train=False):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be [B, H, W, {self.in_channels}], got {x.shape}")
        channels = tuple(self.model_channels * m for m in self.channel_mult)
        settings = BlockSettings(self.norm_groups, self.norm_eps, self.dropout, self.dtype)
        temb = TimeEmbedding(self.model_channels * self.time_embed_mult, self.dtype,
                             name="time_embed")(timestep_embedding(t, self.model_channels))

        h = conv3x3(channels[0], self.dtype, "input_conv")(x.astype(self.dtype))
        h, skips = Encoder(channels, self.num_res_blocks, settings, name="encoder")(h, temb, train)
        h = Middle(self.num_res_blocks, settings, name="middle")(h, temb, train)
        h = graph.GraformerLayer(self.graph_heads, self.graph_ffn_width, self.cheb_order,
                                 graph.stencil_graph(self.laplacian), self.norm_eps, self.dtype,
                                 name="graformer")(bottleneck_tokens(h, self.compat))

        def decoder(name):
            return Decoder(channels, self.model_channels, self.num_res_blocks,
                           self.attention_reduction, settings, name=name)

        height, width = x.shape[1:3]
        noise_features = decoder("noise_decoder")(h, skips, temb, train)[:, :height, :width]
        fusion_features = decoder("fusion_decoder")(h, skips, temb, train)[:, :height, :width]

        noise = OutputHead(1, settings, name="noise_head")(noise_features)
        m1_logit = OutputHead(1, settings, name="mask1_head")(fusion_features)
        m1 = nn.sigmoid(m1_logit + luma_mask_prior(x, self.mask_prior))
        m2 = nn.sigmoid(OutputHead(1, settings, name="mask2_head")(fusion_features))
        if self.compat:
            deformation = jnp.concatenate([m1, m2], axis=-1)
        else:
            # Zero-initialised: training starts from the identity transform.
            if self.deformation_features:
                raw = RegistrationBranch(self.deformation_features, settings,
                                         name="deformation_head")(x)
            else:
                raw = OutputHead(2, settings, nn.initializers.zeros, name="deformation_head")(
                    fusion_features)
            deformation = deformation_field(raw, self.max_displacement, self.deformation_grid)
        return UNetOutput(noise, m1, m2, deformation)


class RegistrationBranch(nn.Module):
    """The deformation head with its own encoder: the network input's two conditions (in the
    registration pass A and B_Y) through stride-2 3 x 3 convolutions with `features` channels
    (GroupNorm, SiLU), a zero-initialised 3 x 3 convolution to 2 channels ('conv'), resized
    bilinearly to the input's size: the raw field [B, H, W, 2] of `deformation_field`.

    Its parameters get gradient from the registration terms only, so Adam's per-parameter
    normalisation gives them full steps however large the noise and quality terms are; a head on
    the shared decoder learnt nothing beside them (docs/method.md section 7)."""
    features: Sequence[int]
    settings: BlockSettings

    @nn.compact
    def __call__(self, x):
        dtype = self.settings.dtype
        h = x[..., :2].astype(dtype)
        for level, features in enumerate(self.features):
            h = downsample(features, dtype, f"down{level}")(h)
            h = nn.silu(nn.GroupNorm(num_groups=math.gcd(self.settings.norm_groups, features),
                                     epsilon=self.settings.norm_eps, use_fast_variance=False,
                                     dtype=dtype, name=f"norm{level}")(h))
        raw = conv3x3(2, dtype, "conv", nn.initializers.zeros)(h).astype(jnp.float32)
        return jax.image.resize(raw, x.shape[:3] + (2,), "linear")


def deformation_field(raw, max_displacement, grid):
    """The field [B, H, W, 2] (pixels) of the deformation head's raw output [B, H, W, 2]:
    max_displacement * tanh(raw) per pixel (grid 0), or with a grid of G x G control points the
    least-squares projection of raw onto them, bounded by max_displacement * tanh and
    interpolated bilinearly back to every pixel (`control_grid.field_to_grid`)."""
    if not grid:
        return max_displacement * jnp.tanh(raw)
    control = max_displacement * jnp.tanh(control_grid.field_to_grid(raw, grid))
    return control_grid.grid_to_field(control, *raw.shape[1:3])


def luma_mask_prior(x, slope):
    """slope * (x_t^A - x_t^B) from the network input x [B, H, W, 4], [B, H, W, 1]: a logit
    offset of m1 that makes an untrained network a soft maximum rule (m1 -> 1 where A is the
    brighter source). With the shared noise of both trajectories x_t^A - x_t^B =
    sqrt(abar_t) (A' - B') in training and sampling alike, whatever the stage's conditions."""
    return slope * (x[..., 2:3] - x[..., 3:4]).astype(jnp.float32)


def _check(condition, field, expected, value):
    if not condition:
        raise UserError(f"config field model.{field}: expected {expected}, got {value!r}")


def model_from_config(model_config):
    """The UNet of a `config.model` ConfigDict, after checking its fields.

    model.compat also selects the published Laplacian ('unnormalized'), norm eps 1e-5 and no
    mask prior.
    """
    c = model_config
    channels = [c.model_channels * m for m in c.channel_mult]
    _check(c.model_channels > 0 and c.model_channels % 2 == 0, "model_channels",
           "an even positive number (sin-cos time embedding)", c.model_channels)
    _check(len(channels) >= 1 and min(channels) > 0, "channel_mult", "positive multipliers",
           c.channel_mult)
    _check(all(ch % c.norm_groups == 0 for ch in channels + [c.model_channels]), "norm_groups",
           f"a divisor of every channel count {sorted(set(channels + [c.model_channels]))}",
           c.norm_groups)
    _check(channels[-1] % c.graph_heads == 0 and channels[-1] % 4 == 0, "graph_heads",
           f"a divisor of the bottleneck width {channels[-1]} (itself a multiple of 4)",
           c.graph_heads)
    _check(c.cheb_order >= 1, "cheb_order", "at least 1", c.cheb_order)
    _check(c.laplacian in graph.LAPLACIANS, "laplacian", f"one of {sorted(graph.LAPLACIANS)}",
           c.laplacian)
    _check(c.dtype in DTYPES, "dtype", f"one of {sorted(DTYPES)}", c.dtype)
    _check(0.0 <= c.dropout < 1.0, "dropout", "a rate in [0, 1)", c.dropout)
    mask_prior = float(c.mask_prior)
    _check(mask_prior >= 0.0, "mask_prior", "a slope >= 0", mask_prior)
    deformation_grid = int(c.deformation_grid)
    _check(deformation_grid == 0 or deformation_grid >= 2, "deformation_grid",
           "0 (a field per pixel) or at least 2 control points a side", deformation_grid)
    return UNet(
        in_channels=c.in_channels, model_channels=c.model_channels,
        channel_mult=tuple(c.channel_mult), num_res_blocks=c.num_res_blocks, dropout=c.dropout,
        time_embed_mult=c.time_embed_mult, norm_groups=c.norm_groups,
        norm_eps=COMPAT_NORM_EPS if c.compat else c.norm_eps,
        attention_reduction=c.attention_reduction, graph_heads=c.graph_heads,
        graph_ffn_width=c.graph_ffn_width, cheb_order=c.cheb_order,
        laplacian="unnormalized" if c.compat else c.laplacian,
        max_displacement=c.max_displacement, deformation_grid=deformation_grid,
        deformation_features=tuple(c.deformation_features),
        mask_prior=0.0 if c.compat else mask_prior,
        compat=c.compat, dtype=DTYPES[c.dtype])


def init_params(model, key, image_size, batch=1):
    """Float32 parameters of `model` for images of `image_size` (int or (H, W)), one jit.

    The initialisers draw from `rbg_key(key)`.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = jnp.zeros((batch, height, width, model.in_channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)

    def init(key):
        return model.init({"params": rbg_key(key)}, x, t, train=False)["params"]

    return jax.jit(init)(key)


def rbg_key(key):
    """An 'rbg' key seeded by `key`, for the initialisers and dropout: XLA's RngBitGenerator
    draws several times faster than threefry on CPU (dropout in the paper stand-in step at batch
    1: 4.85 s with threefry, 4.58 s with rbg). The same key gives the same values on a given
    backend."""
    return jax.random.key(jax.random.bits(key, (), jnp.uint32), impl="rbg")
