"""The U-Net (unet.py, layers.py), its published-tensor mapping and `difffccf model-summary`.

Behaviour is checked on a small 2-level model at 16 x 16 (one compile per function); the paper
model only through jax.eval_shape.
"""

import json
import math
import os
import re
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import cli
from difffccf_jax.model import graph, layers, unet
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError
from difffccf_jax.model.published_mapping import params_from_published, published_mapping, to_ours

# Every tensor name and shape of the published model (a copy of the published reference facts).
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "paper_unet_state_dict.json")
SMALL = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
             attention_reduction=4, graph_heads=2, graph_ffn_width=16, max_displacement=3.0)
# 64 x 64 input, one downsample: the 32 x 32 x 512 bottleneck the compatibility mode needs.
SMALL_COMPAT = dict(SMALL, channel_mult=(1, 64), graph_heads=4, compat=True)
# The paper's deformation head (unet.RegistrationBranch): stride-2 Conv3x3 2 -> 16 -> 32 -> 32
# -> 32, each with a GroupNorm, then Conv3x3(32 -> 2)
DEFORMATION_FEATURES = (16, 32, 32, 32)
DEFORMATION_HEAD_SIZE = sum(9 * c_in * c_out + c_out + 2 * c_out for c_in, c_out
                            in zip((2,) + DEFORMATION_FEATURES, DEFORMATION_FEATURES)) + 9 * 32 * 2 + 2


def model_config(path, **fields):
    config = load_config(path).model
    config.update(fields)
    return config


def leaf_paths(tree):
    return {tuple(key.key for key in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def random_params(shapes, seed):
    """Random float32 parameters shaped like `shapes` (norm scales around 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, struct):
        if path[-1].key == "scale":
            return (1 + 0.2 * rng.normal(size=struct.shape)).astype(np.float32)
        fan_in = math.prod(struct.shape[:-1]) if len(struct.shape) > 1 else 10
        return (rng.normal(size=struct.shape) / math.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def weighted_sum(outputs, weights):
    return sum(jnp.sum(out * w) for out, w in zip(outputs, weights))


@pytest.fixture(scope="module")
def small(tiny_config_path):
    model = unet.model_from_config(model_config(tiny_config_path, **SMALL))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 16, 16, 4)), jnp.float32)
    t = jnp.asarray([0, 17, 49], jnp.int32)

    @jax.jit
    def evaluate(params, x, t, key):
        return model.apply({"params": params}, x, t, train=False, rngs={"dropout": key})

    params = unet.init_params(model, jax.random.key(0), 16)
    return SimpleNamespace(model=model, x=x, t=t, evaluate=evaluate, params=params,
                           random=random_params(jax.eval_shape(lambda: params), 1),
                           weights=[rng.normal(size=(3, 16, 16, c)) for c in (1, 1, 1, 2)])


def test_init_gives_float32_params_and_zero_deformation(small):
    assert {leaf.dtype for leaf in jax.tree.leaves(small.params)} == {jnp.dtype(jnp.float32)}
    out = small.evaluate(small.params, small.x, small.t, jax.random.key(0))
    assert isinstance(out, unet.UNetOutput)
    # The zero-initialised deformation head starts from the identity transform.
    np.testing.assert_array_equal(out.deformation, 0.0)
    assert 0.0 <= float(out.m1.min()) and float(out.m1.max()) <= 1.0


def test_masks_and_deformation_respect_their_bounds_when_saturated(small):
    params = jax.tree.map(lambda a: a, small.random)
    for head in ("mask1_head", "mask2_head", "deformation_head"):
        params[head]["conv"]["kernel"] = 100.0 * params[head]["conv"]["kernel"]
    out = small.evaluate(params, small.x, small.t, jax.random.key(0))
    for mask in (out.m1, out.m2):
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
        assert float(mask.min()) < 0.01 and float(mask.max()) > 0.99
    bound = SMALL["max_displacement"]
    # bilinear between tanh-bounded control points: within float32 rounding of the bound
    assert float(jnp.abs(out.deformation).max()) <= bound * (1 + 1e-6)
    assert float(out.deformation.min()) < -0.99 * bound
    assert float(out.deformation.max()) > 0.99 * bound


@pytest.mark.parametrize("height,width", [(16, 16), (32, 24), (24, 40), (18, 10), (17, 9)])
def test_output_shapes_for_several_sizes(small, height, width):
    x = jax.ShapeDtypeStruct((2, height, width, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.int32)
    out = jax.eval_shape(lambda p, x, t: small.model.apply({"params": p}, x, t), small.params, x, t)
    assert [o.shape for o in out] == [(2, height, width, 1)] * 3 + [(2, height, width, 2)]
    assert {o.dtype for o in out} == {jnp.dtype(jnp.float32)}


def test_tiny_config_four_levels_non_square(tiny_config_path):
    model = unet.model_from_config(model_config(tiny_config_path))
    params = jax.eval_shape(lambda key: unet.init_params(model, key, 32), jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, 32, 48, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    out = jax.eval_shape(lambda p, x, t: model.apply({"params": p}, x, t), params, x, t)
    assert out.deformation.shape == (1, 32, 48, 2) and out.noise.shape == (1, 32, 48, 1)


def test_eval_outputs_do_not_depend_on_batch_composition(small):
    key = jax.random.key(0)
    batch = small.evaluate(small.random, small.x, small.t, key)
    reversed_batch = small.evaluate(small.random, small.x[::-1], small.t[::-1], key)
    for i in range(3):
        alone = small.evaluate(small.random, small.x[i:i + 1], small.t[i:i + 1], key)
        for in_batch, in_reversed, single in zip(batch, reversed_batch, alone):
            np.testing.assert_allclose(in_batch[i], single[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(in_reversed[2 - i], single[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(batch.noise[0], batch.noise[1])


def test_gradient_and_dropout_in_train_mode(small):
    """One jitted value_and_grad in train mode: the gradient matches a central difference along
    a random direction (same dropout key), dropout changes with the key, eval mode ignores it."""

    @jax.jit
    def loss_and_grad(params, key):
        def loss(params):
            out = small.model.apply({"params": params}, small.x, small.t, train=True,
                                    rngs={"dropout": key})
            return weighted_sum(out, small.weights)
        return jax.value_and_grad(loss)(params)

    key = jax.random.key(1)
    value, grads = loss_and_grad(small.random, key)
    for module, tree in grads.items():
        norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(tree)]
        assert all(np.isfinite(norms)) and max(norms) > 0, module
    direction = random_params(jax.eval_shape(lambda: small.random), 2)
    eps = 1e-3

    def loss_at(step):
        params = jax.tree.map(lambda p, d: p + step * d, small.random, direction)
        return float(loss_and_grad(params, key)[0])

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in
                   zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    assert abs(numeric - analytic) < 2e-2 * abs(analytic)

    assert float(loss_and_grad(small.random, key)[0]) == float(value)
    assert float(loss_and_grad(small.random, jax.random.key(2))[0]) != float(value)
    eval_a = small.evaluate(small.random, small.x, small.t, jax.random.key(1))
    eval_b = small.evaluate(small.random, small.x, small.t, jax.random.key(2))
    np.testing.assert_array_equal(eval_a.noise, eval_b.noise)
    assert abs(float(weighted_sum(eval_a, small.weights)) - float(value)) > 1e-3
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda p: small.model.apply({"params": p}, small.x, small.t, train=True),
                       small.random)


def test_rbg_key_gives_repeatable_dropout_at_its_rate():
    """The training step's dropout key: an 'rbg' key, the same masks for the same key, other
    masks for another, and the configured rate of dropped units."""
    key = unet.rbg_key(jax.random.key(7))
    assert str(jax.random.key_impl(key)) == "rbg"
    dropout = nn.Dropout(0.1, deterministic=False)
    ones = jnp.ones((64, 64, 32))

    def kept(key):
        return np.asarray(dropout.apply({}, ones, rngs={"dropout": key}) != 0)

    np.testing.assert_array_equal(kept(key), kept(unet.rbg_key(jax.random.key(7))))
    assert (kept(key) != kept(unet.rbg_key(jax.random.key(8)))).mean() > 0.1
    assert abs(kept(key).mean() - 0.9) < 0.01  # 131072 units: 12 standard deviations


def test_bfloat16_compute_with_float32_params(small, tiny_config_path):
    model = unet.model_from_config(model_config(tiny_config_path, dtype="bfloat16", **SMALL))
    shapes = jax.eval_shape(lambda key: unet.init_params(model, key, 16), jax.random.key(0))
    assert {s.dtype for s in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

    def apply(params, x, t):
        return model.apply({"params": params}, x, t)

    convs = [eqn for eqn in jax.make_jaxpr(apply)(small.random, small.x, small.t).eqns
             if eqn.primitive.name == "conv_general_dilated"]
    assert convs and all(eqn.invars[0].aval.dtype == jnp.bfloat16 for eqn in convs)
    low = jax.jit(apply)(small.random, small.x, small.t)
    full = small.evaluate(small.random, small.x, small.t, jax.random.key(0))
    assert {o.dtype for o in low} == {jnp.dtype(jnp.float32)}
    for name in ("m1", "m2"):
        assert float(jnp.abs(getattr(low, name) - getattr(full, name)).max()) < 0.05
    error = jnp.linalg.norm(low.noise - full.noise) / jnp.linalg.norm(full.noise)
    assert float(error) < 0.1


def test_compat_mode_reproduces_published_quirks(tiny_config_path):
    config = model_config(tiny_config_path, laplacian="scaled", norm_eps=1e-6, **SMALL_COMPAT)
    model = unet.model_from_config(config)
    assert model.laplacian == "unnormalized" and model.norm_eps == 1e-5
    shapes = jax.eval_shape(lambda key: unet.init_params(model, key, 64), jax.random.key(0))
    assert "deformation_head" not in shapes
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 64, 64, 4)), jnp.float32)
    out = jax.jit(lambda p: model.apply({"params": p}, x, jnp.asarray([5])))(
        random_params(shapes, 4))
    np.testing.assert_array_equal(out.deformation, jnp.concatenate([out.m1, out.m2], axis=-1))
    with pytest.raises(UserError, match="model.compat"):
        jax.eval_shape(lambda key: unet.init_params(model, key, 32), jax.random.key(0))


def test_compat_bottleneck_scrambles_after_adding_the_embedding():
    h = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 32, 512)), jnp.float32)
    embedded = h + graph.grid_position_embedding(32, 32, 512)
    np.testing.assert_allclose(unet.bottleneck_tokens(h, compat=False), embedded, atol=1e-6)
    np.testing.assert_allclose(unet.bottleneck_tokens(h, compat=True),
                               graph.scramble_tokens(embedded), atol=1e-6)


@pytest.mark.parametrize("field,value", [("laplacian", "cosine"), ("norm_groups", 3),
                                         ("dtype", "int8"), ("graph_heads", 3)])
def test_model_from_config_names_bad_field(tiny_config_path, field, value):
    with pytest.raises(UserError, match=f"model.{field}"):
        unet.model_from_config(model_config(tiny_config_path, **{field: value}))


# --- the published model: counts, mapping and conversion rules -------------------------------


@pytest.fixture(scope="module")
def paper_params(paper_config_path):
    def shapes(compat):
        model = unet.model_from_config(model_config(paper_config_path, compat=compat))
        return jax.eval_shape(lambda key: unet.init_params(model, key, 256), jax.random.key(0))

    return {compat: shapes(compat) for compat in (True, False)}


def test_paper_compat_model_matches_every_published_tensor(paper_params):
    with open(REFERENCE, encoding="utf-8") as file:
        reference = json.load(file)
    trainable = {t["key"]: tuple(t["shape"]) for t in reference["tensors"] if t["trainable"]}
    params = leaf_paths(paper_params[True])
    assert sum(math.prod(s.shape) for s in params.values()) == 33_087_803
    assert sum(math.prod(s) for s in trainable.values()) == reference["total_parameters"]
    mapping = published_mapping(paper_params[True])
    assert len({e.name for e in mapping}) == len({e.path for e in mapping}) == len(mapping)
    assert {e.name: e.shape for e in mapping} == trainable
    assert {e.path for e in mapping} == set(params)
    for entry in mapping:
        converted = to_ours(entry.rule, np.zeros(entry.shape, np.float32))
        assert converted.shape == params[entry.path].shape, entry.name


def test_paper_default_model_adds_only_the_deformation_head(paper_params):
    params = leaf_paths(paper_params[False])
    mapping = published_mapping(paper_params[False])
    assert mapping == published_mapping(paper_params[True])
    assert set(params) - {e.path for e in mapping} == {
        ("deformation_head", layer, leaf)
        for level in range(len(DEFORMATION_FEATURES))
        for layer, leaf in ((f"down{level}", "kernel"), (f"down{level}", "bias"),
                            (f"norm{level}", "scale"), (f"norm{level}", "bias"))} | {
        ("deformation_head", "conv", "kernel"), ("deformation_head", "conv", "bias")}
    assert sum(math.prod(s.shape) for s in params.values()) == 33_087_803 + DEFORMATION_HEAD_SIZE


def test_model_summary_prints_counts_and_shapes(paper_config_path, capsys):
    def summary(*overrides):
        assert cli.main(["model-summary", "--config", paper_config_path, *overrides]) == 0
        return capsys.readouterr().out

    default = summary()
    assert re.search(r"^total +33,112,045$", default, re.M)
    assert re.search(r"^published model +33,087,803 ", default, re.M)
    assert re.search(r"^deformation_head +24,242$", default, re.M)
    assert "output  deformation [1, 256, 256, 2] float32" in default
    assert "input   x [1, 256, 256, 4] float32, t [1] int32" in default


def torch_conv2d(x, w, b, stride):
    """PyTorch Conv2d (cross-correlation, padding 1): x [I, H, W], w [O, I, k, k] -> [O, H', W']."""
    k = w.shape[-1]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out_h, out_w = (padded.shape[1] - k) // stride + 1, (padded.shape[2] - k) // stride + 1
    out = np.zeros((w.shape[0], out_h, out_w))
    for y in range(out_h):
        for x_ in range(out_w):
            patch = padded[:, y * stride:y * stride + k, x_ * stride:x_ * stride + k]
            out[:, y, x_] = np.einsum("ihw,oihw->o", patch, w) + b
    return out


def torch_conv_transpose2d(x, w, b):
    """PyTorch ConvTranspose2d(stride 2, padding 1, output_padding 1) by its definition: input
    pixel (y, x) adds x * w[i, o, ky, kx] to output (2y - 1 + ky, 2x - 1 + kx).
    x [I, H, W], w [I, O, k, k] -> [O, 2H, 2W]."""
    _, height, width = x.shape
    k = w.shape[-1]
    full = np.zeros((w.shape[1], 2 * (height - 1) + k + 1, 2 * (width - 1) + k + 1))
    for y in range(height):
        for x_ in range(width):
            full[:, 2 * y:2 * y + k, 2 * x_:2 * x_ + k] += np.einsum("i,iohw->ohw", x[:, y, x_], w)
    return full[:, 1:1 + 2 * height, 1:1 + 2 * width] + b[:, None, None]


def apply_layer(layer, kernel, bias, x_chw):
    out = layer.apply({"params": {"kernel": kernel, "bias": bias}}, x_chw.transpose(1, 2, 0)[None])
    return np.asarray(out[0]).transpose(2, 0, 1)


def test_conv_rules_reproduce_pytorch_layers():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 7, 6))
    w, b = rng.normal(size=(2, 3, 3, 3)), rng.normal(size=2)
    for stride, layer in ((1, layers.conv3x3(2, jnp.float32, "conv")),
                          (2, layers.downsample(2, jnp.float32, "down"))):
        np.testing.assert_allclose(apply_layer(layer, to_ours("conv", w), b, x),
                                   torch_conv2d(x, w, b, stride), atol=1e-4)
    w_transposed = rng.normal(size=(3, 2, 3, 3))  # [in, out, k, k]
    upsample = layers.upsample(2, jnp.float32, "up")
    out = apply_layer(upsample, to_ours("conv_transpose", w_transposed), b, x)
    assert out.shape == (2, 14, 12)
    np.testing.assert_allclose(out, torch_conv_transpose2d(x, w_transposed, b), atol=1e-4)
    w_linear, b_linear, x_linear = (rng.normal(size=s) for s in ((4, 5), (4,), (2, 5)))
    dense = nn.Dense(4).apply({"params": {"kernel": to_ours("linear", w_linear), "bias": b_linear}},
                              x_linear)
    np.testing.assert_allclose(dense, x_linear @ w_linear.T + b_linear, atol=1e-5)


def test_params_from_published_converts_and_refuses_by_name(small):
    mapping = published_mapping(small.params)
    rng = np.random.default_rng(7)
    state = {e.name: rng.normal(size=e.shape).astype(np.float32) for e in mapping}
    embedding = graph.grid_position_embedding(32, 32, 512)
    state["positional_embedding"] = embedding.reshape(1, 1024, 512)
    converted = leaf_paths(params_from_published(state, small.params))
    for entry in mapping:
        np.testing.assert_array_equal(converted[entry.path], to_ours(entry.rule, state[entry.name]))
    up = next(e for e in mapping if e.rule == "conv_transpose")
    np.testing.assert_array_equal(converted[up.path][0, 2, 1, 0], state[up.name][1, 0, 2, 0])
    original = leaf_paths(small.params)
    for path in original:
        if path[0] == "deformation_head":
            np.testing.assert_array_equal(converted[path], original[path])

    def refused(changed, pattern):
        with pytest.raises(UserError, match=pattern):
            params_from_published(changed, small.params)

    name = mapping[5].name
    refused({k: v for k, v in state.items() if k != name},
            f"missing tensors \\['{re.escape(name)}'")
    refused(dict(state, **{"extra.weight": np.zeros(2)}), r"unexpected tensors \['extra.weight'\]")
    refused(dict(state, **{name: np.zeros((1, 2))}), f"{re.escape(name)}.*got \\(1, 2\\)")
    refused(dict(state, positional_embedding=state["positional_embedding"] + 0.1),
            "positional_embedding")
