"""Measures evaluation speed: the fusion metrics per pair, and `difffccf evaluate` end to end.

    python scripts/benchmark_metrics.py --pairs 100 --size 256 --out benchmarks/metrics.md

Generates `pairs` pet pairs (not timed) and a folder of fused images (the maximum rule), then
times (1) each metric alone and all_metrics on every triple, in memory, and (2) the evaluate
command on the files: one fused method, then the same with the four baselines added. The
target is 100 pairs of 256 x 256 in under a minute on 2 cores for one method. The first
triple is timed apart as the start-up cost (imports, window tables) and not counted. Wall and
CPU time are both reported, since a loaded machine inflates the wall time.
"""

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time

import numpy as np

from difffccf_jax import cli, files
from difffccf_jax.evaluation import baselines, metrics, scoring
from difffccf_jax.data import generator, images, layouts

TARGET_SECONDS = 60.0
# Each metric alone, as all_metrics calls it on grey arrays (f, a, b).
SINGLE_METRICS = {
    "EN": lambda f, a, b: metrics.entropy(f),
    "SD": lambda f, a, b: metrics.standard_deviation(f),
    "SF": lambda f, a, b: metrics.spatial_frequency(f),
    "MI": metrics.mutual_information,
    "SCD": metrics.sum_of_correlation_differences,
    "VIF": metrics.visual_information_fidelity,
    "Qabf": metrics.qabf,
    "SSIM": metrics.structural_similarity,
    "AG": lambda f, a, b: metrics.average_gradient(f),
    "PSNR": metrics.peak_signal_to_noise_ratio,
    "CC": metrics.correlation_coefficient,
    "MSE": metrics.mean_squared_error,
}


def make_data(folder, num, size):
    """Writes the pet pairs and the fused folder; returns (pairs, [(fused, a, b)] uint8)."""
    layout = layouts.Layout(task="pet", folder="HARVARD-PET-MRI", a="MRI", b="PET",
                            b_is_color=True, jet=False)
    generator.write_task(folder, layout, num, size, seed=0)
    pairs = layouts.list_pairs(folder, layout)
    os.makedirs(os.path.join(folder, "fused"))
    triples = []
    for pair in pairs:
        a, b = layouts.read_pair_uint8(pair, layout, size)
        fused = baselines.maximum_fusion(a, b)
        files.write_files([(os.path.join(folder, "fused", pair.name), fused)])
        triples.append((fused, a, b))
    return pairs, triples


def _clocks():
    return time.perf_counter(), time.process_time()


def _since(start):
    """(wall seconds, CPU seconds of this process) since `start` = _clocks()."""
    return tuple(now - then for now, then in zip(_clocks(), start))


def time_calls(function, items):
    start = _clocks()
    for item in items:
        function(*item)
    return _since(start)


def time_command(argv):
    """Seconds `difffccf argv` takes (its printed table and progress bar are discarded)."""
    start = _clocks()
    with open(os.devnull, "w", encoding="utf-8") as devnull, \
            contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        status = cli.main(argv)
    if status != 0:
        raise SystemExit(f"difffccf {' '.join(argv)} failed with status {status}")
    return _since(start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/metrics.md")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        _, triples = make_data(folder, args.pairs, args.size)
        grey = [tuple(metrics.grey_image(x) for x in triple) for triple in triples]
        first, _ = time_calls(metrics.all_metrics, triples[:1])
        for name, function in SINGLE_METRICS.items():
            rows.append((f"{name} alone", len(grey), *time_calls(function, grey)))
        rows.append(("all_metrics (grey conversion included)", len(triples),
                     *time_calls(metrics.all_metrics, triples)))
        common = ["evaluate", "--task", "pet", "--data", folder,
                  f"--fused=max={os.path.join(folder, 'fused')}"]
        rows.append(("difffccf evaluate, 1 method (files read, tables written)", args.pairs,
                     *time_command(common + ["--out", os.path.join(folder, "one")])))
        rows.append(("difffccf evaluate, 1 method + 4 baselines", args.pairs,
                     *time_command(common + ["--baselines", "--out",
                                             os.path.join(folder, "all")])))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"Evaluation speed, {args.pairs} pet pairs of {args.size} x {args.size}, "
             f"{cores} CPU cores ({platform.processor() or platform.machine()}), "
             f"Python {sys.version.split()[0]}, NumPy {np.__version__}; start-up (first "
             f"triple, not counted): {first * 1000:.0f} ms.",
             "",
             "| what | pairs | wall s | CPU s | wall ms/pair | CPU ms/pair |",
             "|------|-------|--------|-------|--------------|-------------|"]
    lines += [f"| {what} | {n} | {wall:.2f} | {cpu:.2f} | {wall / n * 1000:.1f} | "
              f"{cpu / n * 1000:.1f} |" for what, n, wall, cpu in rows]
    one_method = rows[-2][2] * 100 / args.pairs
    lines += ["", f"Target: 100 pairs with one method under {TARGET_SECONDS:.0f} s; measured "
                  f"{one_method:.1f} s wall per 100 pairs "
                  f"({'met' if one_method < TARGET_SECONDS else 'NOT met'}). CPU s is this "
                  "process's CPU time: wall well above it means other processes shared the "
                  "cores."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    scoring.write_text_files([(args.out, text)])


if __name__ == "__main__":
    main()
