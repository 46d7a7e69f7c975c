"""Sweep expansion, the SLURM array script and the sweep report."""

import json
import os
import subprocess

import pytest

from difffccf_jax.tools import sweeps
from difffccf_jax.errors import UserError


def test_product_and_zipped():
    grid = sweeps.product(("a", [1, 2]), ("b", ["x", "y", "z"]))
    assert len(grid) == 6 and grid[0] == {"a": 1, "b": "x"} and grid[-1] == {"a": 2, "b": "z"}
    assert sweeps.zipped(("a", [1, 2]), ("b", [3, 4])) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(UserError, match=r"different lengths: a \(2\), b \(1\)"):
        sweeps.zipped(("a", [1, 2]), ("b", [3]))


def test_expand_resolves_each_run(repo_root):
    path = os.path.join(repo_root, "configs", "sweeps", "adaptive_weighting.py")
    runs = sweeps.expand(path, [("train.epochs", "2")])
    assert [(r.config.weighting.enabled, r.config.seed) for r in runs] == [
        (True, 0), (True, 1), (True, 2), (False, 0), (False, 1), (False, 2)]
    assert all(r.config.train.epochs == 2 for r in runs)
    assert len({r.name for r in runs}) == 6 and runs[3].name == "003-enabled=False-seed=0"
    demo_runs = sweeps.expand(path + ":demo")
    # Equal training length for policy on and off, whatever the machine's load.
    assert {(r.config.train.max_minutes, r.config.train.epochs) for r in demo_runs} == {(0.0, 60)}
    paper_runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps",
                                            "sampling_steps.py") + ":paper")
    assert [r.config.sampling.steps for r in paper_runs] == [10, 30, 60, 100, 250, 2000]
    assert all(r.config.model.model_channels == 64 for r in paper_runs)


def test_expand_refuses_unknown_field(tmp_path, repo_root):
    sweep = tmp_path / "bad.py"
    sweep.write_text(
        "import os\nfrom difffccf_jax.config_cli import load_config_file\n"
        f"def get_config(arg=None):\n    return load_config_file({os.path.join(repo_root, 'configs', 'tiny.py')!r})\n"
        "def get_sweep(arg=None):\n    return [{'train.epoch': 1}]\n")
    with pytest.raises(UserError, match="unknown config key 'train.epoch'"):
        sweeps.expand(str(sweep))


@pytest.mark.multiprocess
def test_slurm_script(tmp_path, repo_root):
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "adaptive_weighting.py"))
    workdir = str(tmp_path / "sweep")
    sweeps.write_runs(runs, workdir)
    script = sweeps.slurm_script(runs, workdir, nodes=2, gpus_per_node=8)
    path = tmp_path / "sweep.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "#SBATCH --array=0-5\n" in script and "#SBATCH --nodes=2\n" in script
    assert "#SBATCH --gpus-per-node=8\n" in script
    assert 'srun difffccf sweep-run --run-dir "$RUN_DIR" --config.train.distributed=True' in script
    # The array index picks each run's folder, and each folder holds its resolved config.
    names = script.split("RUNS=(")[1].split(")")[0].split()
    assert names == [r.name for r in runs]
    for run in runs:
        with open(os.path.join(workdir, run.name, "config.json"), encoding="utf-8") as file:
            saved = json.load(file)
        assert saved["weighting"]["enabled"] == run.config.weighting.enabled
        assert saved["seed"] == run.config.seed
    selected = subprocess.run(
        ["bash", "-c", script.split("set -euo pipefail\n")[1].split("export")[0]
         + 'echo "$RUN_DIR"'],
        env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True, text=True,
        check=True).stdout.strip()
    assert selected == os.path.join(os.path.abspath(workdir), runs[2].name)


def test_report_sorts_and_skips_unfinished(tmp_path, repo_root):
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "sampling_steps.py"))
    workdir = str(tmp_path)
    sweeps.write_runs(runs, workdir)
    scores = {runs[0].name: 0.5, runs[1].name: 0.9, runs[2].name: 0.1}
    for name, score in scores.items():
        with open(os.path.join(workdir, name, sweeps.RESULT_FILE), "w", encoding="utf-8") as f:
            json.dump({"MI": score}, f)
    rows = sweeps.sort_rows(sweeps.collect(workdir), "MI", descending=True)
    assert [row["run"] for row in rows] == [runs[1].name, runs[0].name, runs[2].name]
    assert rows[0]["sampling.steps"] == runs[1].config.sampling.steps
    markdown = sweeps.write_report(rows, workdir)
    assert markdown.count("\n") == 2 + 3
    with open(os.path.join(workdir, "report.csv"), encoding="utf-8") as file:
        assert file.read().splitlines()[1].startswith(runs[1].name + ",")
    with pytest.raises(UserError, match="no run has the metric 'SSIM'; available: MI"):
        sweeps.sort_rows(rows, "SSIM")


def test_local_sweep_skips_finished_runs(tmp_path, repo_root):
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "sampling_steps.py"))
    workdir = str(tmp_path)
    sweeps.write_runs(runs, workdir)
    calls = []

    def interrupted_after_two(config, run_dir):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(os.path.basename(run_dir))
        return {"MI": float(config.sampling.steps)}

    with pytest.raises(KeyboardInterrupt):
        sweeps.run_local(runs, workdir, interrupted_after_two, log=lambda _: None)
    assert calls == [runs[0].name, runs[1].name]
    assert [sweeps.is_done(os.path.join(workdir, r.name)) for r in runs] == [
        True, True, False, False]
    calls.clear()
    sweeps.run_local(runs, workdir, lambda c, d: calls.append(os.path.basename(d)) or {},
                     log=lambda _: None)
    assert calls == [runs[2].name, runs[3].name]


@pytest.mark.slow
def test_two_run_local_sweep_on_tiny(tmp_path, repo_root, tiny_config_path):
    from difffccf_jax import cli

    data = str(tmp_path / "data")
    assert cli.main(["make-data", "--task", "pet", "--num", "4", "--size", "32", "--seed", "0",
                     "--out", data]) == 0
    sweep_file = tmp_path / "two.py"
    sweep_file.write_text(
        "from difffccf_jax.config_cli import load_config_file\n"
        "from difffccf_jax.tools.sweeps import zipped\n"
        f"def get_config(arg=None):\n    return load_config_file({tiny_config_path!r})\n"
        "def get_sweep(arg=None):\n    return zipped(('seed', [0, 1]))\n")
    workdir = str(tmp_path / "sweep")
    # the tiny model cut to two levels of one residual block: the sweep is what is tested
    overrides = ["--config.data.root", data, "--config.train.epochs=1",
                 "--config.train.steps_per_epoch=2", "--config.train.fast_compile=True",
                 "--config.sampling.steps=3", "--config.model.channel_mult=(1, 2)",
                 "--config.model.num_res_blocks=1", "--config.model.deformation_features=(8, 16)"]
    assert cli.main(["sweep", "--sweep", str(sweep_file), "--workdir", workdir,
                     "--launcher", "local"] + overrides) == 0
    assert cli.main(["sweep-report", "--workdir", workdir, "--sort-by", "EN"]) == 0
    with open(os.path.join(workdir, "report.csv"), encoding="utf-8") as file:
        lines = file.read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("run,seed,loss,EN")
    assert {line.split(",")[1] for line in lines[1:]} == {"0", "1"}
    for line in lines[1:]:
        run_dir = os.path.join(workdir, line.split(",")[0])
        assert len([n for n in os.listdir(os.path.join(run_dir, "fused"))
                    if n.endswith(".png")]) == 4
