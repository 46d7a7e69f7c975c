"""Correspondence between our parameter tree and the published PyTorch model's state dict.

`published_mapping(params)` lists, for every parameter with a published counterpart, the
PyTorch state-dict key, our path, the PyTorch shape and the rule that turns the PyTorch array
into ours (the deformation head has no counterpart). `params_from_published` applies it.

Rules (PyTorch layout -> ours):
- 'conv': Conv2d weight [out, in, kH, kW] -> kernel [kH, kW, in, out] (transpose 2, 3, 1, 0).
- 'conv_transpose': ConvTranspose2d weight [in, out, kH, kW] -> kernel [kH, kW, in, out] with
  both spatial axes reversed. PyTorch's transposed convolution scatters x[i, y, x] * w[i, o, ky,
  kx] to output (2y - 1 + ky, 2x - 1 + kx); the same result is the correlation of the 2x-dilated
  input, padded (1, 2), with the reversed kernel (layers.upsample, lax.conv_transpose without
  transpose_kernel).
- 'linear': Linear weight [out, in] -> Dense kernel [in, out].
- 'same': unchanged (biases; GroupNorm/LayerNorm weight -> scale; the graph layer's head and
  Chebyshev weights, which PyTorch already stores as [in, out] and applies as x @ W).
"""

import re
from typing import NamedTuple

import numpy as np

from difffccf_jax.model import graph
from difffccf_jax.errors import UserError
from difffccf_jax.model.unet import COMPAT_BOTTLENECK


class Rule(NamedTuple):
    axes: tuple  # ours = transpose(published, axes), after the flip
    flip_spatial: bool  # reverse the last two published axes first


RULES = {
    "conv": Rule((2, 3, 1, 0), False),
    "conv_transpose": Rule((2, 3, 0, 1), True),
    "linear": Rule((1, 0), False),
    "same": Rule(None, False),
}

# The published model's non-trainable buffer: we compute it (graph.grid_position_embedding).
POSITION_EMBEDDING_KEY = "positional_embedding"


class TensorMapping(NamedTuple):
    name: str  # published state-dict key
    path: tuple  # our parameter path
    shape: tuple  # published (PyTorch) shape
    rule: str  # key of RULES


def to_ours(rule, array):
    """The published array converted to our layout by RULES[rule]."""
    axes, flip = RULES[rule]
    array = np.asarray(array)
    if flip:
        array = array[..., ::-1, ::-1]
    return np.ascontiguousarray(array if axes is None else np.transpose(array, axes))


def published_shape(rule, our_shape):
    """The PyTorch shape whose conversion by `rule` has `our_shape`."""
    axes = RULES[rule].axes
    if axes is None:
        return tuple(our_shape)
    shape = [0] * len(axes)
    for ours_axis, published_axis in enumerate(axes):
        shape[published_axis] = our_shape[ours_axis]
    return tuple(shape)


# (published layer, our module, layer kind): kind selects the weight's name and rule.
_KINDS = {"conv": ("kernel", "conv"), "conv_transpose": ("kernel", "conv_transpose"),
          "linear": ("kernel", "linear"), "norm": ("scale", "same")}
_RES_BLOCK = (("conv1.0", "norm1", "norm"), ("conv1.2", "conv1", "conv"),
              ("time_emb.1", "time_proj", "linear"), ("conv2.0", "norm2", "norm"),
              ("conv2.3", "conv2", "conv"), ("shortcut", "shortcut", "conv"))
_SKIP_ATTENTION = (("fc1", "fc1", "conv"), ("fc2", "fc2", "conv"), ("conv", "spatial", "conv"))
_HEAD = (("0", "norm", "norm"), ("2", "conv", "conv"))


def _layer(name, path, kind):
    """[(key, path, rule)] of one PyTorch layer with weight and bias."""
    weight, rule = _KINDS[kind]
    return [(f"{name}.weight", path + (weight,), rule), (f"{name}.bias", path + ("bias",), "same")]


def _block(name, path, layers, tree):
    """The layers of a composite block that exist in `tree` (the block's params)."""
    return [entry for published, ours, kind in layers if ours in tree
            for entry in _layer(f"{name}.{published}", path + (ours,), kind)]


def _count(tree, pattern):
    return len([key for key in tree if re.fullmatch(pattern, key)])


def _encoder(params):
    tree = params["encoder"]
    levels, blocks = _count(tree, r"level\d+_res0"), _count(tree, r"level0_res\d+")
    entries, index = [], 0
    for level in range(levels):
        for i in range(blocks):
            res = f"level{level}_res{i}"
            entries += _block(f"downBlock.{index}.0", ("encoder", res), _RES_BLOCK, tree[res])
            index += 1
        if f"level{level}_down" in tree:
            entries += _layer(f"downBlock.{index}.0.op", ("encoder", f"level{level}_down"), "conv")
            index += 1
    return entries


def _decoder(params, ours, blocks_name, attention_name):
    tree = params[ours]
    levels, blocks = _count(tree, r"level\d+_res0"), _count(tree, r"level0_res\d+")
    entries, index = [], 0
    for j in range(levels):
        for i in range(blocks):
            res = f"level{j}_res{i}"
            entries += _block(f"{blocks_name}.{index}.0", (ours, res), _RES_BLOCK, tree[res])
            index += 1
        if f"level{j}_up" in tree:
            entries += _layer(f"{blocks_name}.{index}.0.op", (ours, f"level{j}_up"),
                              "conv_transpose")
            index += 1
    for level in range(_count(tree, r"skip_attention\d+")):
        att = f"skip_attention{level}"
        entries += _block(f"{attention_name}.{level}", (ours, att), _SKIP_ATTENTION, tree[att])
    return entries


def _graformer(params):
    tree = params["graformer"]
    entries = []
    for k in range(len(tree["attention"])):
        entries.append((f"graformer.mhga.linears.{k}.weight",
                        ("graformer", "attention", f"head_{k}"), "same"))
    for k in range(len(tree["cheb"])):
        entries.append((f"graformer.chebgc.Theta.{k}", ("graformer", "cheb", f"theta_{k}"), "same"))
    for i in (1, 2, 3):
        entries += _layer(f"graformer.ln{i}", ("graformer", f"norm{i}"), "norm")
    entries += _layer("graformer.ffn.linear1", ("graformer", "ffn", "hidden"), "linear")
    entries += _layer("graformer.ffn.linear2", ("graformer", "ffn", "out"), "linear")
    return entries


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def published_mapping(params):
    """[TensorMapping] for every parameter of `params` (our UNet's) with a published counterpart."""
    middle = params["middle"]
    entries = (
        _layer("time_embed.0", ("time_embed", "hidden"), "linear")
        + _layer("time_embed.2", ("time_embed", "out"), "linear")
        + _layer("inBlock", ("input_conv",), "conv")
        + _encoder(params)
        + [entry for k in range(len(middle))
           for entry in _block(f"middleBlock.{k}.0", ("middle", f"res{k}"), _RES_BLOCK,
                               middle[f"res{k}"])]
        + _graformer(params)
        + _decoder(params, "noise_decoder", "upBlock", "attention_block")
        + _decoder(params, "fusion_decoder", "fusionBlock", "attention_block_1")
        + _block("outBlock", ("noise_head",), _HEAD, params["noise_head"])
        + _block("fusion_outBlock1", ("mask1_head",), _HEAD, params["mask1_head"])
        + _block("fusion_outBlock2", ("mask2_head",), _HEAD, params["mask2_head"]))
    return [TensorMapping(name, path, published_shape(rule, _get(params, path).shape), rule)
            for name, path, rule in entries]


def _check_position_embedding(array):
    expected = graph.grid_position_embedding(*COMPAT_BOTTLENECK)
    expected = expected.reshape(1, -1, expected.shape[-1])
    if tuple(np.shape(array)) != expected.shape:
        raise UserError(f"tensor {POSITION_EMBEDDING_KEY!r}: expected shape {expected.shape}, "
                        f"got {tuple(np.shape(array))}")
    error = float(np.max(np.abs(np.asarray(array, np.float64) - expected)))
    if error > 1e-4:
        raise UserError(f"tensor {POSITION_EMBEDDING_KEY!r} differs from the 2-D sin-cos "
                        f"embedding this model computes (max abs difference {error:.3g})")


def params_from_published(state_dict, params):
    """Our params with every mapped tensor taken from a PyTorch state dict {key: array}.

    `params` (our UNet's, or their jax.eval_shape structs when all are mapped) gives the
    structure and dtypes; converted tensors are NumPy arrays, parameters without a published
    counterpart keep their values. A stored position-embedding buffer must equal the published
    model's fixed [1, 32 x 32, 512] embedding, which the model computes itself. Missing,
    unexpected or mis-shaped tensors are refused by name (UserError).
    """
    mapping = published_mapping(params)
    expected = {entry.name for entry in mapping}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected - {POSITION_EMBEDDING_KEY})
    if missing or unexpected:
        raise UserError(f"state dict does not match the model: missing tensors {missing}, "
                        f"unexpected tensors {unexpected}")
    if POSITION_EMBEDDING_KEY in state_dict:
        _check_position_embedding(state_dict[POSITION_EMBEDDING_KEY])
    converted = {}
    for entry in mapping:
        shape = tuple(np.shape(state_dict[entry.name]))
        if shape != entry.shape:
            raise UserError(f"tensor {entry.name!r}: expected shape {entry.shape}, got {shape}")
        converted[entry.path] = to_ours(entry.rule, state_dict[entry.name])

    def replace(tree, path=()):
        if hasattr(tree, "items"):
            return {key: replace(value, path + (key,)) for key, value in tree.items()}
        if path in converted:
            return converted[path].astype(tree.dtype)
        return tree

    return replace(params)
