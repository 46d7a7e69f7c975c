"""Measuring tools of `difffccf benchmark`: timing with compilation apart, FLOP counts, memory,
the machine's matrix-multiply rate, accelerator peak rates, and the Markdown report.

Timing protocol: a JAX program is compiled ahead of time (`jitted.lower(...).compile()`, timed
as the compile time), then called once (the first call) and `repeats` more times; the steady
time is the median of the repeats, each waited for (`jax.block_until_ready`). Eager PyTorch has
no compile step: its first call is timed the same way. The process CPU time of every repeat is
recorded too: on a shared machine it says what the work costs even when wall time is inflated
by other processes.
"""

import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import time
from typing import NamedTuple, Optional

from difffccf_jax.files import write_files

VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch")
MIB = 1024.0 * 1024.0


class Timing(NamedTuple):
    """Seconds of one measured program."""
    compile_s: float  # tracing + lowering + XLA compilation (0 where nothing is compiled)
    first_s: float  # the first call after compilation
    steady_s: float  # median wall time of the repeated calls
    cpu_s: float  # median process CPU time (all threads) of the repeated calls
    repeats: int
    best_s: Optional[float] = None  # the fastest repeated call


def time_calls(call, repeats, compile_s=0.0, budget_s=None):
    """Times `call()` (which must return only once its work is done): one first call, then
    `repeats` calls whose median wall and CPU times are the steady state. With `budget_s`,
    fewer repeats (at least 2) are made when `repeats` calls as slow as the first would take
    longer than that."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if budget_s is not None:
        repeats = repeats_within(first, budget_s, repeats, min(2, repeats))
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return Timing(compile_s, first, statistics.median(walls), statistics.median(cpus), repeats,
                  min(walls))


def time_alternating(calls, repeats, compile_s=None, budget_s=None):
    """{name: Timing} of several calls ({name: call}, each returning once its work is done)
    timed in alternation: each called once (its first call), then `repeats` rounds that call
    each in turn, so that a change of the machine's load while they run (a shared machine) falls
    on all of them alike and their ratios stay fair. With `budget_s`, fewer rounds (at least 2)
    when a round as slow as the first calls would not fit. compile_s: {name: seconds}."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    compile_s = compile_s or {}
    firsts = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        firsts[name] = time.perf_counter() - start
    if budget_s is not None:
        repeats = repeats_within(sum(firsts.values()), budget_s, repeats, min(2, repeats))
    walls = {name: [] for name in calls}
    cpus = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - start_cpu)
    return {name: Timing(compile_s.get(name, 0.0), firsts[name], statistics.median(walls[name]),
                         statistics.median(cpus[name]), repeats, min(walls[name]))
            for name in calls}


MIN_STEADY_S = 1.0  # fast calls are repeated for at least this long (up to MAX_FAST_REPEATS)
MAX_FAST_REPEATS = 1000


def repeats_within(first_s, budget_s, max_repeats, min_repeats=2):
    """How many steady calls to make when one takes about `first_s`: `max_repeats`, or more
    for calls so fast that these would take under MIN_STEADY_S (a median of many is steadier),
    but no more than fit in `budget_s` seconds, and at least `min_repeats`."""
    first_s = max(first_s, 1e-9)
    wanted = max(max_repeats, min(MAX_FAST_REPEATS, int(MIN_STEADY_S / first_s)))
    return max(min_repeats, min(wanted, int(budget_s / first_s)))


def compile_jax(jitted, *args, fast=False):
    """(compiled program, seconds to trace, lower and compile it) of a jax.jit function; fast:
    at XLA backend optimisation level 0 (much shorter compiles on CPU, slower calls)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0} if fast else None)
    return compiled, time.perf_counter() - start


def time_jax(jitted, args, repeats, budget_s=None, fast=False):
    """(Timing, compiled) of `jitted(*args)`, compiled ahead of time (fast: as in `compile_jax`)
    and then called (see `time_calls`). Not for programs that donate their arguments."""
    import jax

    compiled, compile_s = compile_jax(jitted, *args, fast=fast)
    timing = time_calls(lambda: jax.block_until_ready(compiled(*args)), repeats, compile_s,
                        budget_s)
    return timing, compiled


def xla_flops(compiled):
    """Floating-point operations of one call of a compiled JAX program, from XLA's cost
    analysis (a multiply-add counts 2). Loops count their body once."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0]
    return float(cost["flops"])


def xla_buffer_bytes(compiled):
    """Bytes of the buffers a compiled JAX program holds while it runs: arguments, outputs and
    temporaries (aliased buffers counted once)."""
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def peak_rss_mib():
    """This process's peak resident memory so far, MiB: VmHWM of /proc/self/status (KiB), as
    getrusage's ru_maxrss also holds the peak of the process that started this one (kept
    through exec); ru_maxrss (KiB on Linux) where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="utf-8") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib():
    """Total memory of the machine in GiB, or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1024.0 * 1024.0)
    except OSError:
        pass
    return None


def package_versions(names=VERSIONED_PACKAGES):
    """{package: installed version or 'not installed'}."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_summary():
    """The CPU model, core count and memory of this machine, one line."""
    memory = memory_gib()
    return (f"{cpu_model()}, {os.cpu_count()} cores"
            + (f", {memory:.1f} GiB memory" if memory else ""))


def machine_summary(accelerator):
    """This machine in one line (a run's `machine`); `accelerator` as in machine_description."""
    return cpu_summary() + (f", GPU {accelerator}" if accelerator else ", no GPU")


def machine_description(accelerator):
    """One Markdown bullet list describing the machine; `accelerator` is the JAX device kind
    (or None on a CPU-only machine)."""
    lines = [f"- CPU: {cpu_summary()}",
             f"- GPU: {accelerator}" if accelerator else
             "- GPU: none on this machine (CPU run only; no GPU run is recorded yet)",
             f"- Python {platform.python_version()}, "
             + ", ".join(f"{k} {v}" for k, v in package_versions().items())]
    return "\n".join(lines)


# Dense peak rates (TFLOP/s, vendor data sheets) of accelerators, keyed by a part of their JAX
# device kind (the longest matching key wins): bfloat16 on the tensor cores, and float32 as XLA
# runs float32 convolutions and matrix products at JAX's default precision on these GPUs, on
# the TF32 tensor cores (their plain FP32 rates are about 1/7 of that: 67 TFLOP/s on H100/H200).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},  # SXM
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def peak_flops(device, dtype):
    """The peak FLOP/s of accelerator `device` (a JAX device kind) computing in `dtype`, or
    None for the CPU or an accelerator or dtype not in PEAK_TFLOPS."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if device and key in device:
            tflops = PEAK_TFLOPS[key].get(dtype)
            return tflops * 1e12 if tflops else None
    return None


class Row(NamedTuple):
    """One measured case of the report."""
    case: str  # what was measured, e.g. 'U-Net forward'
    config: str  # configuration label, e.g. 'paper (compat)'
    batch: int
    framework: str  # 'JAX' or 'PyTorch port'
    timing: Optional[Timing]  # None when the case failed
    flops: Optional[float] = None  # per call
    rss_mib: Optional[float] = None  # peak resident memory growth of the case's process
    buffers_mib: Optional[float] = None  # XLA buffers (JAX only)
    load: Optional[float] = None  # 1-minute load average when the case started
    note: str = ""
    run: int = 1  # which run of the report measured it (see Run)
    device: str = ""  # the accelerator it ran on (`accelerator` of cases.py), "" for the CPU
    dtype: str = ""  # the model's compute dtype, where a model ran
    device_mib: Optional[float] = None  # peak accelerator memory of the case's process


class Run(NamedTuple):
    """One invocation of the benchmark that contributed rows to a report."""
    command: str
    started: str  # UTC, 'YYYY-MM-DD HH:MM'
    load_start: float  # 1-minute load average at its start and end
    load_end: float
    machine: str = ""  # one line naming the machine (`machine_summary`)


def row_to_dict(row):
    """A JSON-ready dict of `row`."""
    return dict(row._asdict(), timing=row.timing._asdict() if row.timing else None)


def row_from_dict(data):
    timing = data.get("timing")
    return Row(**dict(data, timing=Timing(**timing) if timing else None))


def row_key(row):
    """What a row measures: rows with the same key replace each other when runs merge."""
    return row.case, row.config, row.batch, row.framework, row.device


def merge_rows(old, new):
    """`old` rows with those measured again in `new` replaced (in place), then new ones."""
    replaced = {row_key(row): row for row in new}
    merged = [replaced.pop(row_key(row), row) for row in old]
    return merged + [row for row in new if row_key(row) in replaced]


def _number(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _seconds(value):
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


MEASUREMENT_COLUMNS = ("case", "config", "batch", "framework", "compile s", "first call s",
                       "steady s", "CPU s/call", "peak RSS MiB", "XLA buffers MiB", "GFLOP",
                       "GFLOP/s", "% of matmul", "load", "run", "note")


def measurement_row(row, matmul_gflops):
    """The cells of `row` in MEASUREMENT_COLUMNS order."""
    t = row.timing
    rate = row.flops / t.steady_s / 1e9 if (t and row.flops and t.steady_s > 0) else None
    share = 100.0 * rate / matmul_gflops if (rate and matmul_gflops) else None
    return (row.case, row.config, str(row.batch), row.framework,
            _seconds(t.compile_s) if (t and t.compile_s) else "—",
            _seconds(t.first_s) if t and t.first_s else "—",
            _seconds(t.steady_s) if t else "failed",
            _seconds(t.cpu_s) if t and t.cpu_s else "—",
            _number(row.rss_mib, 0), _number(row.buffers_mib, 1),
            _number(row.flops / 1e9 if row.flops else None, 2), _number(rate, 1),
            _number(share, 0), _number(row.load, 1), str(row.run), row.note)


def markdown_table(columns, rows):
    """A Markdown table of string cells."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


class Target(NamedTuple):
    """A measured ratio or rate and, where one is set, the required bound."""
    name: str
    measured: Optional[float]  # None when a side is missing
    required: Optional[float]  # None: reported for information
    at_most: bool = True  # True: measured <= required; False: measured >= required
    how: str = ""


TARGET_COLUMNS = ("comparison", "measured", "target", "met", "how it is computed")


def target_row(target):
    if target.measured is None:
        met = "not measured"
    elif target.required is None:
        met = "—"
    else:
        ok = (target.measured <= target.required if target.at_most
              else target.measured >= target.required)
        met = "yes" if ok else "no"
    bound = ("—" if target.required is None
             else f"{'<=' if target.at_most else '>='} {target.required:g}")
    return (target.name, _number(target.measured, 2), bound, met, target.how)


def runs_list(runs):
    """A numbered Markdown list of the runs: date, machine, load average and the exact
    command."""
    return "\n".join(
        f"{i}. {run.started} UTC" + (f" on {run.machine}" if run.machine else "")
        + f", load average (1 min) {run.load_start:.1f} at the start, "
        f"{run.load_end:.1f} at the end:\n\n       {run.command}\n"
        for i, run in enumerate(runs, start=1))


THROUGHPUT_CASES = ("train step (train.py", "sampler, ")  # the rows of throughput_table
THROUGHPUT_COLUMNS = ("case", "config", "batch", "device", "dtype", "steady s", "pairs/s",
                      "TFLOP/s", "peak TFLOP/s", "% of peak", "peak memory MiB", "run")


def throughput_row(row):
    """The cells of a measured training-step or sampler `row` in THROUGHPUT_COLUMNS order:
    pairs per second (batch / steady time), the achieved rate of XLA's FLOP count, the
    device's peak for the row's dtype (`peak_flops`) and the share of it (the model FLOP
    utilisation), and the peak memory: the accelerator's, else the process's resident set."""
    t = row.timing
    rate = row.flops / t.steady_s if row.flops else None
    peak = peak_flops(row.device, row.dtype)
    share = 100.0 * rate / peak if rate and peak else None
    memory = (f"{row.device_mib:.0f} (device)" if row.device_mib is not None else
              f"{row.rss_mib:.0f} (RSS)" if row.rss_mib is not None else "—")
    return (row.case, row.config, str(row.batch), row.device or "CPU", row.dtype or "—",
            _seconds(t.steady_s), f"{row.batch / t.steady_s:.3g}",
            _number(rate / 1e12 if rate else None, 3),
            _number(peak / 1e12 if peak else None, 1), _number(share, 1), memory, str(row.run))


def throughput_table(rows):
    """A Markdown table of the measured training-step and sampler rows (THROUGHPUT_CASES)."""
    return markdown_table(THROUGHPUT_COLUMNS, [
        throughput_row(r) for r in rows if r.timing and r.case.startswith(THROUGHPUT_CASES)])


def report(title, runs, rows, targets, machine, matmul_gflops, notes):
    """The whole BENCHMARKS.md text; `runs` lists the Run of every row's 'run' number."""
    table = markdown_table(MEASUREMENT_COLUMNS, [measurement_row(r, matmul_gflops)
                                                 for r in rows])
    return "\n\n".join([
        f"# {title}",
        "## Runs\n\n" + runs_list(runs).rstrip(),
        "## Machine\n\n" + machine
        + f"\n- Measured float32 matrix-multiply rate: {_number(matmul_gflops, 1)} GFLOP/s",
        "## Targets\n\n" + markdown_table(TARGET_COLUMNS, [target_row(t) for t in targets]),
        "## Throughput and utilisation\n\n" + throughput_table(rows),
        "## Measurements\n\n" + table,
        "## Notes\n\n" + "\n".join(f"- {note}" for note in notes),
    ]) + "\n"


def utc_now():
    """The current UTC time as 'YYYY-MM-DD HH:MM'."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def data_path(report_path):
    """The JSON file kept next to a report with its runs and rows (BENCHMARKS.json)."""
    return os.path.splitext(report_path)[0] + ".json"


def results_json(runs, rows, accelerator):
    return json.dumps({"runs": [run._asdict() for run in runs],
                       "rows": [row_to_dict(row) for row in rows],
                       "accelerator": accelerator}, indent=1) + "\n"


def read_results(path):
    """(runs, rows, accelerator) of a JSON file written with a report."""
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    return ([Run(**run) for run in data["runs"]], [row_from_dict(row) for row in data["rows"]],
            data["accelerator"])


def write_report(path, text, data_text):
    """Writes the report and its JSON data together, all-or-nothing, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_files([(path, text), (data_path(path), data_text)])
