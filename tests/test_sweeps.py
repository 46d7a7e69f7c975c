"""Sweep expansion, validation, launching through submitit (SLURM stand-ins and the local
executor) and the sweep report."""

import json
import os
import re
import signal
import time

import jax
import numpy as np
import pytest
import submitit

from difffccf_jax.tools import sweeps
from difffccf_jax.errors import UserError
from processes import xla_flags


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


def fake_slurm(monkeypatch, tmp_path):
    """srun and sbatch stand-ins on PATH; sbatch keeps a copy of the script it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/usr/bin/env bash\ncp "$1" {tmp_path / "submitted.sh"}\n'
        'echo "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


@pytest.mark.multiprocess
def test_slurm_launch_is_one_submitit_job_array(tmp_path, repo_root, monkeypatch):
    from difffccf_jax import cli

    script_copy = fake_slurm(monkeypatch, tmp_path)
    workdir = tmp_path / "sweep"
    data = tmp_path / "data"
    data.mkdir()
    assert cli.main([
        "sweep", "--sweep", os.path.join(repo_root, "configs", "sweeps", "adaptive_weighting.py"),
        "--workdir", str(workdir), "--launcher", "slurm", "--nodes", "2", "--gpus-per-node", "8",
        "--time", "1-12:00:00", "--parallel", "3", "--partition", "gpu", "--account", "lab",
        "--qos", "high", "--mem", "400G", "--constraint", "a100", "--setup", "module load cuda",
        "--slurm.exclude=gpu007", "--slurm.cpus_per_task=16", "--config.data.batch_size=16",
        f"--config.data.root={data}"]) == 0
    script = script_copy.read_text()
    for line in ("#SBATCH --array=0-5%3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --time=2160", "#SBATCH --partition=gpu",
                 "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --mem=400G",
                 "#SBATCH --constraint=a100", "#SBATCH --exclude=gpu007",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --signal=USR2@90", "module load cuda"):
        assert line in script.splitlines(), line
    assert "srun --unbuffered" in script and "-m submitit.core._submit" in script
    # Without --parallel every run of the array may start at once.
    assert cli.main(["sweep", "--sweep", os.path.join(repo_root, "configs", "sweeps",
                                                      "adaptive_weighting.py"),
                     "--workdir", str(tmp_path / "all"), "--launcher", "slurm",
                     f"--config.data.root={data}"]) == 0
    assert "#SBATCH --array=0-5%6" in script_copy.read_text().splitlines()
    # Each array task's pickled job is the run folder's RunJob; each folder holds its config.
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "adaptive_weighting.py"))
    for index, run in enumerate(runs):
        delayed = submitit.helpers.DelayedSubmission.load(
            workdir / "logs" / f"4242_{index}" / f"4242_{index}_submitted.pkl")
        assert delayed.function.run_dir == str(workdir / run.name)
        assert delayed.function.checkpoint().function is delayed.function
        saved = json.loads((workdir / run.name / "config.json").read_text())
        assert (saved["weighting"]["enabled"], saved["seed"]) == (
            run.config.weighting.enabled, run.config.seed)


def test_sweep_refuses_a_batch_size_the_devices_do_not_split(tmp_path, repo_root, capsys,
                                                             monkeypatch):
    from difffccf_jax import cli

    fake_slurm(monkeypatch, tmp_path)
    workdir = tmp_path / "sweep"
    arguments = ["sweep", "--sweep",
                 os.path.join(repo_root, "configs", "sweeps", "adaptive_weighting.py:paper"),
                 "--workdir", str(workdir), "--launcher", "slurm", "--gpus-per-node", "8",
                 f"--config.data.root={tmp_path}"]
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert error == ("difffccf sweep: error: run 000-enabled=True-seed=0: "
                     "config.data.batch_size=4 does not split over the 8 devices of 1 node(s) "
                     "x 8 GPUs; use a multiple of 8 or fewer devices\n")
    assert not workdir.exists() and not (tmp_path / "submitted.sh").exists()
    assert cli.main(arguments[:-1] + ["--config.data.batch_size=8",
                                      "--config.data.root=/no/such/folder"]) == 2
    assert "config.data.root='/no/such/folder' is not a folder" in capsys.readouterr().err
    assert cli.main(arguments + ["--launcher", "local", "--nodes", "2"]) == 2
    assert "--nodes must be 1" in capsys.readouterr().err
    for field in ("no_such_field", "nodes"):  # unknown to submitit; has its own flag
        assert cli.main(arguments[:-1] + ["--config.data.batch_size=8",
                                          f"--slurm.{field}=3"]) == 2
        assert f"--slurm.{field}: not an sbatch field" in capsys.readouterr().err
    assert not workdir.exists()
    with pytest.raises(SystemExit):  # another command takes no --slurm.* fields
        cli.main(["show-config", "--config", f"{repo_root}/configs/tiny.py", "--slurm.qos=x"])


def test_a_sweep_changed_since_it_started_is_refused(tmp_path, repo_root):
    path = os.path.join(repo_root, "configs", "sweeps", "sampling_steps.py")
    runs = sweeps.expand(path)
    sweeps.write_runs(runs, str(tmp_path))
    sweeps.check_unchanged(runs, str(tmp_path))  # the same sweep again: nothing changed
    sweeps.check_unchanged(sweeps.expand(path)[:1], str(tmp_path / "new"))
    changed = sweeps.expand(path, [("train.epochs", "7"), ("seed", "3")])
    with pytest.raises(UserError, match=r"run 000-steps=6: .*config.json was written with other "
                                        r"values of seed, train.epochs; use another --workdir"):
        sweeps.check_unchanged(changed, str(tmp_path))


def test_host_device_count_reads_xla_flags():
    assert sweeps.host_device_count("") == 1
    assert sweeps.host_device_count("--xla_cpu_x=1 --xla_force_host_platform_device_count=2 "
                                    "--xla_force_host_platform_device_count=4") == 4


def test_parse_minutes():
    assert [sweeps.parse_minutes(t) for t in ("90", "10:30", "02:00:00", "1-00:00:00", "2-6",
                                             "1-01:01")] == [90, 11, 120, 1440, 3240, 1501]
    with pytest.raises(UserError, match="--time='soon' is not a SLURM time"):
        sweeps.parse_minutes("soon")


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


def test_runs_in_folders_skip_finished_and_keep_failures(tmp_path, repo_root):
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "sampling_steps.py"))
    workdir = str(tmp_path)
    sweeps.write_runs(runs, workdir)
    calls = []

    def fails_on_the_third(config, run_dir):
        if len(calls) == 2:
            raise ValueError("the loss is nan")
        calls.append(os.path.basename(run_dir))
        return {"MI": float(config.sampling.steps)}

    run_dirs = [os.path.join(workdir, r.name) for r in runs]
    for run, run_dir in zip(runs[:2], run_dirs):
        sweeps.run_in_folder(run.config, run_dir, fails_on_the_third, log=lambda _: None)
    with pytest.raises(ValueError):
        sweeps.run_in_folder(runs[2].config, run_dirs[2], fails_on_the_third, log=lambda _: None)
    assert calls == [runs[0].name, runs[1].name]
    assert [sweeps.run_status(d)[0] for d in run_dirs] == ["done", "done", "failed", "unfinished"]
    assert sweeps.status_lines(workdir) == [
        f"failed {runs[2].name}: ValueError: the loss is nan",
        f"unfinished {runs[3].name}: not started", "2 done, 1 failed, 1 unfinished"]
    calls.clear()
    for run, run_dir in zip(runs, run_dirs):
        sweeps.run_in_folder(run.config, run_dir, lambda c, d: calls.append(
            os.path.basename(d)) or {}, log=lambda _: None)
    assert calls == [runs[2].name, runs[3].name]
    assert sweeps.status_lines(workdir) == ["4 done, 0 failed, 0 unfinished"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_local_executor_runs_two_process_jobs_requeues_and_reports(tmp_path, repo_root,
                                                                    monkeypatch):
    """Through submitit's local executor, two runs of 2 processes x 2 CPU devices at once: one
    is stopped by USR2 (as training stops), requeued by submitit and finishes on its second
    attempt; the other fails and is reported with its error."""
    from difffccf_jax.training import stopping

    monkeypatch.setenv("XLA_FLAGS", xla_flags(2))
    runs = sweeps.expand(os.path.join(repo_root, "configs", "sweeps", "sampling_steps.py"))
    workdir = str(tmp_path)
    sweeps.write_runs(runs, workdir)

    def stopped_once_or_failing(config, run_dir):
        import jax  # pylint: disable=import-outside-toplevel
        from difffccf_jax import parallel  # pylint: disable=import-outside-toplevel

        if config.sampling.steps == 12:
            raise ValueError("the loss is nan")
        parallel.initialize_distributed(False)
        attempts = os.path.join(run_dir, f"attempts.{jax.process_index()}")
        first = not os.path.exists(attempts)
        with open(attempts, "a", encoding="utf-8") as file:
            file.write("x")
        if first:
            raise stopping.Preempted(signal.SIGUSR2, 3, run_dir)
        return {"processes": jax.process_count(), "devices": jax.device_count()}

    resources = sweeps.Resources(tasks_per_node=2, cpu_devices=2)
    executor = sweeps.make_executor("local", os.path.join(workdir, "logs", "%j"),
                                    sweeps.executor_parameters("local", resources, 10))
    run_dirs = [os.path.join(workdir, run.name) for run in runs]
    jobs = sweeps.launch(executor, run_dirs[:2], parallel=2, run_fn=stopped_once_or_failing,
                         poll_seconds=0.2)
    assert len(jobs) == 2
    for process in range(2):
        with open(os.path.join(run_dirs[0], f"attempts.{process}"), encoding="utf-8") as file:
            assert file.read() == "xx"
    with open(os.path.join(run_dirs[0], sweeps.RESULT_FILE), encoding="utf-8") as file:
        assert json.load(file) == {"processes": 2, "devices": 4}
    assert sweeps.status_lines(workdir) == [
        f"failed {runs[1].name}: ValueError: the loss is nan",
        f"unfinished {runs[2].name}: not started", f"unfinished {runs[3].name}: not started",
        "1 done, 1 failed, 2 unfinished"]


def task_processes(controller_pid):
    """The task processes submitit's local controller `controller_pid` started."""
    with open(f"/proc/{controller_pid}/task/{controller_pid}/children", encoding="utf-8") as file:
        return [int(pid) for pid in file.read().split()]


def logged_steps(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line)["step"] for line in file if '"loss"' in line]


def wait_for(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_stopped_run_requeues_resumes_and_ends_like_one_process(tmp_path, tiny_config_path,
                                                                   monkeypatch):
    """A sweep run through submitit's local executor, 2 processes x 2 CPU devices, gets USR2
    on both processes mid-training (as SLURM's --signal sends it): every process saves the
    same step, submitit requeues the job, the second attempt resumes, fuses and scores. The run
    ends DONE with the final parameters of an uninterrupted single-process 4-device run of its
    config. (Two such jobs at once, requeued and failed: the test above.)"""
    from test_train import params_at  # pylint: disable=import-outside-toplevel

    from difffccf_jax import cli
    from difffccf_jax.training import train

    data = str(tmp_path / "data")
    assert cli.main(["make-data", "--task", "pet", "--num", "4", "--size", "16", "--seed", "0",
                     "--out", data]) == 0
    sweep_file = tmp_path / "one.py"
    sweep_file.write_text(
        "from difffccf_jax.config_cli import load_config_file\n"
        "from difffccf_jax.tools.sweeps import zipped\n"
        f"def get_config(arg=None):\n    return load_config_file({tiny_config_path!r})\n"
        "def get_sweep(arg=None):\n    return zipped(('seed', [0]))\n")
    overrides = [("data.root", data), ("data.image_size", "16"),
                 ("loss.registration_size", "16"), ("train.epochs", "2"),
                 ("train.steps_per_epoch", "6"), ("train.log_every_steps", "1"),
                 ("train.checkpoint_every_epochs", "1"), ("train.fast_compile", "True"),
                 ("sampling.steps", "3"), ("model.channel_mult", "(1, 2)"),
                 ("model.num_res_blocks", "1"), ("model.deformation_features", "(8, 16)")]
    runs = sweeps.expand(str(sweep_file), overrides)
    workdir = str(tmp_path / "sweep")
    sweeps.validate(runs, sweeps.Resources(tasks_per_node=2, cpu_devices=2))
    sweeps.write_runs(runs, workdir)
    (run,) = runs
    run_dir = os.path.join(workdir, run.name)
    monkeypatch.setenv("XLA_FLAGS", xla_flags(2))
    executor = sweeps.make_executor("local", os.path.join(workdir, "logs", "%j"),
                                    sweeps.executor_parameters(
                                        "local", sweeps.Resources(tasks_per_node=2), 30))
    job = executor.submit(sweeps.RunJob(run_dir))
    wait_for(lambda: logged_steps(run_dir), 600, "the run's first step")
    for pid in task_processes(int(job.job_id)):
        os.kill(pid, signal.SIGUSR2)
    wait_for(job.done, 900, "the job")
    assert job.results() == [None, None]  # raises with a task's traceback if it failed
    assert sweeps.run_status(run_dir) == ("done", "")
    # The run stopped during training on both processes, and its second attempt resumed.
    stopped = re.findall(r"training stopped on SIGUSR2 after step (\d+)",
                         job.task(1).stderr() or "")
    assert stopped and 1 <= int(stopped[0]) < 12, job.task(1).stderr()
    assert "Requeued job" in job.stderr()
    assert logged_steps(run_dir) == list(range(1, 13))
    reference = train.fit(run.config, str(tmp_path / "reference"))
    final = params_at(os.path.join(run_dir, train.CHECKPOINT_DIR), run.config)[12]
    for got, expected in zip(jax.tree.leaves(final), jax.tree.leaves(reference.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected.addressable_data(0)),
                                   rtol=1e-4, atol=1e-4)
