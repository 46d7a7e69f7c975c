"""The published network in PyTorch (NCHW), with the published tensor names and behaviour.

Optional (`pip install -e '.[torch]'`); nothing else in the package imports it. It serves two
purposes: reading published state dicts (its `state_dict()` has exactly the tensor names and
shapes of tests/data/paper_unet_state_dict.json) and comparing frameworks. It always behaves
like the published model (docs/method.md section 3, "Compatibility mode"): the bottleneck
tokens are scrambled before the graph layer, the Chebyshev layer uses the unnormalised Laplacian
L = D - A, the positional embedding is the fixed sin-cos table of the bottleneck grid
(512 channels on 32 x 32 for the paper model), and the deformation field is [m1, m2].

    model = model_from_config(config.model, image_size=256).eval()
    noise, m1, m2, deformation = model(x, t)   # x [B, 4, H, W] float32, t [B] int64
"""

import functools
import itertools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


class TorchUNetOutput(NamedTuple):
    """The four heads, NCHW: noise [B, 1, H, W], m1 and m2 [B, 1, H, W] in [0, 1],
    deformation [B, 2, H, W] = [m1, m2] (the published behaviour)."""
    noise: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    deformation: torch.Tensor


def timestep_embedding(t, width):
    """Sinusoidal embedding [B, width] of integer steps t [B]: [cos(t f), sin(t f)] with
    f_i = exp(-ln(10000) i / half), i = 0..half-1."""
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs.to(t.device)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def positional_embedding(height, width, channels):
    """Fixed 2-D sin-cos embedding [1, height * width, channels] of a row-major pixel grid: the
    first half of the channels is [sin(row w), cos(row w)], the second half the same for the
    column, with w_i = 1 / 10000^(i / (channels / 4))."""
    quarter = channels // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")

    def encode(positions):
        args = positions.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    table = torch.cat([encode(rows), encode(cols)], dim=1)
    return table.to(torch.float32)[None]


@functools.lru_cache(maxsize=8)
def grid_adjacency(height, width, device="cpu", dtype=torch.float32):
    """Dense 4-neighbour adjacency [N, N] of a row-major height x width grid (N = H W)."""
    index = torch.arange(height * width, device=device).reshape(height, width)
    pairs = [(index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])]
    adjacency = torch.zeros(height * width, height * width, device=device, dtype=dtype)
    for first, second in pairs:
        adjacency[first.reshape(-1), second.reshape(-1)] = 1
        adjacency[second.reshape(-1), first.reshape(-1)] = 1
    return adjacency


@functools.lru_cache(maxsize=8)
def normalized_adjacency(height, width, device="cpu", dtype=torch.float32):
    """D~^-1/2 (A + I) D~^-1/2 [N, N]: the graph-convolution operator with self-loops."""
    with_loops = grid_adjacency(height, width, device, dtype) + torch.eye(
        height * width, device=device, dtype=dtype)
    scale = with_loops.sum(dim=1).rsqrt()
    return scale[:, None] * with_loops * scale[None, :]


@functools.lru_cache(maxsize=8)
def unnormalized_laplacian(height, width, device="cpu", dtype=torch.float32):
    """L = D - A [N, N] (the published Chebyshev operator; its spectrum reaches 8)."""
    adjacency = grid_adjacency(height, width, device, dtype)
    return torch.diag(adjacency.sum(dim=1)) - adjacency


class ResBlock(nn.Module):
    """GroupNorm, SiLU, Conv3x3; + Linear(SiLU(time embedding)); GroupNorm, SiLU, Dropout,
    Conv3x3; + shortcut (Conv1x1 when the width changes). [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_channels, out_channels, embed_width, dropout, groups, eps):
        super().__init__()
        self.conv1 = nn.Sequential(nn.GroupNorm(groups, in_channels, eps=eps), nn.SiLU(),
                                   nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(embed_width, out_channels))
        self.conv2 = nn.Sequential(nn.GroupNorm(groups, out_channels, eps=eps), nn.SiLU(),
                                   nn.Dropout(dropout),
                                   nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                         if in_channels != out_channels else nn.Identity())

    def forward(self, x, emb):
        h = self.conv1(x) + self.time_emb(emb)[:, :, None, None]
        return self.conv2(h) + self.shortcut(x)


class Downsample(nn.Module):
    """Conv3x3, stride 2, padding 1: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Transposed Conv3x3, stride 2, padding 1, output padding 1: exactly 2x larger."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1,
                                     output_padding=1)

    def forward(self, x):
        return self.op(x)


class EmbedSequential(nn.Sequential):
    """A sequence of layers; residual blocks also receive the time embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class SkipAttention(nn.Module):
    """Channel attention sigmoid(MLP(avgpool x) + MLP(maxpool x)) times spatial attention
    sigmoid(Conv1x1(x)), applied to x [B, C, H, W]; the MLP is Conv1x1 C -> C/r, ReLU, C/r -> C."""

    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        def mlp(pooled):
            return self.fc2(F.relu(self.fc1(pooled)))

        channel = torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True))
                                + mlp(x.amax(dim=(2, 3), keepdim=True)))
        return channel * torch.sigmoid(self.conv(x)) * x


class GraphConv(nn.Module):
    """One attention head's projection: weight [C_in, C_out], applied as Z @ weight."""

    def __init__(self, in_width, out_width):
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_width, out_width)))


class GraphAttention(nn.Module):
    """Per head h: G = Â Z W_h and softmax(G G^T / sqrt(d_h)) G (G is query, key and value);
    heads concatenated. Z [B, N, C] -> [B, N, C]."""

    def __init__(self, width, heads):
        super().__init__()
        self.linears = nn.ModuleList(GraphConv(width, width // heads) for _ in range(heads))

    def forward(self, z, adjacency):
        outputs = []
        for head in self.linears:
            g = adjacency @ (z @ head.weight)
            scores = g @ g.transpose(1, 2) / math.sqrt(g.shape[-1])
            outputs.append(torch.softmax(scores, dim=-1) @ g)
        return torch.cat(outputs, dim=-1)


class FeedForward(nn.Module):
    """Linear(C -> width), ReLU, Linear(width -> C) on tokens [B, N, C]."""

    def __init__(self, width, hidden):
        super().__init__()
        self.linear1 = nn.Linear(width, hidden)
        self.linear2 = nn.Linear(hidden, width)

    def forward(self, z):
        return self.linear2(F.relu(self.linear1(z)))


class ChebConv(nn.Module):
    """sum_k T_k(L) Z Theta_k with T_0 = I, T_1 = L, T_k = 2 L T_(k-1) - T_(k-2); no bias."""

    def __init__(self, width, order):
        super().__init__()
        self.Theta = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, width)))
            for _ in range(order))

    def forward(self, z, laplacian):
        basis = [z, laplacian @ z][:len(self.Theta)]
        while len(basis) < len(self.Theta):
            basis.append(2 * (laplacian @ basis[-1]) - basis[-2])
        return sum(term @ theta for term, theta in zip(basis, self.Theta))


class Graformer(nn.Module):
    """Pre-norm residual graph layer on tokens [B, N, C]: graph attention, FFN, ChebConv."""

    def __init__(self, width, heads, ffn_width, cheb_order, eps):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.mhga = GraphAttention(width, heads)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.ffn = FeedForward(width, ffn_width)
        self.ln3 = nn.LayerNorm(width, eps=eps)
        self.chebgc = ChebConv(width, cheb_order)

    def forward(self, z, height, width):
        adjacency = normalized_adjacency(height, width, str(z.device), z.dtype)
        laplacian = unnormalized_laplacian(height, width, str(z.device), z.dtype)
        z = z + self.mhga(self.ln1(z), adjacency)
        z = z + self.ffn(self.ln2(z))
        return z + self.chebgc(self.ln3(z), laplacian)


def _head(channels, groups, eps):
    """GroupNorm, SiLU, Conv3x3(C -> 1)."""
    return nn.Sequential(nn.GroupNorm(groups, channels, eps=eps), nn.SiLU(),
                         nn.Conv2d(channels, 1, 3, padding=1))


class TorchUNet(nn.Module):
    """The published multi-head graph U-Net. x [B, in_channels, H, W] with H = W = image_size,
    t [B] -> TorchUNetOutput. Level widths are model_channels * channel_mult; the bottleneck is
    image_size / 2^(levels - 1) pixels wide."""

    def __init__(self, *, image_size, in_channels, model_channels, channel_mult,
                 num_res_blocks, dropout, time_embed_mult, norm_groups, norm_eps,
                 attention_reduction, graph_heads, graph_ffn_width, cheb_order):
        super().__init__()
        levels = len(channel_mult)
        widths = [model_channels * mult for mult in channel_mult]
        embed = model_channels * time_embed_mult
        self.model_channels = model_channels
        self.bottleneck_size = image_size // 2 ** (levels - 1)

        def res(cin, cout):
            return EmbedSequential(ResBlock(cin, cout, embed, dropout, norm_groups, norm_eps))

        self.register_buffer("positional_embedding", positional_embedding(
            self.bottleneck_size, self.bottleneck_size, widths[-1]))
        self.time_embed = nn.Sequential(nn.Linear(model_channels, embed), nn.SiLU(),
                                        nn.Linear(embed, embed))
        self.inBlock = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        down, channels = [], model_channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                down.append(res(channels, width))
                channels = width
            if level < levels - 1:
                down.append(EmbedSequential(Downsample(width)))
        self.downBlock = nn.ModuleList(down)
        self.attention_block = nn.ModuleList(
            SkipAttention(width, attention_reduction) for width in widths)
        self.attention_block_1 = nn.ModuleList(
            SkipAttention(width, attention_reduction) for width in widths)
        self.middleBlock = nn.ModuleList(
            res(widths[-1], widths[-1]) for _ in range(num_res_blocks))

        def decoder():
            blocks, channels = [], widths[-1]
            out_widths = [model_channels] + widths[:-1]
            for level, width in enumerate(reversed(out_widths)):
                for _ in range(num_res_blocks):
                    blocks.append(res(channels, width))
                    channels = width
                if level > 0:
                    blocks.append(EmbedSequential(Upsample(width)))
            return nn.ModuleList(blocks)

        self.upBlock = decoder()
        self.fusionBlock = decoder()
        self.outBlock = _head(model_channels, norm_groups, norm_eps)
        self.fusion_outBlock1 = _head(model_channels, norm_groups, norm_eps)
        self.fusion_outBlock2 = _head(model_channels, norm_groups, norm_eps)
        self.graformer = Graformer(widths[-1], graph_heads, graph_ffn_width, cheb_order,
                                   norm_eps)
        # Layers per level: residual blocks plus the down/upsample where there is one.
        self._down_lengths = [num_res_blocks + (level < levels - 1) for level in range(levels)]
        self._up_lengths = [num_res_blocks + (level > 0) for level in range(levels)]

    def _encode(self, x, emb):
        """Input conv and encoder; returns the last feature map and the per-level skips (each
        taken after the level's last layer)."""
        h, skips, blocks = self.inBlock(x), [], iter(self.downBlock)
        for length in self._down_lengths:
            for block in itertools.islice(blocks, length):
                h = block(h, emb)
            skips.append(h)
        return h, skips

    def _graph_layer(self, h):
        """Bottleneck [B, C, S, S] -> tokens + positional embedding -> scrambled (the [B, N, C]
        memory read as [B, C, N], then transposed) -> graph layer -> [B, C, S, S]."""
        batch, channels, height, width = h.shape
        if (height * width, channels) != tuple(self.positional_embedding.shape[1:]):
            raise ValueError(
                f"bottleneck {channels} x {height} x {width} does not match the positional "
                f"embedding {tuple(self.positional_embedding.shape[1:])}; the input must be "
                f"{self.bottleneck_size * 2 ** (len(self._down_lengths) - 1)} px")
        tokens = h.flatten(2).transpose(1, 2) + self.positional_embedding
        tokens = tokens.reshape(batch, channels, height * width).transpose(1, 2)
        tokens = self.graformer(tokens, height, width)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def _decode(self, h, emb, skips, blocks, attention):
        """One decoder: h + att(deepest skip), then each level adds the attended skip of the
        encoder level above it."""
        h, blocks = h + attention[-1](skips[-1]), iter(blocks)
        for level, length in enumerate(self._up_lengths):
            for block in itertools.islice(blocks, length):
                h = block(h, emb)
            skip = len(skips) - 2 - level
            if skip >= 0:
                h = h + attention[skip](skips[skip])
        return h

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h, skips = self._encode(x, emb)
        for block in self.middleBlock:
            h = block(h, emb)
        h = self._graph_layer(h)
        noise = self.outBlock(self._decode(h, emb, skips, self.upBlock, self.attention_block))
        fused = self._decode(h, emb, skips, self.fusionBlock, self.attention_block_1)
        m1 = torch.sigmoid(self.fusion_outBlock1(fused))
        m2 = torch.sigmoid(self.fusion_outBlock2(fused))
        return TorchUNetOutput(noise, m1, m2, torch.cat([m1, m2], dim=1))


def model_from_config(model_config, image_size):
    """TorchUNet from the `config.model` section (the JAX model's fields) and the image size."""
    return TorchUNet(
        image_size=image_size,
        in_channels=model_config.in_channels,
        model_channels=model_config.model_channels,
        channel_mult=tuple(model_config.channel_mult),
        num_res_blocks=model_config.num_res_blocks,
        dropout=model_config.dropout,
        time_embed_mult=model_config.time_embed_mult,
        norm_groups=model_config.norm_groups,
        norm_eps=model_config.norm_eps,
        attention_reduction=model_config.attention_reduction,
        graph_heads=model_config.graph_heads,
        graph_ffn_width=model_config.graph_ffn_width,
        cheb_order=model_config.cheb_order,
    )
