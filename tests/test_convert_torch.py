"""`difffccf convert-torch`: random published-format weights give the same outputs in JAX as in
the PyTorch port, and bad state dicts are refused by name.

The compatibility mode needs the published 32 x 32 x 512 bottleneck; the smallest config with
up- and downsampling that has it: 64 px input, channel_mult (1, 16) on 32 base channels.

The port and the JAX model are both this project's code; that the converter expects the
published tensors is checked against the published state dict's names and shapes alone
(`test_published_state_dict_converts_for_the_paper_config`, no PyTorch needed).
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import cli
from difffccf_jax.model import checkpoints, published_mapping, unet
from difffccf_jax.commands import convert_torch
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError

# The published network's state dict: every tensor's name, shape and trainability and the total
# parameter count, recorded from the published PyTorch model (a copy of the project's shared
# reference file reference/paper_unet_state_dict.json; test_torch_port.py and test_unet.py
# read the same copy).
REFERENCE = os.path.join(os.path.dirname(__file__), "data", "paper_unet_state_dict.json")

SIZE = 64
OVERRIDES = ["--config.data.image_size=64", "--config.model.model_channels=32",
             "--config.model.channel_mult=(1,16)", "--config.model.graph_ffn_width=64"]
NORM_PARAMETER = re.compile(r"(conv1\.0|conv2\.0|outBlock\d?\.0|ln\d)\.(weight|bias)$")


def _config(paper_config_path, extra=()):
    pairs = [item[len("--config."):].split("=", 1) for item in OVERRIDES + list(extra)]
    return load_config(paper_config_path, [tuple(pair) for pair in pairs])


@pytest.fixture(scope="module")
def torch_model(paper_config_path):
    """The port with random weights, norm scales and biases included (PyTorch starts them at
    1 and 0, which would hide a mix-up between the two)."""
    torch = pytest.importorskip("torch")
    from difffccf_jax.model import torch_port

    torch.manual_seed(0)
    config = _config(paper_config_path)
    model = torch_port.model_from_config(config.model, SIZE).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if NORM_PARAMETER.search(name):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def state_dict_file(torch_model, tmp_path_factory):
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("torch") / "model.pt"
    torch.save(torch_model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def converted(state_dict_file, paper_config_path, tmp_path_factory):
    """(exit status, checkpoint config, params) of the command line run."""
    out = str(tmp_path_factory.mktemp("converted") / "checkpoint")
    status = cli.main(["convert-torch", "--state-dict", state_dict_file,
                       "--config", paper_config_path, *OVERRIDES, "--out", out])
    config, params = checkpoints.load_for_inference(out)
    return status, config, params


@pytest.fixture(scope="module")
def both_outputs(torch_model, converted):
    """Outputs of the two implementations on the same input, both NHWC NumPy."""
    torch = pytest.importorskip("torch")
    _, config, params = converted
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, SIZE, SIZE, generator=generator)
    t = torch.tensor([3, 1500])
    with torch.no_grad():
        reference = torch_model(x, t)
    model = unet.model_from_config(config.model)
    ours = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False))(
        params, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), jnp.asarray(t.numpy(), jnp.int32))
    return ({name: getattr(reference, name).numpy().transpose(0, 2, 3, 1)
             for name in reference._fields},
            {name: np.asarray(getattr(ours, name)) for name in ours._fields})


def test_conversion_succeeds_in_compat_mode(converted):
    status, config, _ = converted
    assert status == 0
    assert config.model.compat is True
    assert (config.model.channel_mult, config.data.image_size) == ((1, 16), SIZE)


@pytest.mark.parametrize("name", ["noise", "m1", "m2", "deformation"])
def test_jax_matches_the_pytorch_port(both_outputs, name):
    reference, ours = both_outputs
    assert ours[name].shape == reference[name].shape
    relative = np.max(np.abs(ours[name] - reference[name])) / np.max(np.abs(reference[name]))
    assert relative < 1e-4
    assert np.std(reference[name]) > 1e-2  # a real signal, not a constant both sides share


def test_published_state_dict_converts_for_the_paper_config(paper_config_path):
    """Independent of the PyTorch port: the published mapping of the paper config names exactly
    the published trainable tensors with their published shapes, and a state dict built from
    the reference alone (tensor i filled with the value i) converts, each published tensor
    landing in exactly one of our parameters, of its size, and every parameter of the converted
    (compatibility-mode) model filled by one."""
    with open(REFERENCE, encoding="utf-8") as file:
        reference = json.load(file)
    published = {t["key"]: tuple(t["shape"]) for t in reference["tensors"] if t["trainable"]}
    assert sum(math.prod(shape) for shape in published.values()) == reference[
        "total_parameters"] == 33_087_803
    config = load_config(paper_config_path)
    config.model.compat = True
    mapping = published_mapping.published_mapping(checkpoints.expected_params(config))
    assert len(mapping) == len(published)
    assert {entry.name: entry.shape for entry in mapping} == published

    names = sorted(published)
    state = {name: np.full(published[name], index, np.float32)
             for index, name in enumerate(names)}
    converted_config, params = convert_torch.convert(state, load_config(paper_config_path))
    assert converted_config.model.compat is True
    landed, unfilled = {}, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(key.key for key in path)
        if isinstance(leaf, jax.ShapeDtypeStruct):
            unfilled.append(keys)
            continue
        index = int(leaf.flat[0])
        assert np.all(leaf == index), keys
        assert index not in landed, (keys, names[index])
        landed[index] = leaf.shape
    assert sorted(landed) == list(range(len(names)))
    for index, shape in landed.items():  # the same sizes, in our layout's axis order
        assert sorted(shape) == sorted(published[names[index]]), names[index]
    assert unfilled == []


def _refusal(state, config, match):
    with pytest.raises(UserError, match=match):
        convert_torch.convert(state, config)


@pytest.fixture(scope="module")
def state_arrays(state_dict_file):
    return convert_torch.read_state_dict(state_dict_file)


def test_missing_tensor_is_named(state_arrays, paper_config_path):
    state = {k: v for k, v in state_arrays.items() if k != "graformer.chebgc.Theta.2"}
    _refusal(state, _config(paper_config_path),
             r"missing tensors \['graformer\.chebgc\.Theta\.2'\]")


def test_unexpected_tensor_is_named(state_arrays, paper_config_path):
    state = dict(state_arrays)
    state["upBlock.99.0.op.weight"] = np.zeros((3, 3), np.float32)
    _refusal(state, _config(paper_config_path),
             r"unexpected tensors \['upBlock\.99\.0\.op\.weight'\]")


def test_misshaped_tensor_is_named(state_arrays, paper_config_path):
    state = dict(state_arrays)
    state["upBlock.4.0.op.weight"] = np.zeros((32, 32, 5, 5), np.float32)
    _refusal(state, _config(paper_config_path), r"upBlock\.4\.0\.op\.weight.*\(32, 32, 5, 5\)")


def test_altered_position_embedding_is_refused(state_arrays, paper_config_path):
    state = dict(state_arrays)
    state["positional_embedding"] = state["positional_embedding"] + 0.01
    _refusal(state, _config(paper_config_path), "positional_embedding")


def test_config_without_the_published_bottleneck_is_refused(state_arrays, tiny_config_path):
    _refusal(state_arrays, load_config(tiny_config_path), "model.compat")


def test_command_line_refusals_exit_2(tmp_path, paper_config_path, capsys):
    torch = pytest.importorskip("torch")
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"inBlock.weight": torch.zeros(1)}}, nested)
    not_torch = tmp_path / "text.pt"
    not_torch.write_text("not a PyTorch file")
    cases = [(nested, "must hold a state dict"), (not_torch, "weights_only=True"),
             (tmp_path / "absent.pt", "does not exist")]
    for path, message in cases:
        status = cli.main(["convert-torch", "--state-dict", str(path), "--config",
                           paper_config_path, "--out", str(tmp_path / "out")])
        assert status == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
