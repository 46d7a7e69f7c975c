"""The benchmark suite of `difffccf benchmark`: which cases run for the chosen configurations,
batch sizes and parts, the targets computed from their rows, and the whole run.
"""

import os
import sys
from typing import NamedTuple

from difffccf_jax.benchmark import measure
from difffccf_jax.benchmark.cases import STEP_SPLIT, Case, run_in_subprocess
from difffccf_jax.errors import UserError
from difffccf_jax.config_cli import shipped_config

PUBLISHED_BOTTLENECK = (32, 512)  # side and width the compatibility mode requires
FULL_SAMPLING_STEPS = 2000  # the paper's diffusion steps, the full sampler
FORWARD_TARGET = 0.7  # JAX time / PyTorch port time, paper configuration, batch 1
TRAIN_TARGET = 0.7
GRAPH_SPEED_TARGET = 10.0  # dense time / stencil time
SAMPLING_TARGET = 15.0  # respaced throughput / full throughput
GENERATOR_TARGET = 20.0  # pairs per CPU second, the slowest task
METRICS_TARGET_S = 60.0  # seconds to score 100 pairs with every metric, one method
STEP_SPLIT_TARGET = 1.15  # real step / the network's own forward and backward
STEP_SPLIT_TARGETED = (("paper", 1), ("tiny", 4))  # (config, batch) with that target
TARGET_CONFIG, TARGET_BATCH = "paper", 1
METRICS_TASK = "pet"  # a colour-B task, like the fused images scored
ALIGNMENTS = ("aligned", "misaligned")
# fuse_throughput: generated pairs of FUSE_SIZE px fused in folders of FUSE_PAIRS pairs and by
# the sampler alone on arrays in memory (FUSE_MEMORY_PAIRS), FUSE_STEPS steps, batches of
# FUSE_BATCH, on each count of FUSE_DEVICES simulated devices
FUSE_PAIRS, FUSE_MEMORY_PAIRS, FUSE_DEVICES = (100, 1000, 10000), 1000, (1, 4)
FUSE_SIZE, FUSE_STEPS, FUSE_BATCH = 64, 1, 8
# extra information, no target: the sampler alone and the FUSE_MEMORY_PAIRS folder at more
# steps on 1 device, where the sampler's share of the CPU grows
FUSE_EXTRA_STEPS = 4
FUSE_MEMORY_TARGET = 1.10  # peak RSS on the largest folder / on the one 10 x smaller
FUSE_THROUGHPUT_TARGET = 0.9  # folder pairs/s / in-memory sampler pairs/s
# data_memory: DATA_PAIRS generated pairs of DATA_SIZE px read in global batches of DATA_BATCH,
# DATA_DEVICES CPU devices per process
DATA_PAIRS, DATA_SIZE, DATA_BATCH, DATA_DEVICES = 2000, 64, 8, 1
DATA_MEMORY_TARGET = 0.6  # peak per process, 2 processes from the cache / 1 process in memory


class Options(NamedTuple):
    """What to run (see the command's --help)."""
    configs: tuple  # config file paths
    batch_sizes: tuple
    parts: tuple
    graph_sizes: tuple
    matmul_size: int
    max_repeats: int
    budget_s: float
    sampling_steps: int  # steps of the respaced sampler
    whole_sampling_max_size: int  # larger images get the per-step sampling estimate
    case_timeout_s: float
    dtypes: tuple = ("float32", "bfloat16")  # compute dtypes of the throughput part
    fast_compile: bool = False  # the throughput part's programs at XLA optimisation level 0


def config_path(name):
    """'paper' and 'tiny' name the shipped configs; anything else is a config file path."""
    path = shipped_config(name) if os.sep not in name and not \
        name.endswith((".py", ".json")) else name
    if not os.path.isfile(path):
        raise UserError(f"--configs: no config file {path!r} (give 'paper', 'tiny' or a path)")
    return path


def config_label(path):
    return os.path.splitext(os.path.basename(path))[0]


def load(path):
    from difffccf_jax.config_cli import load_config

    return load_config(path)


def has_published_bottleneck(config):
    """True when the model's bottleneck is the published 32 x 32 x 512, the only shape the
    compatibility mode (the port's behaviour) accepts."""
    m = config.model
    side = config.data.image_size // 2 ** (len(m.channel_mult) - 1)
    return (side, m.model_channels * m.channel_mult[-1]) == PUBLISHED_BOTTLENECK


def comparison_cases(options, path, config, kind):
    """JAX and PyTorch-port cases of `kind` ('forward' or 'train') for each batch size: the
    JAX model in compatibility mode where the bottleneck allows it, else in default mode."""
    compat = has_published_bottleneck(config)
    label = config_label(path) + (" (compat)" if compat else "")
    common = dict(config=path, label=label, compat=compat, max_repeats=options.max_repeats,
                  budget_s=options.budget_s)
    return [Case(kind, framework, batch=batch, **common)
            for batch in options.batch_sizes for framework in ("jax", "torch")]


def sampling_cases(options, path, config):
    """The respaced and the full sampler: whole runs for small images (every batch size),
    else one per-step estimate at the smallest batch size."""
    respaced, full = options.sampling_steps, FULL_SAMPLING_STEPS
    label = config_label(path)
    if config.diffusion.steps != full:
        label += f", T={full}"
    common = dict(config=path, label=label, diffusion_steps=full,
                  max_repeats=options.max_repeats, budget_s=options.budget_s)
    if config.data.image_size > options.whole_sampling_max_size:
        return [Case("sampling", batch=min(options.batch_sizes), steps=respaced, estimate=True,
                     **common)]
    return [Case("sampling", batch=batch, steps=steps, **common)
            for batch in options.batch_sizes for steps in (respaced, full)]


def throughput_cases(options, path):
    """The accelerator check: the real training step in every compute dtype of
    options.dtypes, and the respaced sampler run whole (the config's dtype), at each batch
    size."""
    label = config_label(path)
    common = dict(config=path, max_repeats=options.max_repeats, budget_s=options.budget_s,
                  fast_compile=options.fast_compile)
    return ([Case("train_full", label=f"{label}, {dtype}", batch=batch, dtype=dtype, **common)
             for batch in options.batch_sizes for dtype in options.dtypes]
            + [Case("sampling", label=label, batch=batch, steps=options.sampling_steps,
                    diffusion_steps=FULL_SAMPLING_STEPS, **common)
               for batch in options.batch_sizes])


def numpy_cases(options, path, config, part):
    """The generator cases (every task, B aligned and misaligned) or the metrics case, at the
    config's image size."""
    from difffccf_jax.data.generator import TASKS

    size = config.data.image_size
    common = dict(framework="numpy", config=path, label=f"{config_label(path)} {size}x{size}",
                  max_repeats=options.max_repeats, budget_s=options.budget_s)
    if part == "metrics":
        return [Case("metrics", task=METRICS_TASK, **common)]
    return [Case("generator", task=task, variant=alignment, **common)
            for task in TASKS for alignment in ALIGNMENTS]


def fuse_cases(options, path):
    """Per device count the sampler alone on arrays in memory and the smaller folders, then
    the largest folder per device count (one process each, so each peak memory is its own);
    last, both at FUSE_EXTRA_STEPS steps on 1 device."""
    common = dict(config=path, label=config_label(path), size=FUSE_SIZE, steps=FUSE_STEPS,
                  batch=FUSE_BATCH, max_repeats=options.max_repeats, budget_s=options.budget_s)
    largest = max(FUSE_PAIRS)
    smaller = [("memory", FUSE_MEMORY_PAIRS)] + [("folder", pairs) for pairs in FUSE_PAIRS
                                                 if pairs != largest]
    extra = dict(common, steps=FUSE_EXTRA_STEPS)
    return [Case("fuse_throughput", variant=variant, pairs=pairs, devices=devices, **common)
            for variants in (smaller, [("folder", largest)]) for devices in FUSE_DEVICES
            for variant, pairs in variants] + [
        Case("fuse_throughput", variant=variant, pairs=FUSE_MEMORY_PAIRS, devices=1, **extra)
        for variant in ("memory", "folder")]


def plan(options):
    """The ordered list of cases. JAX and PyTorch cases of one comparison run back to back,
    so both meet about the same machine load."""
    cases = []
    repeats = dict(max_repeats=options.max_repeats, budget_s=options.budget_s)
    if "matmul" in options.parts:
        cases += [Case("matmul", framework, label=f"{options.matmul_size}^2",
                       size=options.matmul_size, **repeats) for framework in ("jax", "torch")]
    for path in options.configs:
        config = load(path)
        for kind in ("forward", "train"):
            if kind in options.parts:
                cases += comparison_cases(options, path, config, kind)
        for kind in ("train_full", "step_split"):
            if kind in options.parts:
                cases += [Case(kind, config=path, label=config_label(path), batch=batch,
                               **repeats) for batch in options.batch_sizes]
        if "throughput" in options.parts:
            cases += throughput_cases(options, path)
        if "sampling" in options.parts:
            cases += sampling_cases(options, path, config)
        for part in ("generator", "metrics"):
            if part in options.parts:
                cases += numpy_cases(options, path, config, part)
        if "fuse_throughput" in options.parts:
            cases += fuse_cases(options, path)
        if "data_memory" in options.parts:
            cases.append(Case("data_memory", config=path, label=config_label(path),
                              pairs=DATA_PAIRS, size=DATA_SIZE, batch=DATA_BATCH,
                              devices=DATA_DEVICES, max_repeats=options.max_repeats,
                              budget_s=options.budget_s))
    if "graph" in options.parts:
        paper = config_path("paper")
        cases += [Case("graph", config=paper, label="paper", size=size, variant=variant,
                       part=part, **repeats)
                  for size in options.graph_sizes for part in ("operators", "layer")
                  for variant in ("stencil", "dense")]
    return cases


# ---- targets -------------------------------------------------------------------------------------

def find(rows, case, config, batch, framework="JAX", device=""):
    """The measured row of (case, config, batch, framework) on `device` ("" the CPU), or
    None."""
    for row in rows:
        if (measure.row_key(row) == (case, config, batch, framework, device)
                and row.timing is not None):
            return row
    return None


def _ratio(numerator, denominator):
    return None if numerator is None or denominator is None or not denominator else \
        numerator / denominator


def _steady(row):
    return row.timing.steady_s if row else None


def _is_target_config(config):
    """True for the rows of the configuration the targets are set for ('paper ...')."""
    return config.split(" ")[0] == TARGET_CONFIG


def framework_targets(rows, case, bound):
    """JAX time / PyTorch-port time of `case` for every (config, batch) measured on both."""
    targets = []
    for row in rows:
        if row.case != case or row.framework != "JAX":
            continue
        port = find(rows, case, row.config, row.batch, "PyTorch port", row.device)
        required = bound if _is_target_config(row.config) and row.batch == TARGET_BATCH \
            else None
        targets.append(measure.Target(
            f"{case}: JAX / PyTorch port, {row.config}, batch {row.batch}",
            _ratio(_steady(row), _steady(port)), required, True, "steady time ratio"))
    return targets


def graph_targets(rows):
    """Dense / stencil time and stencil / dense memory of the graph cases, per grid size."""
    targets = []
    for row in rows:
        if not row.case.endswith(", stencil"):
            continue
        dense = find(rows, row.case[:-len("stencil")] + "dense", row.config, row.batch,
                     device=row.device)
        operators = row.case.startswith("graph operators")
        name = "graph operators" if operators else "Graformer layer"
        targets.append(measure.Target(
            f"{name}: dense / stencil time, {row.config}", _ratio(_steady(dense), _steady(row)),
            GRAPH_SPEED_TARGET if operators else None, False, "steady time ratio"))
        targets.append(measure.Target(
            f"{name}: stencil / dense memory, {row.config}",
            _ratio(row.buffers_mib, dense.buffers_mib if dense else None),
            1.0 if operators else None, True,
            "XLA buffers ratio (the target: a fraction of the dense form's memory)"))
    return targets


def sampling_targets(rows):
    """Throughput of the respaced sampler / throughput of the full one, per config, batch and
    device where both were run (the throughput part runs the respaced one alone)."""
    targets = []
    for row in rows:
        if not row.case.endswith("(respaced)") or row.timing is None:
            continue
        planned = [r for r in rows if r.case.endswith("(full)")
                   and (r.config, r.batch, r.device) == (row.config, row.batch, row.device)]
        if not planned:
            continue
        whole = next((r for r in planned if r.timing), None)
        steps = (row.case, whole.case if whole else "the full sampler")
        estimated = "estimated" in row.note
        targets.append(measure.Target(
            f"sampling throughput: {' / '.join(s.split(', ')[1] for s in steps)}, "
            f"{row.config}, batch {row.batch}",
            _ratio(_steady(whole), _steady(row)), SAMPLING_TARGET, False,
            "full time / respaced time" + (" (both estimated from the per-step time)"
                                           if estimated else " (both run whole)")))
    return targets


def generator_targets(rows):
    """Pairs per CPU second of the slowest generator row (task and alignment), per image size."""
    cpu_per_pair = {}
    for row in rows:
        if row.case.startswith("generator,") and row.timing and row.timing.cpu_s > 0:
            cpu_per_pair[row.config] = max(cpu_per_pair.get(row.config, 0.0), row.timing.cpu_s)
    return [measure.Target(
        f"generator: pairs per CPU second, slowest task, {config}", 1.0 / cpu,
        GENERATOR_TARGET if _is_target_config(config) else None, False,
        "1 / CPU s per pair of the slowest task (what one free core writes)")
        for config, cpu in cpu_per_pair.items()]


def metrics_targets(rows):
    """Seconds to score 100 pairs with every metric, per image size."""
    return [measure.Target(
        f"fusion metrics: s per 100 pairs, {row.config}", 100.0 * row.timing.steady_s,
        METRICS_TARGET_S if _is_target_config(row.config) else None, True,
        "100 x steady s per pair (one method)")
        for row in rows if row.case.startswith("fusion metrics") and row.timing]


def step_split_targets(rows):
    """Real step / the network's own forward and backward (both measured in one process), per
    config, batch and device: by steady wall time (the target) and, for information, by CPU
    time, which other processes' load disturbs less."""
    targets = []
    for row in rows:
        if row.case != STEP_SPLIT[0] or row.timing is None:
            continue
        network = find(rows, STEP_SPLIT[1], row.config, row.batch, device=row.device)
        required = (STEP_SPLIT_TARGET if (row.config, row.batch) in STEP_SPLIT_TARGETED
                    else None)
        name = f"real step / network forward + backward, {row.config}, batch {row.batch}"
        targets += [
            measure.Target(name, _ratio(_steady(row), _steady(network)), required, True,
                           "steady time ratio, one process"),
            measure.Target(name + ", CPU time",
                           _ratio(row.timing.cpu_s, network.timing.cpu_s if network else None),
                           None, True, "CPU time ratio, one process")]
    return targets


def fuse_targets(rows):
    """Per device count: the folder's pairs/s over the in-memory sampler's (every folder size),
    and its peak memory on the largest folder over that on the one 10 x smaller."""
    targets = []
    for memory in rows:
        if not memory.case.startswith("fuse throughput, sampler") or memory.timing is None:
            continue
        folder_case = memory.case.replace("sampler on arrays in memory", "folder (fuse)")
        folders = {row.batch: row for row in rows if row.case == folder_case and row.timing
                   and (row.config, row.device) == (memory.config, memory.device)}
        rate = memory.batch / memory.timing.steady_s
        setting = ", ".join([memory.config] + memory.case.split(", ")[2:])
        targeted = f", {FUSE_STEPS} sampling steps," in memory.case
        for pairs, row in sorted(folders.items()):
            targets.append(measure.Target(
                f"fuse: folder / in-memory sampler pairs/s, {pairs} pairs, {setting}",
                pairs / row.timing.steady_s / rate,
                FUSE_THROUGHPUT_TARGET if targeted else None, False,
                "pairs/s of the whole folder run / of the sampler alone, same run"
                + ("" if targeted else "; more steps than the target's setting, no target")))
        largest = max(FUSE_PAIRS)
        if largest in folders and largest // 10 in folders:
            targets.append(measure.Target(
                f"fuse: peak memory, {largest} / {largest // 10} pairs, {setting}",
                _ratio(folders[largest].rss_mib, folders[largest // 10].rss_mib),
                FUSE_MEMORY_TARGET, True, "peak RSS growth of the case's process, ratio"))
    return targets


def data_memory_targets(rows):
    """Per data set and config: the larger peak memory growth of the 2 processes reading their
    rows from the cache over that of 1 process holding the pairs in memory (the target: every
    process held the whole set before) and, for information, over 1 process reading the cache."""
    targets = []
    for memory in rows:
        suffix = ", 1 process, pairs in memory"
        if not memory.case.startswith("data memory, ") or not memory.case.endswith(suffix) \
                or memory.timing is None:
            continue
        prefix = memory.case[:-len(suffix)]
        shares = [find(rows, f"{prefix}, 2 processes, array_record cache, process {index}",
                       memory.config, memory.batch, device=memory.device) for index in (0, 1)]
        if None in shares:
            continue
        peak = max(share.rss_mib for share in shares)
        cache = find(rows, f"{prefix}, 1 process, array_record cache", memory.config,
                     memory.batch, device=memory.device)
        setting = f"{prefix[len('data memory, '):]}, batch {memory.batch}, {memory.config}"
        targets += [
            measure.Target(f"data memory per process, 2 processes / 1 process, {setting}",
                           _ratio(peak, memory.rss_mib), DATA_MEMORY_TARGET, True,
                           "peak RSS growth: the larger of 2 processes reading their rows "
                           "from the cache / 1 process holding the pairs in memory"),
            measure.Target(f"data memory per process, 2 processes / 1 process from the cache, "
                           f"{setting}", _ratio(peak, cache.rss_mib if cache else None), None,
                           True, "peak RSS growth: the larger of the 2 processes / 1 process "
                           "reading the cache")]
    return targets


def all_targets(rows):
    return (framework_targets(rows, "U-Net forward", FORWARD_TARGET)
            + framework_targets(rows, "train step (stand-in L1, AdamW)", TRAIN_TARGET)
            + step_split_targets(rows) + sampling_targets(rows) + graph_targets(rows)
            + generator_targets(rows) + metrics_targets(rows) + fuse_targets(rows)
            + data_memory_targets(rows))


def matmul_rate(rows):
    """The machine's float32 matmul rate, GFLOP/s: the fastest call of the faster framework
    (None when not measured)."""
    rates = [row.flops / (row.timing.best_s or row.timing.steady_s) / 1e9 for row in rows
             if row.case == "float32 matmul" and row.timing and row.flops]
    return max(rates) if rates else None


def with_counterpart_flops(rows):
    """PyTorch rows take the FLOP count of their JAX counterpart (same case, config, batch)."""
    out = []
    for row in rows:
        if row.framework == "PyTorch port" and row.flops is None:
            twin = find(rows, row.case, row.config, row.batch, device=row.device)
            if twin and twin.flops:
                row = row._replace(flops=twin.flops)
        out.append(row)
    return out


NOTES = (
    "Every case ran in a fresh process. JAX programs were compiled ahead of time "
    "(`jit(...).lower(...).compile()`, the 'compile s' column, with the persistent compilation "
    "cache off); 'first call s' is the first call after that (for eager PyTorch, which compiles "
    "nothing, the first call). 'steady s' is the median wall time of the repeated calls that "
    "followed (2 to the max repeats, as many as fit the time budget), each waited for "
    "(`jax.block_until_ready`); calls under 0.2 s are repeated for at least a second. "
    "JAX programs are compiled as the project compiles them (`compilation.jit`: on the CPU "
    "backend without XLA's YNNPACK calls, from run 12 on; convolutions' kernel gradients in "
    "strips below batch 4, `cpu_conv.py`, from run 12 on).",
    "'CPU s/call': process CPU time of all threads per steady call. On a shared machine wall "
    "times grow with other processes' load (column 'load': the 1-minute load average when "
    "the case started); CPU time shows the work itself. PyTorch's OpenMP threads spin while "
    "they wait, which counts as CPU time.",
    "'peak RSS MiB': growth of the process's peak resident memory from just after importing "
    "the framework to the end of the case: parameters, inputs, JAX compilation and the runs. "
    "'XLA buffers MiB': arguments + outputs + temporaries of the compiled JAX program "
    "(`compiled.memory_analysis()`), without the compiler's own memory.",
    "'GFLOP': XLA's cost analysis of the JAX program (a multiply-add counts 2). PyTorch rows "
    "use the count of their JAX counterpart (the same computation; the port's dense graph "
    "products are extra work that is not counted). Samplers have none: XLA counts a loop "
    "body once. '% of matmul': the achieved GFLOP/s (at the steady time) against the "
    "float32 matrix-multiply rate of the machine (the fastest call of the faster of JAX and "
    "PyTorch, 2 threads).",
    "Forward and training comparisons: configurations with the published 32 x 32 x 512 "
    "bottleneck (paper) run the JAX model in compatibility mode, the published behaviour the "
    "port has; others (tiny) run the JAX default mode (scaled Laplacian, own deformation head) "
    "against the port, as compatibility mode needs that bottleneck.",
    "The PyTorch port has no training losses, so the framework comparison of a training step "
    "uses a stand-in objective identical on both sides: mean |noise head - noise| + mean |m1| "
    "+ mean |m2| + mean |deformation| (every head trained), AdamW with config.optim's "
    "learning rate and weight decay, dropout on. 'train step (train.py, all losses)' is the "
    "real JAX step (3 network passes' worth of batch: Y, Cr and Cb; all loss terms; adaptive "
    "weighting), which has no PyTorch counterpart.",
    "Sampling: the jitted sampler of sampling.py (registration forward, then the reverse loop "
    "as one lax.scan) with the paper's 2000-step cosine schedule (the tiny configuration's 50 "
    "diffusion steps are raised to 2000 for this) and the respaced 100-step schedule. Small "
    "images run both samplers whole; larger ones, where 2000 steps take hours on a CPU, are "
    "estimated as fixed time + steps x per-step time from 2- and 4-step runs (marked "
    "'estimated').",
    "Graph bottleneck: the stencil operators of graph.py against dense N x N matrices (built "
    "only in the benchmark and passed to the program as arguments, the dense form's best "
    "case): the operators alone (A z and the Chebyshev basis, the target rows) and the whole "
    "Graformer layer, whose dense graph attention (softmax of N x N scores) is the same in "
    "both forms.",
    "Generator: each call writes one new pair of a task (`data/generator.py`, PNG files, and "
    "with B misaligned the displacement field) at the config's image size. Fusion metrics: "
    "every metric of one triple (`metrics.all_metrics`, the work of `difffccf evaluate` per "
    "pair and method, files not read), pet pairs fused by the maximum rule. Both are NumPy "
    "and SciPy code; their targets are for the paper's 256 x 256 images: at least 20 pairs "
    "per CPU second for the slowest task, and 100 pairs scored in under a minute.",
    "Threads: JAX uses XLA's CPU thread pool over all cores, PyTorch its default intra-op "
    "thread count (one per core). PyTorch's threads wait for each other after every "
    "operation, so when other processes take CPU time the port slows down far more than JAX, "
    "whose thread pool shares work dynamically: JAX / PyTorch ratios of rows measured at a "
    "load near or above the core count mostly measure that, not the frameworks on an idle "
    "machine.",
    "Column 'run': the numbered run (see Runs) that measured the row; a run with --update "
    "re-measures some cases and replaces their rows, the targets use the rows shown. Each run "
    "names its machine; rows of different devices never replace each other.",
    "Throughput and utilisation: the real training step (the train_full part, and the "
    "throughput part, `--preset accelerator`, in each compute dtype) and the samplers. "
    "'pairs/s': batch / steady time (a training pair is one (A, B) image pair, a network batch "
    "of 3 rows: Y, Cr, Cb). 'TFLOP/s': XLA's FLOP count of the compiled step (its cost "
    "analysis) / steady time; '% of peak' (the model FLOP utilisation) divides it by the "
    "device's dense peak for the row's compute dtype (measure.PEAK_TFLOPS: bfloat16 on the "
    "tensor cores; float32 as XLA runs it at JAX's default precision, TF32), for the devices in "
    "that table only. Samplers have no FLOP count (XLA counts a loop body once). 'peak memory': "
    "the accelerator's peak_bytes_in_use on a GPU, else the growth of the process's peak "
    "resident memory.",
    "Fuse throughput (`--cases fuse_throughput`): a fresh tiny model, 64 px generated PET "
    "pairs (8 distinct pairs under many names) in folders of 100, 1,000 and 10,000 pairs at 1 "
    "sampling step (and, as extra information without a target, 1,000 pairs at 4 steps on 1 "
    "device), each case in its own process on 1 or 4 simulated CPU devices (XLA_FLAGS). "
    "'compile s' is the start-up, kept out of both timings: the checkpoint restored "
    "(`Fuser.from_checkpoint`), one batch read and placed on the devices as `fuse` places its "
    "batches, the sampler compiled and run once. 'steady s' of a folder row: one whole `fuse` "
    "of the folder with that compiled fuser (`fusion.fuse_into_folder`: the resume checks, the "
    "reader and writer threads started, every pair read, fused and written, streamed, the "
    "pipeline filled and drained); the case fails if the run compiled anything. 'steady s' of "
    "the in-memory row: the same compiled program alone on one batch already on the devices, "
    "1,000 pairs' worth of batches, each batch's RGB fetched while the next runs, as the "
    "folder's are. The 'batch' column holds the pair count. 'peak RSS MiB' is the case "
    "process's growth, data generation included. Each case runs in its own process, minutes "
    "apart, so a change of load between the sampler-alone row and a folder row moves their "
    "ratio (run 19, with another job training on the machine: 0.44 to 1.29 at 1 step). What "
    "the folder adds, measured on its own on this machine: about 1.7 ms of CPU per 64 px pair "
    "(decoding both PNGs 0.47 ms, converting them 0.25, encoding the fused PNG at zlib level 1 "
    "0.55, batching and bookkeeping about 0.4). The sampler alone at 1 step runs only the Y "
    "rows (B's own chroma, docs/method.md section 6) and uses about 6 ms of CPU per pair on the "
    "2 cores (run 20); the reader and writer threads take their CPU from XLA's threads, which "
    "bounds the ratio well below 0.9 at this setting on this machine (timed in alternation in "
    "one process on the idle machine, 800 pairs, 1 device: 179 against 271 pairs/s, 0.66) and "
    "lets it grow with the sampler's work per pair (the 4-step row).",
    "Data memory (`--cases data_memory`): 2,000 generated PET pairs of 64 px and their "
    "array_record cache (the tfds builder) are written first; then fresh processes each read "
    "one epoch of shuffled global batches of 8 as training does (`pipeline.source_from_config`, "
    "`pipeline.BatchIterator`, 1 CPU device per process): 1 process holding the pairs in "
    "memory (`ArraySource`, what every process did before the cache), 1 process reading the "
    "cache, and 2 processes on localhost (jax.distributed) each reading only its rows of every "
    "batch from the cache, one row per process. 'peak RSS MiB' is each reader's growth from "
    "just before it opens the source (after the libraries and the JAX runtime started); "
    "'steady s' the epoch's wall time. The target compares the larger peak of the 2 processes "
    "with the 1 process holding the pairs in memory.",
    "Step split (`--cases step_split`), one process per config and batch: the whole real step; "
    "the network's own forward and backward (its two calls, the registration pass and the "
    "main call with dropout, under a stand-in loss, and AdamW); the registration terms (MI and "
    "the second similarity term of the three channels, smoothness, folding) forward and "
    "backward with respect to the field; the quality loss (SSIM, Sobel, intensity) forward "
    "and backward with respect to the fused image. The four are compiled first and then timed "
    "in alternation (rounds of one call each; rows measured before run 9 were timed one after "
    "the other), so that a change of load falls on all of them alike. Each row's note gives its "
    "share of the whole step's steady wall and CPU time (on a loaded machine the CPU share is "
    "the steadier). "
    "The rest is the other terms, the channel conditions and the "
    "bookkeeping (weighting policy, optimiser), less what XLA fuses across the parts.",
)


def previous_results(out):
    """(runs, rows, accelerator) kept next to the report `out` by an earlier run."""
    path = measure.data_path(out)
    if not os.path.isfile(path):
        raise UserError(f"--update: no earlier results at {path} (run without --update first)")
    try:
        return measure.read_results(path)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"--update: {path} is not a results file of this benchmark: "
                        f"{error}") from error


def measure_all(cases, timeout_s, run_number, progress, done=lambda rows, accelerator: None):
    """(rows, accelerator name or None) of the cases, each in its own process; `done(rows,
    accelerator)` is called with the rows so far after every case."""
    rows, accelerator = [], None
    for case in cases:
        load = os.getloadavg()[0]
        what = " ".join(str(v) for v in (case.kind, case.framework, case.label, case.task,
                                         case.variant, case.part, case.size or "") if v)
        print(f"measuring {what}, batch {case.batch} (load {load:.1f})", file=progress,
              flush=True)
        new_rows, name = run_in_subprocess(case, timeout_s)
        accelerator = accelerator or name
        rows += [row._replace(load=load, run=run_number) for row in new_rows]
        done(rows, accelerator)
    return rows, accelerator


def run(options, command, out, update=False, progress=sys.stderr):
    """Runs every planned case and writes the report to `out` (and its rows to the JSON file
    next to it) atomically after every case, so that an interrupted run keeps the cases it
    measured; with `update`, the new rows replace the same cases of the earlier results and
    are added to them. Returns the report text."""
    runs, rows, accelerator = previous_results(out) if update else ([], [], None)
    started, load_start = measure.utc_now(), os.getloadavg()[0]
    written = {}

    def write(new_rows, new_accelerator):
        every_run = runs + [measure.Run(command, started, load_start, os.getloadavg()[0],
                                        measure.machine_summary(new_accelerator))]
        merged = with_counterpart_flops(measure.merge_rows(rows, new_rows))
        named = new_accelerator or accelerator
        written["text"] = measure.report(
            "Benchmarks: JAX against the PyTorch port", every_run, merged, all_targets(merged),
            measure.machine_description(named), matmul_rate(merged), NOTES)
        measure.write_report(out, written["text"], measure.results_json(every_run, merged,
                                                                       named))

    write(*measure_all(plan(options), options.case_timeout_s, len(runs) + 1, progress, write))
    return written["text"]
