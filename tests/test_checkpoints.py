"""Checkpoint files: config.json, rotation, params-only checkpoints, a save killed midway."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from difffccf_jax.model import checkpoints
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError


@pytest.fixture(scope="module")
def tiny_config(tiny_config_path):
    return load_config(tiny_config_path)


@pytest.fixture(scope="module")
def random_params(tiny_config):
    """Parameters of the tiny model's shapes filled with distinct random numbers."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                        checkpoints.expected_params(tiny_config))


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_config_json_round_trip_keeps_tuples(tmp_path, tiny_config):
    checkpoints.write_config(str(tmp_path), tiny_config)
    assert os.listdir(tmp_path) == [checkpoints.CONFIG_FILE]  # no temporary file left
    restored = checkpoints.read_config(str(tmp_path))
    assert restored.to_dict() == tiny_config.to_dict()
    assert restored.model.channel_mult == (1, 2, 2, 4)
    with pytest.raises(UserError, match="config.json does not exist"):
        checkpoints.read_config(str(tmp_path / "missing"))


def test_manager_keeps_the_last_n_steps_next_to_config(tmp_path, tiny_config):
    checkpoints.write_config(str(tmp_path), tiny_config)
    manager = checkpoints.open_manager(str(tmp_path), keep=2)
    for step in (1, 2, 3, 4):
        tree = {"w": np.full((3,), step, np.float32), "count": np.array(step, np.int32)}
        checkpoints.save(manager, step, {"train": tree}, {"epoch": step})
    assert list(manager.all_steps()) == [3, 4]
    restored, progress = checkpoints.restore(
        manager, 3, {"train": {"w": np.zeros(3, np.float32), "count": np.array(0, np.int32)}})
    np.testing.assert_array_equal(restored["train"]["w"], [3.0, 3.0, 3.0])
    assert progress == {"epoch": 3}
    manager.close()
    assert checkpoints.read_config(str(tmp_path)).to_dict() == tiny_config.to_dict()


def test_params_checkpoint_round_trip_and_errors(tmp_path, tiny_config, random_params):
    path = str(tmp_path / "converted")
    checkpoints.write_params_checkpoint(path, tiny_config, random_params)
    config, params = checkpoints.load_for_inference(path)
    assert config.to_dict() == tiny_config.to_dict()
    assert_trees_equal(params, random_params)
    with pytest.raises(UserError, match="not empty"):
        checkpoints.write_params_checkpoint(path, tiny_config, random_params)
    with pytest.raises(UserError, match="does not exist"):
        checkpoints.load_for_inference(str(tmp_path / "nowhere"))
    wrong = jax.tree.map(np.copy, random_params)
    name = sorted(wrong)[0]
    leaf_path, leaf = jax.tree_util.tree_flatten_with_path(wrong[name])[0][0]
    keys = [name] + [k.key for k in leaf_path]
    target = wrong
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = np.zeros(leaf.shape + (2,), leaf.dtype)
    with pytest.raises(UserError, match="/".join(keys)):
        checkpoints.write_params_checkpoint(str(tmp_path / "bad"), tiny_config, wrong)


def test_load_for_inference_prefers_ema_params(tmp_path, tiny_config, random_params):
    checkpoints.write_config(str(tmp_path), tiny_config)
    manager = checkpoints.open_manager(str(tmp_path))
    ema = jax.tree.map(lambda x: x + 1.0, random_params)
    checkpoints.save(manager, 7, {"params": random_params, "ema_params": ema}, {"epoch": 1})
    manager.close()
    _, params = checkpoints.load_for_inference(str(tmp_path))
    assert_trees_equal(params, ema)
    _, raw = checkpoints.read_params(str(tmp_path), prefer_ema=False)
    assert_trees_equal(raw, random_params)


def test_export_keeps_the_latest_ema_params_and_drops_the_trainers_paths(
        tmp_path, tiny_config, random_params, capsys):
    """`difffccf export`: step 9's EMA parameters exactly, no optimiser state, the config with
    its data paths cleared and nothing else changed; a second export into it is refused."""
    from difffccf_jax import cli

    run = str(tmp_path / "run")
    config = tiny_config.copy_and_resolve_references()
    config.data.root, config.data.eval_root = "/trainer/data", "/trainer/held_out"
    checkpoints.write_config(run, config)
    manager = checkpoints.open_manager(run)
    ema = jax.tree.map(lambda x: x - 2.0, random_params)
    for step in (3, 9):
        state = jax.tree.map(lambda x: x + step, random_params)
        checkpoints.save(manager, step, {"params": state, "ema_params": ema if step == 9 else
                                         state, "train": {"opt_state": state}}, {"epoch": step})
    manager.close()
    out = str(tmp_path / "model")
    assert cli.main(["export", "--checkpoint", run, "--out", out]) == 0
    exported, params = checkpoints.load_for_inference(out)
    assert_trees_equal(params, ema)
    manager = checkpoints.open_manager(out, read_only=True)
    assert manager.all_steps() == [0]
    assert checkpoints.saved_items(manager, 0) == ("params",)
    expected = config.to_dict()
    expected["data"].update(root="", eval_root="")
    assert exported.to_dict() == expected
    assert cli.main(["export", "--checkpoint", run, "--out", out]) == 2
    assert "is not empty" in capsys.readouterr().err


# The child saves step 1, then starts step 2 and stops itself at the commit: orbax writes a step
# into a temporary directory and renames it to its final name (the step number) last. The child
# wraps os.rename / os.replace so that the rename to "2" prints a line and waits to be killed,
# which makes the parent's kill land inside the save whatever the machine's load.
KILLED_SAVER = textwrap.dedent("""
    import os
    import sys
    import time
    import numpy as np
    from difffccf_jax.model import checkpoints

    def held_at_the_commit(real):
        def rename(source, target, *args, **kwargs):
            if os.path.basename(os.fspath(target)) == "2":
                print("committing", os.path.basename(os.fspath(source)), flush=True)
                time.sleep(600)  # killed here by the parent
            return real(source, target, *args, **kwargs)
        return rename

    os.rename, os.replace = held_at_the_commit(os.rename), held_at_the_commit(os.replace)
    manager = checkpoints.open_manager(sys.argv[1], keep=3)
    checkpoints.save(manager, 1, {"train": {"w": np.arange(8, dtype=np.float32)}}, {"epoch": 1})
    print("saved", flush=True)
    big = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)
    checkpoints.save(manager, 2, {"train": {"w": big}}, {"epoch": 2})
    print("second save finished", flush=True)
""")


@pytest.mark.multiprocess  # a child process saves and is killed
def test_process_killed_during_a_save_leaves_the_previous_step(tmp_path):
    directory = str(tmp_path / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, directory],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "saved"
        # blocks until the child reaches the commit of step 2 (or exits: then "" or "second
        # save finished", and the rename hook no longer sees orbax's commit)
        line = child.stdout.readline().split()
        assert line[:1] == ["committing"], line
        temporary = line[1]
        assert temporary.startswith("2") and "tmp" in temporary, temporary
        assert sorted(os.listdir(directory)) == sorted(["1", temporary])
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    manager = checkpoints.open_manager(directory)
    assert manager.latest_step() == 1
    restored, progress = checkpoints.restore(
        manager, 1, {"train": {"w": np.zeros(8, np.float32)}})
    np.testing.assert_array_equal(restored["train"]["w"], np.arange(8))
    assert progress == {"epoch": 1}
    # The unfinished step does not block saving step 2 again.
    checkpoints.save(manager, 2, {"train": {"w": np.ones(8, np.float32)}}, {"epoch": 2})
    assert list(manager.all_steps()) == [1, 2]
    manager.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]  # the unfinished step 2 is gone
