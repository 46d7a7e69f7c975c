"""The PyTorch port of the published network: tensor names, parameter count, operators, shapes.

Agreement with the JAX model on converted weights is tested in test_convert_torch.py.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from difffccf_jax.model import torch_port  # noqa: E402  (imports torch)
from difffccf_jax.config_cli import load_config  # noqa: E402

# Every tensor name and shape of the published model (a copy of the published reference facts).
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "paper_unet_state_dict.json")


@pytest.fixture(scope="module")
def paper_model(paper_config_path):
    config = load_config(paper_config_path, [])
    torch.manual_seed(0)
    return torch_port.model_from_config(config.model, config.data.image_size)


@pytest.fixture(scope="module")
def tiny_setup(tiny_config_path):
    """The tiny config's port in eval mode and one random input batch of 3."""
    config = load_config(tiny_config_path, [])
    torch.manual_seed(1)
    model = torch_port.model_from_config(config.model, config.data.image_size).eval()
    size = config.data.image_size
    x = torch.randn(3, 4, size, size)
    t = torch.tensor([0, 17, 49])
    with torch.no_grad():
        out = model(x, t)
    return model, x, t, out


def test_state_dict_has_the_published_names_and_shapes_in_order(paper_model):
    with open(REFERENCE, encoding="utf-8") as file:
        reference = json.load(file)
    expected = [(tensor["key"], tuple(tensor["shape"])) for tensor in reference["tensors"]]
    actual = [(name, tuple(value.shape)) for name, value in paper_model.state_dict().items()]
    assert actual == expected
    trainable = {name for name, _ in paper_model.named_parameters()}
    assert trainable == {t["key"] for t in reference["tensors"] if t["trainable"]}


def test_paper_model_has_the_published_parameter_count(paper_model):
    assert sum(p.numel() for p in paper_model.parameters()) == 33_087_803


def test_timestep_embedding_known_values():
    emb = torch_port.timestep_embedding(torch.tensor([0, 3]), 8)
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(emb[1].numpy(),
                               np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]),
                               rtol=1e-6, atol=1e-6)


def test_positional_embedding_encodes_row_then_column():
    table = torch_port.positional_embedding(3, 5, 8)[0].numpy()  # channels/4 = 2 frequencies
    omega = 1.0 / 10000.0 ** (np.arange(2) / 2)
    row, col = 2, 4
    pixel = row * 5 + col
    expected = np.concatenate([np.sin(row * omega), np.cos(row * omega),
                               np.sin(col * omega), np.cos(col * omega)])
    assert table.shape == (15, 8)
    np.testing.assert_allclose(table[pixel], expected, rtol=1e-6, atol=1e-7)


def _loop_adjacency(height, width):
    """Oracle: the 4-neighbour grid adjacency built pixel by pixel."""
    n = height * width
    adjacency = np.zeros((n, n))
    for r in range(height):
        for c in range(width):
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= r + dr < height and 0 <= c + dc < width:
                    adjacency[r * width + c, (r + dr) * width + c + dc] = 1
    return adjacency


@pytest.mark.parametrize("height,width", [(3, 5), (4, 4)])
def test_graph_operators_equal_loop_oracle(height, width):
    adjacency = _loop_adjacency(height, width)
    loops = adjacency + np.eye(height * width)
    degree = loops.sum(axis=1)
    expected_norm = loops / np.sqrt(degree[:, None] * degree[None, :])
    expected_laplacian = np.diag(adjacency.sum(axis=1)) - adjacency
    args = (height, width, "cpu", torch.float64)
    np.testing.assert_array_equal(torch_port.grid_adjacency(*args).numpy(), adjacency)
    np.testing.assert_allclose(torch_port.normalized_adjacency(*args).numpy(), expected_norm,
                               rtol=1e-14)
    np.testing.assert_array_equal(torch_port.unnormalized_laplacian(*args).numpy(),
                                  expected_laplacian)


def test_laplacian_spectrum_is_the_closed_form_grid_spectrum():
    """Eigenvalues of D - A on an H x W grid: (2 - 2cos(pi i/H)) + (2 - 2cos(pi j/W))."""
    height, width = 4, 6
    laplacian = torch_port.unnormalized_laplacian(height, width, "cpu", torch.float64)
    path = lambda n: 2 - 2 * np.cos(np.pi * np.arange(n) / n)  # noqa: E731
    expected = np.sort((path(height)[:, None] + path(width)[None, :]).ravel())
    np.testing.assert_allclose(np.linalg.eigvalsh(laplacian.numpy()), expected, atol=1e-12)


def test_cheb_conv_equals_explicit_chebyshev_polynomials():
    torch.manual_seed(2)
    layer = torch_port.ChebConv(6, 3).double()
    laplacian = torch_port.unnormalized_laplacian(3, 4, "cpu", torch.float64)
    z = torch.randn(2, 12, 6, dtype=torch.float64)
    identity = torch.eye(12, dtype=torch.float64)
    polys = [identity, laplacian, 2 * laplacian @ laplacian - identity]
    expected = sum(p @ z @ theta for p, theta in zip(polys, layer.Theta))
    torch.testing.assert_close(layer(z, laplacian), expected, rtol=1e-12, atol=1e-12)


def test_graph_attention_uses_g_as_query_key_and_value():
    torch.manual_seed(3)
    layer = torch_port.GraphAttention(8, 2).double()
    adjacency = torch_port.normalized_adjacency(2, 3, "cpu", torch.float64)
    z = torch.randn(1, 6, 8, dtype=torch.float64)
    heads = []
    for head in layer.linears:
        g = (adjacency @ z[0] @ head.weight).detach().numpy()
        scores = g @ g.T / 2.0  # sqrt(head width 4)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        heads.append(weights / weights.sum(axis=1, keepdims=True) @ g)
    np.testing.assert_allclose(layer(z, adjacency)[0].detach().numpy(),
                               np.concatenate(heads, axis=1), rtol=1e-12)


def test_forward_shapes_and_published_deformation(tiny_setup):
    _, x, _, out = tiny_setup
    batch, _, size, _ = x.shape
    assert out.noise.shape == (batch, 1, size, size)
    assert out.m1.shape == out.m2.shape == (batch, 1, size, size)
    assert out.deformation.shape == (batch, 2, size, size)
    assert 0 < out.m1.min() and out.m1.max() < 1 and 0 < out.m2.min() and out.m2.max() < 1
    torch.testing.assert_close(out.deformation, torch.cat([out.m1, out.m2], dim=1),
                               rtol=0, atol=0)


def test_each_sample_is_independent_of_the_batch(tiny_setup):
    model, x, t, out = tiny_setup
    with torch.no_grad():
        alone = model(x[1:2], t[1:2])
    for name in out._fields:
        torch.testing.assert_close(getattr(alone, name), getattr(out, name)[1:2],
                                   rtol=1e-4, atol=1e-5)


def test_time_step_changes_the_output(tiny_setup):
    model, x, _, out = tiny_setup
    with torch.no_grad():
        other = model(x, torch.tensor([40, 17, 3]))
    assert not torch.allclose(other.noise[0], out.noise[0])
    torch.testing.assert_close(other.noise[1], out.noise[1])


def test_wrong_input_size_is_refused(tiny_setup):
    model, x, t, _ = tiny_setup
    with pytest.raises(ValueError, match="positional embedding"):
        model(x[:, :, :16, :16], t)


def test_bottleneck_tokens_are_scrambled(tiny_setup, monkeypatch):
    """Published quirk (docs/method.md section 3): the [B, N, C] tokens are read in memory as
    [B, C, N] and transposed back, and the graph output is turned into a map without undoing
    that; so with an identity graph layer the output map [C, H, W] is the tokens' memory read in
    order."""
    model, _, _, _ = tiny_setup
    channels, side = model.positional_embedding.shape[2], model.bottleneck_size
    h = torch.arange(channels * side * side, dtype=torch.float32).reshape(1, channels, side, side)
    monkeypatch.setattr(model.graformer, "forward", lambda tokens, height, width: tokens)
    with torch.no_grad():
        out = model._graph_layer(h)
    tokens = h.flatten(2).transpose(1, 2) + model.positional_embedding  # [1, N, C]
    torch.testing.assert_close(out, tokens.reshape(1, channels, side, side))
    assert not torch.allclose(out, tokens.transpose(1, 2).reshape(1, channels, side, side))
