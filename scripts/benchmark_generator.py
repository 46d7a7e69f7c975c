"""Measures the paired-data generator: pairs written per second, per task, on one CPU core.

    python scripts/benchmark_generator.py --size 256 --num 40 --out benchmarks/generator.md

Each row generates and writes `num` pairs (PNG files, plus the displacement field with
--misalign) into a temporary folder, pinned to one core. The first pair of each task (module
imports, table caches) is timed separately as the start-up cost and not counted in the rate.
Rates are given per wall-clock second and per second of CPU time this process got: on a busy
machine the second is the one that says what one free core does.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

from difffccf_jax import files
from difffccf_jax.data import generator
from difffccf_jax.data.layouts import Layout

TARGET_PAIRS_PER_SECOND = 20.0


def time_task(task, size, num, misalign, folder):
    """(wall seconds of the first pair, wall and CPU seconds of the next `num` pairs)."""
    layout = Layout(task=task, folder=task, a="A", b="B", b_is_color=True, jet=False)
    start = time.perf_counter()
    generator.write_task(folder, layout, 1, size, seed=0, misalign_b=misalign)
    first = time.perf_counter() - start
    start, start_cpu = time.perf_counter(), time.process_time()
    generator.write_task(os.path.join(folder, "run"), layout, num, size, seed=1,
                         misalign_b=misalign)
    return first, time.perf_counter() - start, time.process_time() - start_cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num", type=int, default=40)
    parser.add_argument("--tasks", default=",".join(generator.TASKS))
    parser.add_argument("--out", default="benchmarks/generator.md")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    header = ("| task | misalign | pairs | first pair (s) | wall s | CPU s | pairs/s (wall) "
              "| pairs/s (CPU) | CPU ms/pair |\n"
              "|------|----------|-------|----------------|--------|-------|----------------"
              "|---------------|-------------|")
    rows = []
    print(header)
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks.split(","):
            for misalign in (False, True):
                first, wall, cpu = time_task(task, args.size, args.num, misalign,
                                             os.path.join(folder, f"{task}-{misalign}"))
                rate = args.num / cpu
                row = (f"| {task} | {'yes' if misalign else 'no'} | {args.num} | {first:.3f} | "
                       f"{wall:.2f} | {cpu:.2f} | {args.num / wall:.1f} | {rate:.1f} | "
                       f"{1000 / rate:.1f} |")
                rows.append((rate, row))
                print(row, flush=True)
    slowest = min(rate for rate, _ in rows)
    machine = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    summary = (f"\nslowest: {slowest:.1f} pairs per CPU second at {args.size} x {args.size} "
               f"(target {TARGET_PAIRS_PER_SECOND:.0f}); one core of {machine} ({os.cpu_count()} "
               f"cores, load average {load:.1f} at the end), python {sys.version.split()[0]}\n")
    print(summary)
    command = "python scripts/benchmark_generator.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = (f"# Generator throughput\n\n`{command.strip()}`\n\n{header}\n"
            + "\n".join(row for _, row in rows) + "\n" + summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    files.write_text(args.out, text)


if __name__ == "__main__":
    main()
