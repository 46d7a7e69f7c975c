"""docs/cluster.md stays true: every fenced command on the page runs here in its CPU form.

A block marked ```bash runs its commands one after another, ```bash parallel starts each line
as its own process at once (the processes of one multi-process run), ```bash sbatch is a job
script run with a stand-in `srun` that starts its tasks on localhost with SLURM's variables.
The CPU form (`cpu_form`) swaps the paper config for the tiny one on 16 px pairs, the global
batch for 4 (2 processes x 2 simulated CPU devices), SLURM's launcher for submitit's local
executor, and the cluster's flags for their local meaning.
"""

import os
import re
import subprocess
import sys

import pytest

from processes import free_port, xla_flags

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

FENCE = re.compile(r"^```bash( \w+)?\n(.*?)^```", re.S | re.M)
# The tiny model cut to two levels of one residual block, 2 steps on 16 px pairs.
TINY = ("--config.train.epochs=1 --config.train.steps_per_epoch=2 "
        "--config.train.fast_compile=True --config.model.channel_mult='(1, 2)' "
        "--config.model.num_res_blocks=1 --config.model.deformation_features='(8, 16)' "
        "--config.data.image_size=16 --config.loss.registration_size=16 "
        "--config.sampling.steps=3")
# Blocks whose CPU form another test runs.
ELSEWHERE = {"difffccf benchmark --preset accelerator --update":
             ("test_benchmarking.py", "def test_accelerator_preset_cpu_form_writes_the_throughput")}
# The page's sweep in its CPU form: two runs that differ in their seed only, so that both
# train with the step program that the one-process run above compiled (the persistent cache).
SWEEP_FILE = """from difffccf_jax.config_cli import load_config_file
from difffccf_jax.tools.sweeps import product
def get_config(arg=None):
    return load_config_file({tiny!r})
def get_sweep(arg=None):
    return product(("seed", [0, 1]))
"""
FAKE_SRUN = """#!/usr/bin/env bash
# srun's stand-in: SLURM_NTASKS tasks of one step on localhost, with SLURM's variables.
pids=()
for ((task = 0; task < SLURM_NTASKS; task++)); do
    SLURM_PROCID=$task SLURM_LOCALID=$task SLURM_NODEID=0 "$@" > "$SRUN_LOGS/task$task.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""


def read_blocks(path):
    """[(kind, text)] of the page's ```bash blocks, continuation lines joined."""
    with open(path, encoding="utf-8") as file:
        page = file.read()
    return [((kind or "").strip(), text.replace("\\\n", " "))
            for kind, text in FENCE.findall(page)]


def cpu_form(text, python, sweep_file, port):
    """The block's commands as they run here (see the module docstring)."""
    replacements = [
        (r"\bdifffccf (train|sweep) (.*)", rf"difffccf \1 \2 {TINY}"),
        (r"configs/sweeps/adaptive_weighting\.py:paper", sweep_file),
        (r"configs/paper\.py", "configs/tiny.py"),
        (r"--config\.data\.batch_size=32", "--config.data.batch_size=4"),
        (r"localhost:12345", f"localhost:{port}"),
        (r"--launcher slurm", "--launcher local"),
        # A run's node: one process driving the node's devices, here its 2 CPU devices.
        (r"--gpus-per-node 8 ", ""),
        (r"--(partition|account|qos|mem|constraint) \S+ ?", ""),
        (r"module load cuda", "true"),
        (r"\bdifffccf ", f"{python} -m difffccf_jax.cli "),
    ]
    for pattern, replacement in replacements:
        text = re.sub(pattern, replacement, text)
    return text


def run(command, env, timeout=600):
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, command + "\n" + (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def environment(tmp_path_factory, repo_root):
    """DATA (4 generated 16 px pet pairs), RUNS, 2 simulated CPU devices per process, the
    stand-in srun on PATH."""
    root = tmp_path_factory.mktemp("cluster_docs")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = dict(os.environ, DATA=str(root / "data"), RUNS=str(root / "runs"),
               SRUN_LOGS=str(root), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]))
    run(f"{sys.executable} -m difffccf_jax.cli make-data --task pet --num 4 --size 16 "
        f"--seed 0 --out $DATA", env)
    return root, env


def test_every_command_of_the_page_runs_in_its_cpu_form(repo_root, tiny_config_path,
                                                        environment):
    root, env = environment
    sweep_file = root / "weighting.py"
    sweep_file.write_text(SWEEP_FILE.format(tiny=tiny_config_path))
    blocks = read_blocks(os.path.join(repo_root, "docs", "cluster.md"))
    assert [kind for kind, _ in blocks] == ["", "", "parallel", "sbatch", "", ""]
    outputs = {}
    for index, (kind, text) in enumerate(blocks):
        if text.strip() in ELSEWHERE:
            test_file, definition = ELSEWHERE[text.strip()]
            with open(os.path.join(repo_root, "tests", test_file), encoding="utf-8") as file:
                assert definition in file.read()
            continue
        commands = cpu_form(text, sys.executable, str(sweep_file), free_port())
        if kind == "parallel":
            workers = [subprocess.Popen(["bash", "-c", line], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                       for line in commands.splitlines() if line.strip()]
            outputs[index] = [worker.communicate(timeout=600)[0] for worker in workers]
            for worker, output in zip(workers, outputs[index]):
                assert worker.returncode == 0, output[-4000:]
        elif kind == "sbatch":
            script = root / "train.sbatch"
            script.write_text(commands)
            run(f"bash {script}", dict(env, SLURM_JOB_ID=str(free_port()), SLURM_NTASKS="2",
                                       SLURM_STEP_NODELIST="localhost",
                                       SLURM_TASKS_PER_NODE="2"))
            outputs[index] = [(root / f"task{t}.log").read_text() for t in range(2)]
        else:
            outputs[index] = [run(line, env) for line in commands.splitlines() if line.strip()]
    runs = root / "runs"
    # One process on 2 devices, two processes with an explicit coordinator and two SLURM
    # tasks: each trained its 2 steps and saved them.
    for name in ("paper", "two", "paper4"):
        assert sorted(os.listdir(runs / name / "checkpoints")) == ["2", "config.json"], name
    for index in (2, 3):
        assert "[devices] 2 processes on 1 hosts, 4 cpu devices in all" in outputs[index][0]
    # The sweep's two runs finished once each and the report lists both.
    sweep_output, report = outputs[4]
    assert "launching 2 (local)" in sweep_output and "2 done, 0 failed, 0 unfinished" in report
    for run_dir in ("000-seed=0", "001-seed=1"):
        assert sorted(n for n in os.listdir(runs / "weighting" / run_dir)
                      if n.isupper()) == ["DONE"]
        assert len([n for n in os.listdir(runs / "weighting" / run_dir / "fused")
                    if n.endswith(".png")]) == 4
    assert len((runs / "weighting" / "report.csv").read_text().splitlines()) == 3
    # The two shares of the archive fused every pair once, none failed.
    assert sorted(os.listdir(runs / "fused")) == [f"{i}.png" for i in range(1, 5)]
