"""Grid-graph stencils against dense float64 matrices built by loops, and the Graformer layer
against a NumPy re-implementation of the published formulas (docs/method.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import chebyshev

from difffccf_jax.model import graph

GRIDS = [(1, 5), (3, 3), (4, 7), (6, 5), (8, 8)]


def dense_adjacency(height, width):
    """0/1 adjacency of the 4-neighbour grid, node n = row * width + col, by explicit loops."""
    n = height * width
    adjacency = np.zeros((n, n))
    for r in range(height):
        for c in range(width):
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                if 0 <= r + dr < height and 0 <= c + dc < width:
                    adjacency[r * width + c, (r + dr) * width + c + dc] = 1.0
    return adjacency


def dense_operators(height, width):
    """{name: N x N matrix}: Â, L = D - A and 2 L / lambda_max - I (lambda_max by eigvalsh)."""
    adjacency = dense_adjacency(height, width)
    degree = adjacency.sum(axis=1)
    identity = np.eye(len(degree))
    lap = np.diag(degree) - adjacency
    return {
        "adjacency": (adjacency + identity) / np.sqrt(np.outer(degree + 1, degree + 1)),
        "unnormalized": lap,
        "scaled": 2.0 * lap / np.linalg.eigvalsh(lap).max() - identity,
    }


def apply_dense(matrix, z):
    """matrix [N, N] applied to node features z [B, H, W, C]."""
    b, h, w, c = z.shape
    return np.einsum("nm,bmc->bnc", matrix, z.reshape(b, h * w, c)).reshape(z.shape)


def relative_error(actual, expected):
    return np.linalg.norm(np.asarray(actual) - expected) / np.linalg.norm(expected)


STENCILS = {"adjacency": graph.normalized_adjacency, "unnormalized": graph.laplacian,
            "scaled": graph.scaled_laplacian}


@pytest.mark.parametrize("height,width", GRIDS)
def test_stencils_equal_dense_oracle(height, width):
    z = np.random.default_rng(height * 10 + width).normal(size=(2, height, width, 3))
    dense = dense_operators(height, width)
    with jax.enable_x64(True):
        for name, stencil in STENCILS.items():
            out = stencil(jnp.asarray(z))
            assert out.dtype == jnp.float64
            assert relative_error(out, apply_dense(dense[name], z)) < 1e-10, name


@pytest.mark.parametrize("height,width", GRIDS + [(2, 1), (11, 9)])
def test_closed_form_max_eigenvalue(height, width):
    numeric = np.linalg.eigvalsh(dense_operators(height, width)["unnormalized"]).max()
    assert abs(graph.laplacian_max_eigenvalue(height, width) - numeric) < 1e-12
    assert graph.laplacian_max_eigenvalue(height, width) < 8.0


def test_scaled_laplacian_refuses_single_node():
    with pytest.raises(ValueError, match="2 or more nodes"):
        graph.scaled_laplacian(jnp.ones((1, 1, 1, 2)))


@pytest.mark.parametrize("kind", ["scaled", "unnormalized"])
@pytest.mark.parametrize("height,width", [(4, 7), (5, 5)])
def test_chebyshev_basis_equals_dense_polynomials(kind, height, width):
    """T_k(M) z from the eigen-decomposition M = V diag(l) V^T: T_k(M) = V diag(T_k(l)) V^T."""
    order = 5
    z = np.random.default_rng(0).normal(size=(2, height, width, 3))
    eigenvalues, vectors = np.linalg.eigh(dense_operators(height, width)[kind])
    with jax.enable_x64(True):
        basis = graph.chebyshev_basis(jnp.asarray(z), graph.LAPLACIANS[kind], order)
    assert len(basis) == order
    for k in range(order):
        t_k = vectors @ np.diag(chebyshev.chebval(eigenvalues, np.eye(order)[k])) @ vectors.T
        assert relative_error(basis[k], apply_dense(t_k, z)) < 1e-10, k


def test_stencil_operators_materialise_no_node_by_node_array():
    """At 16 x 16 (N = 256) no intermediate is larger than the padded feature map."""
    z = jnp.ones((1, 16, 16, 1))

    def operators(z):
        return (graph.normalized_adjacency(z),
                graph.chebyshev_basis(z, graph.scaled_laplacian, 3),
                graph.chebyshev_basis(z, graph.laplacian, 3))

    jaxpr = jax.make_jaxpr(operators)(z).jaxpr
    sizes = [np.prod(var.aval.shape) for eqn in jaxpr.eqns for var in eqn.outvars]
    assert max(sizes) <= 18 * 18


def test_position_embedding_known_values():
    """channels 8: frequencies 1 and 1/100; rows in channels 0-3, columns in 4-7."""
    embedding = graph.grid_position_embedding(3, 5, 8)
    assert embedding.shape == (3, 5, 8) and embedding.dtype == np.float32
    for r in range(3):
        for c in range(5):
            expected = [np.sin(r), np.sin(r / 100), np.cos(r), np.cos(r / 100),
                        np.sin(c), np.sin(c / 100), np.cos(c), np.cos(c / 100)]
            np.testing.assert_allclose(embedding[r, c], expected, atol=1e-7)
    with pytest.raises(ValueError, match="divisible by 4"):
        graph.grid_position_embedding(2, 2, 6)


def test_scramble_tokens_matches_memory_reinterpretation():
    """Tokens [B, N, C] stored node-major are read as [B, C, N] and transposed back: node n,
    channel c then holds flat element c * N + n of the sample's token buffer."""
    b, h, w, c = 2, 3, 4, 5
    n = h * w
    z = np.random.default_rng(1).normal(size=(b, h, w, c))
    expected = np.empty((b, n, c))
    for sample in range(b):
        buffer = z[sample].reshape(-1)  # node-major: element node * C + channel
        for node in range(n):
            for channel in range(c):
                expected[sample, node, channel] = buffer[channel * n + node]
    scrambled = np.asarray(graph.scramble_tokens(jnp.asarray(z, jnp.float32)))
    np.testing.assert_allclose(scrambled.reshape(b, n, c), expected, rtol=1e-6)
    assert not np.allclose(scrambled, z)


def numpy_graformer(z, params, dense, kind, heads, order, eps):
    """The published Graformer layer on tokens [B, N, C] with dense operators, float64."""

    def layer_norm(x, p):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]

    def attention(x):
        outputs = []
        for k in range(heads):
            g = dense["adjacency"] @ (x @ params["attention"][f"head_{k}"])
            logits = g @ np.swapaxes(g, 1, 2) / np.sqrt(g.shape[-1])
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            outputs.append(weights / weights.sum(-1, keepdims=True) @ g)
        return np.concatenate(outputs, axis=-1)

    def ffn(x):
        hidden, out = params["ffn"]["hidden"], params["ffn"]["out"]
        return np.maximum(x @ hidden["kernel"] + hidden["bias"], 0) @ out["kernel"] + out["bias"]

    def cheb(x):
        lap = dense[kind]
        t_prev, t_cur = x, lap @ x
        out = t_prev @ params["cheb"]["theta_0"] + t_cur @ params["cheb"]["theta_1"]
        for k in range(2, order):
            t_prev, t_cur = t_cur, 2 * lap @ t_cur - t_prev
            out = out + t_cur @ params["cheb"][f"theta_{k}"]
        return out

    z = z + attention(layer_norm(z, params["norm1"]))
    z = z + ffn(layer_norm(z, params["norm2"]))
    return z + cheb(layer_norm(z, params["norm3"]))


@pytest.mark.parametrize("kind", ["scaled", "unnormalized"])
def test_graformer_layer_matches_numpy_reference(kind):
    b, h, w, c, heads, order, eps = 2, 3, 4, 8, 2, 3, 1e-5
    rng = np.random.default_rng(2)
    z = rng.normal(size=(b, h, w, c))
    with jax.enable_x64(True):
        layer = graph.GraformerLayer(heads, 6, order, graph.stencil_graph(kind), eps, jnp.float64)
        shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.asarray(z))["params"]
        params = jax.tree.map(lambda s: 0.5 * rng.normal(size=s.shape), shapes)
        out = np.asarray(layer.apply({"params": params}, jnp.asarray(z)))
    expected = numpy_graformer(z.reshape(b, h * w, c), params, dense_operators(h, w), kind,
                               heads, order, eps)
    assert relative_error(out.reshape(b, h * w, c), expected) < 1e-10
