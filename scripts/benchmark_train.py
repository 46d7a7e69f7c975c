"""Training throughput: steps/s and images/s of the train step, compile time apart.

For each config (tiny, paper) and global batch size (1, 4) the script generates pet pairs at the
config's image size, builds the jitted train step over the first --devices devices, compiles it
(timed on its own), runs --warmup steps and then times --steps steps. An "image" is one (A, B)
pair; each pair runs through the network as three channel problems.

    python scripts/benchmark_train.py --out benchmarks/train.md
    python scripts/benchmark_train.py --configs tiny --batches 4 --steps 50
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from difffccf_jax import files, parallel
from difffccf_jax.training import train
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, layouts

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"tiny": os.path.join(REPO_ROOT, "configs", "tiny.py"),
           "paper": os.path.join(REPO_ROOT, "configs", "paper.py")}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--devices", type=int, default=1, help="devices in the data mesh")
    parser.add_argument("--fast-compile", action="store_true",
                        help="XLA backend optimisation level 0 (config.train.fast_compile)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "train.md"))
    return parser.parse_args(argv)


def measure(config, mesh, steps, warmup, fast_compile):
    """(compile seconds, seconds per step) of the train step of `config` on `mesh`."""
    run = train.setup_run(config, mesh)
    state = train.new_state(run, config, mesh)
    step_fn = train.make_train_step(mesh, parallel.replicated(mesh), **run.step_options)
    rules = jax.device_put(run.rules[config.data.task], parallel.replicated(mesh))
    learning_rate = jax.device_put(jnp.float32(config.optim.learning_rate),
                                   parallel.replicated(mesh))
    batches = run.batches[config.data.task]
    batch = next(batches)
    started = time.perf_counter()
    compiled = train.compile_step(step_fn, (state, batch, rules, learning_rate), fast_compile)
    compile_seconds = time.perf_counter() - started
    for _ in range(warmup):
        state, _ = compiled(state, next(batches), rules, learning_rate)
    jax.block_until_ready(state)
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, next(batches), rules, learning_rate)
    jax.block_until_ready((state, metrics))
    return compile_seconds, (time.perf_counter() - started) / steps


def write_table(path, rows, device, command, args):
    """Writes the rows so far as a Markdown table (temporary name, then rename)."""
    table = ("| config | image | batch | compile s | ms/step | steps/s | images/s |\n"
             "|---|---|---|---|---|---|---|\n") + "".join(
        f"| {n} | {s} | {b} | {c:.1f} | {ms:.1f} | {sps:.4g} | {ips:.4g} |\n"
        for n, s, b, c, ms, sps, ips in rows)
    text = (f"# Train step throughput\n\nDevice: {device}. Command: `{command}`.\n"
            f"Timed steps: {args.steps} after {args.warmup} warm-up steps; compile time is "
            f"the AOT compile of the step alone.\n\n{table}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_text(path, text)
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    mesh = parallel.make_mesh(jax.devices()[:args.devices])
    device = f"{args.devices} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
    command = " ".join(["python scripts/benchmark_train.py"] + argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in args.configs:
            for batch_size in args.batches:
                config = load_config(CONFIGS[name])
                config.data.task, config.data.multi_task = "pet", False
                config.data.batch_size = batch_size
                config.data.root = os.path.join(root, f"{config.data.image_size}")
                if not os.path.isdir(config.data.root):
                    layout = layouts.layout_from_config(config.data, "pet")
                    generator.write_task(config.data.root, layout,
                                         max(args.batches) * 2, config.data.image_size, 0)
                compile_seconds, step_seconds = measure(config, mesh, args.steps, args.warmup,
                                                        args.fast_compile)
                rows.append((name, config.data.image_size, batch_size, compile_seconds,
                             step_seconds * 1e3, 1 / step_seconds, batch_size / step_seconds))
                print(f"{name} batch {batch_size}: compile {compile_seconds:.1f} s, "
                      f"{step_seconds * 1e3:.1f} ms/step", flush=True)
                table = write_table(args.out, rows, device, command, args)
    print(table)


if __name__ == "__main__":
    main()
