"""Hyper-parameter sweeps: a base config plus a grid of field overrides, expanded into named runs,
checked against the devices they will get and launched through submitit.

A sweep file is a Python file like a config file: `get_config(arg=None)` returns the base config
and `get_sweep(arg=None)` returns the grid (`FILE:ARG` passes ARG to both), a list of
{dotted field: value} dicts built with `product` and `zipped` (lists of dicts concatenate).
Each run gets its own folder under the sweep's workdir with its resolved `config.json`, so any
run can be repeated alone with `difffccf train` or `difffccf sweep-run`. A run is one submitit
job (`RunJob`): on SLURM one task of a job array, here a job of submitit's local executor; it
writes `final_metrics.json` and `DONE` when it ends, `FAILED.<process>` when it fails, and is
requeued (and resumes) when stopped before its time limit."""

import csv
import dataclasses
import io
import itertools
import json
import os
import re
import signal
import time
import traceback

import submitit

from difffccf_jax import files
from difffccf_jax.config_cli import (apply_override, load_config_file, load_python_file,
                                     save_json_config)
from difffccf_jax.errors import UserError

DONE_FILE = "DONE"
RESULT_FILE = "final_metrics.json"
FAILED_PREFIX = "FAILED."  # + the index of the process that failed; holds its traceback


def product(*axes):
    """Every combination of the axes' values; each axis is (dotted field, values)."""
    keys = [key for key, _ in axes]
    return [dict(zip(keys, values)) for values in itertools.product(*[v for _, v in axes])]


def zipped(*axes):
    """The axes' values taken together position by position; all axes have the same length."""
    lengths = {len(values) for _, values in axes}
    if len(lengths) > 1:
        raise UserError("zipped sweep axes have different lengths: "
                        + ", ".join(f"{key} ({len(values)})" for key, values in axes))
    keys = [key for key, _ in axes]
    return [dict(zip(keys, values)) for values in zip(*[v for _, v in axes])]


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a sweep: its folder name, its overrides and the resolved config."""
    name: str
    overrides: dict
    config: object


def _slug(text):
    return re.sub(r"[^A-Za-z0-9.=_-]+", "-", str(text)).strip("-")


def run_name(index, overrides):
    """A readable, file-system-safe name such as `003-weighting.enabled=False`."""
    parts = [f"{key.split('.')[-1]}={_slug(value)}" for key, value in overrides.items()]
    return "-".join([f"{index:03d}"] + parts)


def expand(sweep_spec, overrides=()):
    """The runs of the sweep file `path[:arg]` in grid order; `overrides` (dotted key, text)
    apply to every run before the grid's own values."""
    sweep_path, _, arg = sweep_spec.partition(":")
    if not os.path.isfile(sweep_path):
        raise UserError(f"sweep file {sweep_path!r} does not exist")
    module_config = load_config_file(sweep_spec)
    for key, text in overrides:
        apply_override(module_config, key, text)
    grid = _load_grid(sweep_path, arg or None)
    runs = []
    for index, overrides in enumerate(grid):
        config = module_config.copy_and_resolve_references()
        for key, value in overrides.items():
            apply_override(config, key, repr(value))
        runs.append(Run(run_name(index, overrides), dict(overrides), config))
    return runs


def _load_grid(sweep_path, arg):
    module = load_python_file(sweep_path)
    if not hasattr(module, "get_sweep"):
        raise UserError(f"sweep file {sweep_path!r} has no get_sweep(arg=None) function")
    grid = list(module.get_sweep(arg))
    if not grid or not all(isinstance(point, dict) for point in grid):
        raise UserError(f"get_sweep() in {sweep_path!r} must return a non-empty list of dicts")
    return grid


def write_runs(runs, workdir):
    """Creates one folder per run with its resolved config.json, and the sweep's index."""
    os.makedirs(workdir, exist_ok=True)
    for run in runs:
        run_dir = os.path.join(workdir, run.name)
        os.makedirs(run_dir, exist_ok=True)
        save_json_config(run.config, os.path.join(run_dir, "config.json"))
    index = [{"name": run.name, "overrides": run.overrides} for run in runs]
    files.write_text(os.path.join(workdir, "sweep.json"), json.dumps(index, indent=2, default=str))


def is_done(run_dir):
    return os.path.exists(os.path.join(run_dir, DONE_FILE))


def failure_files(run_dir):
    """The FAILED.<process> files of a run, oldest first (the first failure is the cause)."""
    names = [n for n in os.listdir(run_dir) if n.startswith(FAILED_PREFIX)]
    return sorted(names, key=lambda n: os.path.getmtime(os.path.join(run_dir, n)))


def run_in_folder(config, run_dir, run_fn, log=print):
    """One run's life: skipped when DONE, else `run_fn(config, run_dir)` (which resumes from
    the run's last checkpoint on its own) returns the final metrics, and process 0 writes them
    and DONE; a requested stop (training.stopping.Preempted) is no failure and is raised as it is.
    An error is kept, per process, in FAILED.<process index> (its traceback) for
    `sweep-report` and raised again."""
    import jax  # pylint: disable=import-outside-toplevel
    from difffccf_jax.training import stopping  # pylint: disable=import-outside-toplevel

    name = os.path.basename(os.path.normpath(run_dir))
    if is_done(run_dir):
        log(f"[sweep] {name}: finished before, skipped")
        return
    log(f"[sweep] {name}: running")
    try:
        metrics = run_fn(config, run_dir)
    except stopping.Preempted:
        raise
    except Exception:
        files.write_text(os.path.join(run_dir, f"{FAILED_PREFIX}{jax.process_index()}"),
                         traceback.format_exc())
        raise
    if jax.process_index() == 0:
        files.write_text(os.path.join(run_dir, RESULT_FILE), json.dumps(metrics, indent=2))
        files.write_text(os.path.join(run_dir, DONE_FILE), "")
        for failed in failure_files(run_dir):
            os.remove(os.path.join(run_dir, failed))


class RunJob(submitit.helpers.Checkpointable):
    """One sweep run as a submitit job: every task (process) of the job runs it.

    On submitit's requeue signal (USR2: SLURM's warning before the time limit, or the local
    executor's) training saves one step on every process and stops; process 0 then hands the
    signal to submitit's own handler, which calls `checkpoint()` (the inherited one: this job,
    unchanged) and requeues the job; the requeued job resumes from the run's last checkpoint.
    On SIGTERM (SLURM's preemption, which requeues by itself) it only saves and stops.
    """

    def __init__(self, run_dir, run_fn=None):
        self.run_dir = os.path.abspath(run_dir)
        self.run_fn = run_fn

    def __call__(self):
        from difffccf_jax import parallel  # pylint: disable=import-outside-toplevel
        from difffccf_jax.config_cli import load_config  # pylint: disable=import-outside-toplevel
        from difffccf_jax.training import stopping  # pylint: disable=import-outside-toplevel

        os.environ.update(parallel.submitit_local_coordinator(os.environ))
        config = load_config(os.path.join(self.run_dir, "config.json"))
        try:
            run_in_folder(config, self.run_dir, self.run_fn or train_and_score)
        except stopping.Preempted as stopped:
            if stopped.signum == requeue_signal():
                signal.raise_signal(stopped.signum)  # process 0: submitit requeues and exits
            raise


def requeue_signal():
    """The signal on which submitit checkpoints and requeues a job (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one run gets: `nodes` x `tasks_per_node` processes; with GPUs, `gpus_per_node`
    GPUs per node shared by its tasks; without, `cpu_devices` devices per process (what JAX
    sees here, e.g. XLA's simulated CPU devices)."""
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpu_devices: int = 1

    @property
    def devices(self):
        if self.gpus_per_node:
            return self.nodes * self.gpus_per_node
        return self.nodes * self.tasks_per_node * self.cpu_devices

    def describe(self):
        if self.gpus_per_node:
            return f"{self.nodes} node(s) x {self.gpus_per_node} GPUs"
        return (f"{self.nodes * self.tasks_per_node} process(es) x {self.cpu_devices} "
                "CPU device(s)")


def host_device_count(xla_flags):
    """The CPU devices a process started with XLA_FLAGS=`xla_flags` has (XLA's
    --xla_force_host_platform_device_count, else 1)."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
    return int(counts[-1]) if counts else 1


def validate(runs, resources):
    """Raises UserError (one line, naming the run and the field) for the first run that
    cannot start on `resources`, before anything is written or queued."""
    if resources.gpus_per_node % resources.tasks_per_node:
        raise UserError(f"--gpus-per-node={resources.gpus_per_node} does not split over "
                        f"--tasks-per-node={resources.tasks_per_node}")
    for run in runs:
        batch_size = run.config.data.batch_size
        if batch_size % resources.devices:
            raise UserError(
                f"run {run.name}: config.data.batch_size={batch_size} does not split over the "
                f"{resources.devices} devices of {resources.describe()}; use a multiple of "
                f"{resources.devices} or fewer devices")
        for field in ("root", "eval_root"):
            folder = run.config.data[field]
            if (field == "root" or folder) and not os.path.isdir(folder or ""):
                raise UserError(f"run {run.name}: config.data.{field}={folder!r} is not a folder")


def _flat(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def check_unchanged(runs, workdir):
    """Raises UserError when a run's folder in `workdir` already holds another config than the
    sweep now gives it: its checkpoints belong to the old one, so it must not resume."""
    for run in runs:
        path = os.path.join(workdir, run.name, "config.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as file:
            saved = _flat(json.load(file))
        wanted = _flat(json.loads(run.config.to_json()))
        changed = sorted(key for key in saved.keys() | wanted.keys()
                         if saved.get(key) != wanted.get(key))
        if changed:
            raise UserError(f"run {run.name}: {path} was written with other values of "
                            f"{', '.join(changed)}; use another --workdir, or delete the run's "
                            "folder to start it again")


def parse_minutes(text):
    """SLURM's time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes,
    rounded up."""
    days, _, rest = str(text).rpartition("-")
    try:
        parts = [int(part) for part in rest.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        parts = None
    if not parts or len(parts) > 3:
        raise UserError(f"--time={text!r} is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        hours, minutes, seconds = {1: [0, parts[0], 0], 2: [0, *parts],
                                   3: parts}[len(parts)]
    return day_count * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def executor_parameters(launcher, resources, minutes, setup=(), parallel=None,
                        slurm_fields=None):
    """AutoExecutor.update_parameters arguments for `launcher` ('slurm' or 'local').

    slurm_fields: sbatch fields by submitit's names (partition, account, qos, mem, constraint,
    ...); on SLURM the job array runs at most `parallel` runs at a time (None: submitit's
    limit, 256)."""
    parameters = dict(name="difffccf-sweep", nodes=resources.nodes,
                      tasks_per_node=resources.tasks_per_node, timeout_min=minutes)
    if resources.gpus_per_node:
        parameters["gpus_per_node"] = resources.gpus_per_node
    if launcher == "local":
        if resources.nodes != 1:
            raise UserError(f"--launcher local runs on this machine: --nodes must be 1, "
                            f"got {resources.nodes}")
        if slurm_fields:
            raise UserError(f"{', '.join(sorted(slurm_fields))}: SLURM fields, they need "
                            "--launcher slurm")
        return dict(parameters, local_setup=list(setup))
    if parallel:
        parameters["slurm_array_parallelism"] = parallel
    return dict(parameters, slurm_setup=list(setup),
                **{f"slurm_{key}": value for key, value in (slurm_fields or {}).items()})


def make_executor(launcher, folder, parameters):
    """A submitit.AutoExecutor for `launcher` writing its files under `folder`."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    except RuntimeError as error:  # no srun on PATH
        raise UserError(f"--launcher {launcher}: {error}") from error
    try:
        executor.update_parameters(**parameters)
    except (NameError, ValueError) as error:
        raise UserError(f"submitit refused the {launcher} parameters: "
                        + " ".join(str(error).split())) from error
    return executor


def launch(executor, run_dirs, parallel=1, run_fn=None, poll_seconds=1.0):
    """Submits one RunJob per run folder; returns the jobs. SLURM gets one job array (the
    executor throttles it); the local executor starts every job at once, so here at most
    `parallel` run at a time and this returns when all have ended."""
    jobs = [RunJob(run_dir, run_fn) for run_dir in run_dirs]
    if executor.cluster != "local":
        return executor.submit_array(jobs) if jobs else []
    started = []
    for job in jobs:
        while sum(not s.done() for s in started) >= parallel:
            time.sleep(poll_seconds)
        started.append(executor.submit(job))
    while not all(s.done() for s in started):
        time.sleep(poll_seconds)
    return started


def run_status(run_dir):
    """('done' | 'failed' | 'unfinished', detail): failed with the last line of the first
    failure's traceback; unfinished with the last step logged, if any."""
    if is_done(run_dir):
        return "done", ""
    failures = failure_files(run_dir) if os.path.isdir(run_dir) else []
    if failures:
        with open(os.path.join(run_dir, failures[0]), encoding="utf-8") as file:
            lines = [line for line in file.read().splitlines() if line.strip()]
        return "failed", lines[-1].strip() if lines else ""
    from difffccf_jax.training import train  # pylint: disable=import-outside-toplevel

    metrics = os.path.join(run_dir, train.METRICS_FILE)
    if os.path.isfile(metrics):
        with open(metrics, encoding="utf-8") as file:
            steps = [json.loads(line).get("step") for line in file if line.strip()]
        steps = [step for step in steps if step is not None]
        if steps:
            return "unfinished", f"last logged step {steps[-1]}"
    return "unfinished", "not started"


def read_index(workdir):
    """The sweep's runs as [{'name', 'overrides'}] from its sweep.json."""
    index_path = os.path.join(workdir, "sweep.json")
    if not os.path.isfile(index_path):
        raise UserError(f"{workdir!r} is not a sweep workdir (no sweep.json)")
    with open(index_path, encoding="utf-8") as file:
        return json.load(file)


def status_lines(workdir):
    """One line per run that is not done (failed ones first) and a count of each state."""
    states = {"done": [], "failed": [], "unfinished": []}
    for entry in read_index(workdir):
        state, detail = run_status(os.path.join(workdir, entry["name"]))
        states[state].append(f"{state} {entry['name']}" + (f": {detail}" if detail else ""))
    counts = ", ".join(f"{len(names)} {state}" for state, names in states.items())
    return states["failed"] + states["unfinished"] + [counts]


def collect(workdir):
    """Rows of {run, overrides..., metrics...} for every run of the sweep that has finished."""
    rows = []
    for entry in read_index(workdir):
        result = os.path.join(workdir, entry["name"], RESULT_FILE)
        if not os.path.isfile(result):
            continue
        with open(result, encoding="utf-8") as file:
            rows.append({"run": entry["name"], **entry["overrides"], **json.load(file)})
    return rows


def sort_rows(rows, metric, descending=False):
    """Rows ordered by `metric`; rows without it go last."""
    if rows and not any(metric in row for row in rows):
        raise UserError(f"no run has the metric {metric!r}; available: "
                        + ", ".join(sorted({key for row in rows for key in row} - {"run"})))
    present = [row for row in rows if row.get(metric) is not None]
    missing = [row for row in rows if row.get(metric) is None]
    return sorted(present, key=lambda row: row[metric], reverse=descending) + missing


def _columns(rows):
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report_markdown(rows):
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(rows, workdir):
    """Writes report.md and report.csv into the sweep's workdir; returns the Markdown."""
    markdown = report_markdown(rows)
    files.write_text(os.path.join(workdir, "report.md"), markdown)
    files.write_text(os.path.join(workdir, "report.csv"), report_csv(rows))
    return markdown


def train_and_score(config, run_dir):
    """One sweep run: trains (resuming when interrupted), then fuses the configured task's
    held-out pairs (data.eval_root, else the training pairs) with the run's sampling settings
    and scores them, once (evaluation.trained_run). Returns the final training loss and the
    mean fusion metrics, e.g. {'loss': ..., 'MI': ...}, on process 0; None on the others."""
    from difffccf_jax.evaluation import trained_run  # pylint: disable=import-outside-toplevel
    from difffccf_jax.training import train  # pylint: disable=import-outside-toplevel

    train.fit(config, run_dir)
    return trained_run.score(config, run_dir)
