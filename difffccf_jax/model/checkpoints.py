"""Checkpoints: orbax CheckpointManager for training runs, params-only checkpoints for inference.

A checkpoint directory holds

    config.json            the config of the run (written to a temporary name, then renamed)
    <step>/params/         model parameters
    <step>/ema_params/     exponential moving average of the parameters (when training keeps one)
    <step>/train/          the rest of the train state (optimiser, loss-weight policy, step, rng)
    <step>/progress/       JSON: where training stands (epoch, data position)

Orbax writes each step into a temporary directory and renames it once complete, so a process
killed during a save leaves the previous step as the latest complete checkpoint. Arrays are
restored with the shardings of the target tree, so a run saved on 4 devices restores onto 2 or 1.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from difffccf_jax.config_cli import load_json_config, save_json_config
from difffccf_jax.errors import UserError

CONFIG_FILE = "config.json"
ARRAY_ITEMS = ("params", "ema_params", "train")
PROGRESS_ITEM = "progress"


def _array_handler():
    """A PyTree handler whose replicated jax.Arrays are written whole by one replica.

    Orbax's default splits every replicated array into one slice per replica, which costs a
    device operation per slice: seconds for the thousand small arrays of a train state.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def open_manager(directory, keep=None, read_only=False, alone=False):
    """An orbax CheckpointManager over `directory` keeping the last `keep` steps (None: all).

    Saves are synchronous: training donates its state buffers to the next step, so the arrays
    must be written before it runs. alone: only this process uses the manager (read_only; one
    process of a multi-process run reading while the others do not), so orbax's barriers wait
    for no other process.
    """
    handlers = {name: _array_handler() for name in ARRAY_ITEMS}
    handlers[PROGRESS_ITEM] = ocp.JsonCheckpointHandler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
        if alone else ocp.options.MultiprocessingOptions())
    return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                 item_handlers=handlers)


def write_config(directory, config):
    """Writes `config` as directory/config.json (temporary name, then rename)."""
    os.makedirs(directory, exist_ok=True)
    save_json_config(config, os.path.join(directory, CONFIG_FILE))


def read_config(directory):
    """The ConfigDict saved in directory/config.json, migrated to the current layout when
    older code saved it (`config_versions.migrate`, through `load_json_config`)."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: expected a checkpoint directory written by "
                        "`difffccf train` or `difffccf convert-torch`")
    return load_json_config(path)


def save(manager, step, items, progress):
    """Saves the array trees `items` (a dict keyed by ARRAY_ITEMS names) and the JSON-able
    `progress` dict as checkpoint `step`; returns once the step is complete on disk."""
    unknown = set(items) - set(ARRAY_ITEMS)
    if unknown:
        raise ValueError(f"unknown checkpoint items {sorted(unknown)}; known: {ARRAY_ITEMS}")
    args = {name: ocp.args.PyTreeSave(tree) for name, tree in items.items()}
    args[PROGRESS_ITEM] = ocp.args.JsonSave(progress)
    manager.save(step, args=ocp.args.Composite(**args), force=True)
    manager.wait_until_finished()


def saved_items(manager, step):
    """Names of the array items stored at `step`."""
    step_dir = epath.Path(manager.directory) / str(step)
    return tuple(name for name in ARRAY_ITEMS if (step_dir / name).exists())


def restore(manager, step, targets):
    """Restores checkpoint `step`: returns (dict of array trees, progress dict).

    targets: dict from item name to a tree of jax.ShapeDtypeStruct (with the sharding each array
    should get on the current devices) or of arrays; stored shapes must match (checked first,
    naming the first tensor that differs).
    """
    metadata = manager.item_metadata(step)
    for name, target in targets.items():
        check_shapes(target, metadata[name], f"{manager.directory}/{step}/{name}")
    args = {name: ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
            for name, target in targets.items()}
    args[PROGRESS_ITEM] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] for name in targets}, dict(restored[PROGRESS_ITEM])


def _key_name(key):
    """The plain name of one step of a tree path (dict key, attribute or index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _shapes_by_path(tree):
    """{'a/b/c': shape} for every leaf; paths written the same for dicts, tuples and classes."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def check_shapes(expected, stored, where):
    """Raises UserError naming the first tensor whose path or shape differs between trees."""
    want, have = _shapes_by_path(expected), _shapes_by_path(stored)
    for path, shape in want.items():
        if path not in have:
            raise UserError(f"{where}: tensor {path} {shape} is missing from the checkpoint")
        if have[path] != shape:
            raise UserError(f"{where}: tensor {path} has shape {have[path]} in the checkpoint, "
                            f"expected {shape} by the config")
    extra = sorted(set(have) - set(want))
    if extra:
        raise UserError(f"{where}: the checkpoint has tensors the config's model lacks, "
                        f"e.g. {extra[0]} {have[extra[0]]}")


_TRACED_SHAPES = {}  # (model config JSON, image size) -> expected_params: one trace each


def expected_params(config):
    """Tree of jax.ShapeDtypeStruct of the parameters of the model that `config` describes
    (traced once per process for each model config and image size: loading, checking and
    writing a checkpoint each ask for it)."""
    from difffccf_jax.model import unet

    key = (config.model.to_json(), repr(config.data.image_size))
    if key not in _TRACED_SHAPES:
        model = unet.model_from_config(config.model)
        _TRACED_SHAPES[key] = jax.eval_shape(
            lambda rng: unet.init_params(model, rng, config.data.image_size),
            jax.random.PRNGKey(0))
    return _TRACED_SHAPES[key]


def read_params(path, prefer_ema=True, sharding=None, alone=False):
    """(config, params) of the latest step in checkpoint directory `path`.

    Takes the EMA parameters when present and `prefer_ema`; arrays get `sharding` (default: the
    first local device). Shapes are checked against the config's model. alone: only this
    process reads (see `open_manager`).
    """
    if not os.path.isdir(path):
        raise UserError(f"checkpoint directory {path} does not exist")
    config = read_config(path)
    manager = open_manager(path, read_only=True, alone=alone)
    step = manager.latest_step()
    if step is None:
        raise UserError(f"{path} holds no complete checkpoint step")
    names = saved_items(manager, step)
    name = "ema_params" if prefer_ema and "ema_params" in names else "params"
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          expected_params(config))
    restored, _ = restore(manager, step, {name: target})
    manager.close()
    return config, restored[name]


def load_for_inference(path, alone=False):
    """(config, params) for sampling from a checkpoint directory written by training (latest
    step, EMA parameters when the run kept them) or by `write_params_checkpoint`. alone: only
    this process reads (see `open_manager`)."""
    return read_params(path, prefer_ema=True, alone=alone)


def write_params_checkpoint(path, config, params):
    """Writes a params-only checkpoint (step 0) with config.json, for `load_for_inference` and
    as initial parameters of training (config.train.init_params)."""
    check_shapes(expected_params(config), params, f"parameters for {path}")
    if os.path.isdir(path) and any(name != CONFIG_FILE for name in os.listdir(path)):
        raise UserError(f"{path} is not empty; choose a new directory for the checkpoint")
    write_config(path, config)
    manager = open_manager(path)
    save(manager, 0, {"params": params}, {"step": 0, "epoch": 0, "source": "params"})
    manager.close()
