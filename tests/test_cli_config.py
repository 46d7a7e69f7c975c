"""The CLI entry point and config loading with command-line overrides."""

import os
import re
import subprocess
import sys

import pytest

from difffccf_jax import cli
from difffccf_jax.config_cli import apply_override, load_config
from difffccf_jax.errors import UserError


# The commands README.md's command table documents, and sweep-run, which each SLURM array task
# written by `difffccf sweep --launcher slurm` calls.
COMMANDS = {"demo", "make-data", "train", "fuse", "evaluate", "model-summary", "convert-torch",
            "benchmark", "sweep", "sweep-report", "sweep-run", "show-config", "evaluate-denoising",
            "export", "registration"}


def test_help_lists_every_documented_subcommand(capsys):
    """`difffccf --help` lists exactly the documented commands (one per line, indented by 4;
    wrapped help text is indented further), and each one parses its own --help."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = re.findall(r"^ {4}(\S+)", capsys.readouterr().out, re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    for name in sorted(COMMANDS):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: difffccf {name} "), name


def test_unregistered_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fusion"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fusion'" in capsys.readouterr().err


def test_override_changes_config(tiny_config_path):
    config = load_config(tiny_config_path, [("train.epochs", "200"),
                                            ("model.channel_mult", "(1, 2)"),
                                            ("optim.learning_rate", "1"),
                                            ("model.compat", "true"),
                                            ("data.tasks", "spect")])
    assert config.train.epochs == 200
    assert tuple(config.model.channel_mult) == (1, 2)
    assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
    assert config.model.compat is True
    assert config.data.tasks == ("spect",)


def test_tiny_derives_from_paper(tiny_config_path, paper_config_path):
    tiny, paper = load_config(tiny_config_path), load_config(paper_config_path)
    assert set(tiny.keys()) == set(paper.keys())
    assert tiny.model.model_channels % tiny.model.norm_groups == 0
    assert paper.model.model_channels == 64 and paper.diffusion.steps == 2000
    assert tuple(paper.loss.quality_weights) == (30.0, 40.0, 40.0)


def test_unknown_key_names_key_and_valid_ones(tiny_config_path):
    config = load_config(tiny_config_path)
    with pytest.raises(UserError, match=r"train\.epoch'.*no field 'epoch'.*valid: .*epochs"):
        apply_override(config, "train.epoch", "3")
    with pytest.raises(UserError, match="unknown config key 'nonsense.x'"):
        apply_override(config, "nonsense.x", "3")


def test_wrong_type_is_refused(tiny_config_path):
    config = load_config(tiny_config_path)
    with pytest.raises(UserError, match=r"'train\.epochs' expects int"):
        apply_override(config, "train.epochs", "abc")
    with pytest.raises(UserError, match="is a group"):
        apply_override(config, "model", "3")
    with pytest.raises(UserError, match="tuple of numbers"):
        apply_override(config, "model.channel_mult", "('a',)")


def test_cli_bad_key_exits_nonzero(tiny_config_path, capsys):
    status = cli.main(["show-config", "--config", tiny_config_path, "--config.train.epoch=3"])
    assert status == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_cli_override_is_shown(tiny_config_path, capsys):
    assert cli.main(["show-config", "--config", tiny_config_path,
                     "--config.train.epochs", "77"]) == 0
    assert "epochs: 77" in capsys.readouterr().out


@pytest.mark.multiprocess  # starts a fresh Python
def test_import_loads_no_heavy_library():
    """`import difffccf_jax` and the CLI's --help path stay cheap: no heavy imports."""
    code = ("import sys, difffccf_jax, difffccf_jax.cli; difffccf_jax.cli.build_parser(); "
            "heavy = [m for m in ('jax', 'flax', 'tensorflow_datasets', 'orbax', 'torch', "
            "'matplotlib', 'tensorflow') if m in sys.modules]; print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    assert result.stdout.strip() == ""


def test_json_round_trip_keeps_types(tiny_config_path, tmp_path):
    from difffccf_jax.config_cli import save_json_config
    config = load_config(tiny_config_path, [("train.epochs", "9")])
    path = str(tmp_path / "config.json")
    save_json_config(config, path)
    loaded = load_config(path, [("model.channel_mult", "(1, 2, 4)")])
    assert loaded.train.epochs == 9
    assert loaded.model.channel_mult == (1, 2, 4)
    assert loaded.data.tasks == config.data.tasks and isinstance(loaded.data.tasks, tuple)
    assert loaded.regions.pet.cr.train.threshold == config.regions.pet.cr.train.threshold


# ---- the persistent compilation cache -----------------------------------------------------------

def test_compilation_cache_defaults_to_the_users_cache_folder_and_respects_a_choice(tmp_path):
    home = str(tmp_path / "xdg")
    environ = {"XDG_CACHE_HOME": home}
    cli.use_compilation_cache(environ)
    assert environ[cli.CACHE_VARIABLE] == os.path.join(home, "difffccf_jax", "jax")
    for chosen in ("/data/cache", ""):  # a folder of the user's; empty: no cache
        environ = {"XDG_CACHE_HOME": home, cli.CACHE_VARIABLE: chosen}
        cli.use_compilation_cache(environ)
        assert environ[cli.CACHE_VARIABLE] == chosen
    environ = {"HOME": str(tmp_path / "home")}
    cli.use_compilation_cache(environ)
    assert environ[cli.CACHE_VARIABLE].endswith(os.path.join(".cache", "difffccf_jax", "jax"))


def test_a_command_sets_the_cache_before_it_runs(tmp_path, monkeypatch, tiny_config_path, capsys):
    monkeypatch.delenv(cli.CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.main(["show-config", "--config", tiny_config_path]) == 0
    assert os.environ[cli.CACHE_VARIABLE] == str(tmp_path / "difffccf_jax" / "jax")


def test_jax_writes_compiled_programs_where_the_cache_points(tmp_path):
    """A fresh process: the folder set before JAX is imported receives the compiled program."""
    environ = {name: value for name, value in os.environ.items()
               if name not in (cli.CACHE_VARIABLE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    environ["XDG_CACHE_HOME"] = str(tmp_path)
    code = ("import os; from difffccf_jax import cli; cli.use_compilation_cache(os.environ); "
            "import jax; jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "jax.block_until_ready(jax.jit(lambda x: x * 2.0 + 1.0)(1.0))")
    subprocess.run([sys.executable, "-c", code], env=environ, check=True, timeout=300)
    folder = tmp_path / "difffccf_jax" / "jax"
    assert folder.is_dir() and any(folder.iterdir())
