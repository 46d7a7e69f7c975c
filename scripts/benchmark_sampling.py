"""Measures the compiled sampler: fused images per second for the full and a respaced schedule,
with the compile time reported apart.

    python scripts/benchmark_sampling.py --config configs/tiny.py --steps 12 --batch 4 \
        --out benchmarks/sampling_cpu.md
    python scripts/benchmark_sampling.py --config configs/paper.py --steps 100 --batch 16 \
        --skip-full --out benchmarks/sampling_gpu.md

Each row builds the sampler of the config (registration on, deterministic unless
--config.sampling.add_noise=true) for one schedule, compiles it (tracing + lowering, then XLA
compilation, timed separately), then times `--repeats` calls on a batch of random pairs after
one warm-up call. Images per second count fused RGB images (pairs), each of which runs three
channel diffusions; ms per network call divides a call's time by the network evaluations (the
reverse steps plus the registration pass). The batch is split over all devices of the machine. Wall-clock and
process CPU seconds are both given: on a shared CPU machine the CPU time is the steadier number.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

from difffccf_jax import files, parallel
from difffccf_jax.inference import sampling
from difffccf_jax.model import unet
from difffccf_jax.config_cli import load_config, split_overrides


def timed(function):
    """(result, wall seconds, CPU seconds) of function(), waiting for device results."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(function())
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def benchmark_schedule(config, params, schedule, a, b, repeats):
    """Dict of compile and steady-state timings of one schedule."""
    sample = sampling.sampler_from_config(config, config.data.task)[0]
    key, ids = jax.random.PRNGKey(0), np.arange(len(a), dtype=np.int32)
    lowered, lower_wall, _ = timed(lambda: sample.lower(params, schedule, a, b, key, ids))
    compiled, compile_wall, compile_cpu = timed(lowered.compile)
    timed(lambda: compiled(params, schedule, a, b, key, ids))  # warm-up
    runs = [timed(lambda: compiled(params, schedule, a, b, key, ids))[1:]
            for _ in range(repeats)]
    wall = statistics.median(run[0] for run in runs)
    cpu = statistics.median(run[1] for run in runs)
    steps = int(schedule.betas.shape[0])
    evaluations = steps + int(sampling.registers(config))  # the registration pass, if any
    return dict(steps=steps, lower=lower_wall, compile=compile_wall, compile_cpu=compile_cpu,
                wall=wall, cpu=cpu, images_per_s=len(a) / wall,
                ms_per_evaluation=1000 * wall / evaluations)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--steps", type=int, default=12, help="steps of the respaced schedule")
    parser.add_argument("--batch", type=int, default=4, help="pairs per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true",
                        help="time only the respaced schedule (the full one can take long)")
    parser.add_argument("--out", default="benchmarks/sampling.md")
    args = parser.parse_args(rest)
    config = load_config(args.config, overrides)
    size, total = config.data.image_size, config.diffusion.steps
    batch = sampling.padded_batch_size(args.batch, parallel.make_mesh().size)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (batch, size, size, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    params = unet.init_params(unet.model_from_config(config.model), jax.random.PRNGKey(0), size)

    header = ("| schedule | steps | pairs/call | trace+lower s | compile s | compile CPU s "
              "| s/call | CPU s/call | images/s | ms/network call |\n"
              "|----------|-------|------------|---------------|-----------|---------------"
              "|--------|------------|----------|-----------------|")
    print(header)
    rows = []
    schedules = [("respaced", args.steps)] + ([] if args.skip_full else [("full", total)])
    for name, steps in schedules:
        schedule = sampling.sampling_schedule(config.diffusion.schedule, total, steps)
        result = benchmark_schedule(config, params, schedule, a, b, args.repeats)
        row = (f"| {name} | {result['steps']} | {batch} | {result['lower']:.2f} | "
               f"{result['compile']:.2f} | {result['compile_cpu']:.2f} | {result['wall']:.3f} | "
               f"{result['cpu']:.3f} | {result['images_per_s']:.2f} | "
               f"{result['ms_per_evaluation']:.2f} |")
        rows.append(row)
        print(row, flush=True)
    devices = jax.devices()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    summary = (f"\n{len(devices)} x {devices[0].device_kind} ({devices[0].platform}); image "
               f"{size} x {size}, model_channels {config.model.model_channels}, channel_mult "
               f"{tuple(config.model.channel_mult)}, diffusion steps {total}; "
               f"{platform.processor() or platform.machine()} host with {os.cpu_count()} "
               f"cores, load average {load:.1f} at the end; jax {jax.__version__}\n")
    print(summary)
    command = "python scripts/benchmark_sampling.py " + " ".join(argv)
    text = (f"# Sampler throughput\n\n`{command.strip()}`\n\n{header}\n" + "\n".join(rows)
            + "\n" + summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    files.write_text(args.out, text)


if __name__ == "__main__":
    main()
