"""The bottleneck graph: pixel-grid operators as 3 x 3 stencils and the Graformer layer on them.

The bottleneck feature map [B, H, W, C] is a graph whose N = H W nodes are the pixels (node
n = row * W + col) joined to their 4-neighbours. Its adjacency and Laplacian are never built as
N x N matrices: on a grid each is a local operation on the feature map (docs/method.md
section 3). The tests compare every operator here with dense float64 matrices.
"""

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def neighbour_sum(z):
    """A z: each node's sum over its 4-neighbours (nothing beyond the border), [B, H, W, C]."""
    padded = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1]
            + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:])


def grid_degree(height, width):
    """Number of 4-neighbours of each pixel: 2 at corners, 3 on edges, 4 inside; [H, W, 1]."""
    rows, cols = np.arange(height), np.arange(width)
    vertical = (rows > 0).astype(np.int64) + (rows < height - 1)
    horizontal = (cols > 0).astype(np.int64) + (cols < width - 1)
    return (vertical[:, None] + horizontal[None, :])[:, :, None]


def normalized_adjacency(z):
    """Â z with Â = D̃^-1/2 (A + I) D̃^-1/2 (self-loops, D̃ = degree + 1); [B, H, W, C]."""
    scale = jnp.asarray(1.0 / np.sqrt(grid_degree(*z.shape[1:3]) + 1.0), z.dtype)
    scaled = scale * z
    return scale * (neighbour_sum(scaled) + scaled)


def laplacian(z):
    """L z with L = D - A, the unnormalised grid Laplacian (spectrum in [0, 8)); [B, H, W, C]."""
    degree = jnp.asarray(grid_degree(*z.shape[1:3]), z.dtype)
    return degree * z - neighbour_sum(z)


def laplacian_max_eigenvalue(height, width):
    """The exact largest eigenvalue of the H x W grid Laplacian.

    The grid is the Cartesian product of two paths; a path of n nodes has Laplacian eigenvalues
    2 - 2 cos(pi k / n), k = 0..n-1 (largest 2 + 2 cos(pi / n), 0 when n = 1), and the product's
    eigenvalues are the sums of its factors' eigenvalues.
    """
    return 4.0 + 2.0 * math.cos(math.pi / height) + 2.0 * math.cos(math.pi / width)


def scaled_laplacian(z):
    """L̃ z with L̃ = 2 L / lambda_max - I, lambda_max the grid's exact largest eigenvalue.

    Using the exact lambda_max (rather than the bound 8) maps the spectrum onto exactly [-1, 1],
    where every Chebyshev polynomial is bounded by 1. [B, H, W, C] with H W >= 2.
    """
    height, width = z.shape[1:3]
    if height * width < 2:
        raise ValueError(f"the scaled Laplacian needs 2 or more nodes, got {height} x {width}")
    return (2.0 / laplacian_max_eigenvalue(height, width)) * laplacian(z) - z


LAPLACIANS = {"unnormalized": laplacian, "scaled": scaled_laplacian}


def chebyshev_basis(z, laplacian_op, order):
    """[T_0(L) z, ..., T_{order-1}(L) z] by T_0 = I, T_1 = L, T_k = 2 L T_{k-1} - T_{k-2}.

    z: [B, H, W, C]; laplacian_op: z -> L z. Returns `order` arrays like z.
    """
    basis = [z, laplacian_op(z)][:order]
    while len(basis) < order:
        basis.append(2 * laplacian_op(basis[-1]) - basis[-2])
    return basis


class GridGraph(NamedTuple):
    """The two operators a Graformer layer applies to node features [B, H, W, C]."""
    adjacency: Callable  # z -> Â z
    laplacian: Callable  # z -> L z (unnormalised or scaled)


def stencil_graph(laplacian_kind):
    """The grid graph with stencil operators; laplacian_kind 'scaled' or 'unnormalized'."""
    return GridGraph(normalized_adjacency, LAPLACIANS[laplacian_kind])


def grid_position_embedding(height, width, channels):
    """Fixed 2-D sin-cos position embedding of the pixel grid, [H, W, C] float32 (NumPy).

    The first C/2 channels encode the row, the last C/2 the column, each as
    [sin(p w_i), cos(p w_i)] with w_i = 1 / 10000^(i / (C/4)), i = 0..C/4-1.
    """
    if channels % 4:
        raise ValueError(f"the position embedding needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    frequencies = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)

    def encode(positions):  # [n] -> [n, C/2]
        angles = positions[:, None] * frequencies[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows = np.broadcast_to(encode(np.arange(height))[:, None], (height, width, 2 * quarter))
    cols = np.broadcast_to(encode(np.arange(width))[None, :], (height, width, 2 * quarter))
    return np.concatenate([rows, cols], axis=-1).astype(np.float32)


def scramble_tokens(z):
    """The published model's token scrambling, kept for the compatibility mode.

    The node-major tokens [B, N, C] are read as a channel-major [B, C, N] array and transposed
    back, so node n receives flat token values n, N + n, 2N + n, ... [B, H, W, C] -> same.
    """
    b, h, w, c = z.shape
    return z.reshape(b, c, h * w).transpose(0, 2, 1).reshape(b, h, w, c)


def self_attention(g):
    """softmax(g g^T / sqrt(D)) g per head, g [B, N, heads, D] serving as query, key and value.

    Logits and softmax are computed in float32 (or float64 for float64 inputs).
    """
    wide = jnp.promote_types(g.dtype, jnp.float32)
    logits = jnp.einsum("bnhd,bmhd->bhnm", g, g, preferred_element_type=wide)
    weights = jax.nn.softmax(logits / math.sqrt(g.shape[-1]), axis=-1).astype(g.dtype)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, g)


class GraphAttention(nn.Module):
    """Multi-head graph attention as published: per head G_h = Â Z W_h (W_h: C -> C / heads,
    no bias) is query, key and value, softmax(G_h G_h^T / sqrt(C / heads)) G_h; heads are
    concatenated back to C channels. [B, H, W, C] -> [B, H, W, C]."""
    heads: int
    graph: GridGraph
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        b, h, w, c = z.shape
        width = c // self.heads
        kernels = [self.param(f"head_{k}", nn.initializers.xavier_uniform(), (c, width))
                   for k in range(self.heads)]
        z = z.astype(self.dtype)
        # Â (Z W_h) = (Â Z) W_h: one adjacency pass serves every head.
        g = self.graph.adjacency(z) @ jnp.concatenate(kernels, axis=1).astype(self.dtype)
        return self_attention(g.reshape(b, h * w, self.heads, width)).reshape(b, h, w, c)


class FeedForward(nn.Module):
    """Linear(C -> width), ReLU, Linear(width -> C) on every node, [B, H, W, C]."""
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        hidden = nn.relu(nn.Dense(self.width, dtype=self.dtype, name="hidden")(z))
        return nn.Dense(z.shape[-1], dtype=self.dtype, name="out")(hidden)


class ChebConv(nn.Module):
    """Chebyshev graph convolution sum_k T_k(L) Z Theta_k (Theta_k: C x C, no bias).

    [B, H, W, C] -> [B, H, W, C]; `laplacian` is the operator z -> L z.
    """
    order: int
    laplacian: Callable
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        c = z.shape[-1]
        thetas = [self.param(f"theta_{k}", nn.initializers.xavier_uniform(), (c, c))
                  for k in range(self.order)]
        basis = chebyshev_basis(z.astype(self.dtype), self.laplacian, self.order)
        theta = jnp.concatenate(thetas, axis=0).astype(self.dtype)  # [order C, C]
        return jnp.concatenate(basis, axis=-1) @ theta


class GraformerLayer(nn.Module):
    """Pre-norm residual graph layer: Z += attention(LN Z); Z += FFN(LN Z); Z += ChebConv(LN Z).

    [B, H, W, C] -> [B, H, W, C]; `graph` gives the adjacency and Laplacian operators.
    """
    heads: int
    ffn_width: int
    cheb_order: int
    graph: GridGraph
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        def norm(name):
            return nn.LayerNorm(epsilon=self.norm_eps, use_fast_variance=False, dtype=self.dtype,
                                name=name)

        attention = GraphAttention(self.heads, self.graph, self.dtype, name="attention")
        z = z + attention(norm("norm1")(z))
        z = z + FeedForward(self.ffn_width, self.dtype, name="ffn")(norm("norm2")(z))
        return z + ChebConv(self.cheb_order, self.graph.laplacian, self.dtype,
                            name="cheb")(norm("norm3")(z))
