"""Hyper-parameter sweeps: a base config plus a grid of field overrides, expanded into named runs.

A sweep file is a Python file like a config file: `get_config(arg=None)` returns the base config
and `get_sweep(arg=None)` returns the grid (`FILE:ARG` passes ARG to both), a list of {dotted field: value} dicts built with `product` and
`zipped` (lists of dicts concatenate). Each run gets its own folder under the sweep's workdir
with its resolved `config.json`, so any run can be repeated alone with `difffccf train`.
"""

import csv
import dataclasses
import io
import itertools
import json
import os
import re
import shlex

from difffccf_jax import files
from difffccf_jax.config_cli import (apply_override, load_config_file, load_python_file,
                                     save_json_config)
from difffccf_jax.errors import UserError

DONE_FILE = "DONE"
RESULT_FILE = "final_metrics.json"


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


def run_local(runs, workdir, run_fn, log=print):
    """Runs the sweep here, one run after another; finished runs are skipped, interrupted ones
    resume from their last checkpoint (run_fn resumes on its own). `run_fn(config, run_dir)`
    returns a dict of final metrics."""
    for run in runs:
        run_dir = os.path.join(workdir, run.name)
        if is_done(run_dir):
            log(f"[sweep] {run.name}: finished before, skipped")
            continue
        log(f"[sweep] {run.name}: running")
        metrics = run_fn(run.config, run_dir)
        files.write_text(os.path.join(run_dir, RESULT_FILE), json.dumps(metrics, indent=2))
        files.write_text(os.path.join(run_dir, DONE_FILE), "")


def slurm_script(runs, workdir, nodes=1, gpus_per_node=1, cpus_per_task=8, time="24:00:00",
                 partition=None, executable="difffccf"):
    """An sbatch array script: one array task per run, each task a (multi-node) training run
    whose processes meet through jax.distributed.initialize() (SLURM is detected)."""
    workdir = os.path.abspath(workdir)
    header = [
        "#!/usr/bin/env bash",
        "#SBATCH --job-name=difffccf-sweep",
        f"#SBATCH --array=0-{len(runs) - 1}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={workdir}/slurm-%A_%a.out",
    ]
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    names = " ".join(shlex.quote(run.name) for run in runs)
    distributed = "--config.train.distributed=True" if nodes > 1 else ""
    body = [
        "set -euo pipefail",
        f"RUNS=({names})",
        'RUN="${RUNS[$SLURM_ARRAY_TASK_ID]}"',
        f"RUN_DIR={shlex.quote(workdir)}/\"$RUN\"",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}",
        f"export JAX_COMPILATION_CACHE_DIR={shlex.quote(workdir)}/.jax_cache",
        'if [ -e "$RUN_DIR/DONE" ]; then echo "$RUN finished before"; exit 0; fi',
        f'srun {executable} sweep-run --run-dir "$RUN_DIR" {distributed}'.rstrip(),
    ]
    return "\n".join(header + [""] + body) + "\n"


def collect(workdir):
    """Rows of {run, overrides..., metrics...} for every run of the sweep that has finished."""
    index_path = os.path.join(workdir, "sweep.json")
    if not os.path.isfile(index_path):
        raise UserError(f"{workdir!r} is not a sweep workdir (no sweep.json)")
    with open(index_path, encoding="utf-8") as file:
        index = json.load(file)
    rows = []
    for entry in index:
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
    """One sweep run: trains (resuming when interrupted), fuses the configured task's held-out
    pairs (data.eval_root, else the training pairs) with the run's sampling settings, and
    returns the final training loss and the mean fusion metrics, e.g. {'loss': ..., 'MI': ...}."""
    from difffccf_jax.data import layouts
    from difffccf_jax.evaluation import scoring
    from difffccf_jax.inference import fusion
    from difffccf_jax.training import train

    train.fit(config, run_dir)
    fused = os.path.join(run_dir, "fused")
    scored_root = config.data.eval_root or config.data.root
    task = layouts.tasks_from_config(config.data)[0]
    fusion.fuse_folder(os.path.join(run_dir, train.CHECKPOINT_DIR), fused, data=scored_root,
                       task=task, overwrite=True)
    layout = layouts.layout_from_config(config.data, task)
    scores, _ = scoring.score_pairs(layouts.list_pairs(scored_root, layout), layout,
                                    {"run": fused}, with_baselines=False)
    summary = scoring.summarise(scores["run"])
    final = train.read_metrics_log(run_dir)[-1]
    return {"loss": final["loss"], **{name: s.mean for name, s in summary.items()}}
