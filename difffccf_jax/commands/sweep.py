"""`difffccf sweep`, `sweep-run` and `sweep-report`: hyper-parameter sweeps (see sweeps.py)."""

import os

from difffccf_jax.errors import UserError


def register(subparsers):
    sweep = subparsers.add_parser(
        "sweep", help="expand a sweep into runs and run them here or write a SLURM array",
        description="Expand a sweep file (base config plus grid) into named runs, each with "
                    "its own folder and resolved config.json. --config.FIELD=VALUE overrides "
                    "apply to every run.")
    sweep.add_argument("--sweep", required=True, metavar="FILE[:ARG]",
                       help="sweep file, e.g. configs/sweeps/adaptive_weighting.py:paper")
    sweep.add_argument("--workdir", required=True, metavar="DIR", help="the sweep's folder")
    sweep.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: run one after another here (finished runs are skipped, "
                            "interrupted ones resume); slurm: write an sbatch array script")
    sweep.add_argument("--nodes", type=int, default=1, help="slurm: nodes per run")
    sweep.add_argument("--gpus-per-node", type=int, default=1, help="slurm: GPUs per node")
    sweep.add_argument("--cpus-per-task", type=int, default=8, help="slurm: CPUs per task")
    sweep.add_argument("--time", default="24:00:00", help="slurm: time limit per run")
    sweep.add_argument("--partition", default=None, help="slurm: partition")
    sweep.set_defaults(run=run_sweep, config=None)

    one = subparsers.add_parser(
        "sweep-run", help="run one run of a sweep (what each SLURM array task calls)",
        description="Train, fuse and score the run whose folder holds config.json.")
    one.add_argument("--run-dir", required=True, metavar="DIR")
    one.set_defaults(run=run_one, config=None)

    report = subparsers.add_parser(
        "sweep-report", help="collect every finished run's final metrics into one table",
        description="Write report.md and report.csv into the sweep's folder, sorted by a "
                    "metric.")
    report.add_argument("--workdir", required=True, metavar="DIR")
    report.add_argument("--sort-by", default="MI", metavar="METRIC",
                        help="metric to sort by (default: MI)")
    report.add_argument("--ascending", action="store_true",
                        help="smallest first (default: largest first)")
    report.set_defaults(run=run_report)


def run_sweep(args):
    from difffccf_jax import files
    from difffccf_jax.tools import sweeps

    runs = sweeps.expand(args.sweep, args.config_overrides)
    sweeps.write_runs(runs, args.workdir)
    if args.launcher == "slurm":
        script = sweeps.slurm_script(runs, args.workdir, nodes=args.nodes,
                                     gpus_per_node=args.gpus_per_node,
                                     cpus_per_task=args.cpus_per_task, time=args.time,
                                     partition=args.partition)
        path = os.path.join(args.workdir, "sweep.sbatch")
        files.write_text(path, script)
        print(f"{len(runs)} runs written to {args.workdir}; submit with: sbatch {path}")
        return
    sweeps.run_local(runs, args.workdir, sweeps.train_and_score)
    print(f"{len(runs)} runs finished; table: difffccf sweep-report --workdir {args.workdir}")


def run_one(args):
    from difffccf_jax.tools import sweeps
    from difffccf_jax.config_cli import load_config

    path = os.path.join(args.run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{args.run_dir}: no config.json (not a sweep run folder)")
    config = load_config(path, args.config_overrides)
    name = os.path.basename(os.path.normpath(args.run_dir))
    run = sweeps.Run(name=name, overrides={}, config=config)
    sweeps.run_local([run], os.path.dirname(os.path.normpath(args.run_dir)),
                     sweeps.train_and_score)


def run_report(args):
    from difffccf_jax.tools import sweeps

    rows = sweeps.collect(args.workdir)
    if not rows:
        raise UserError(f"{args.workdir}: no run has finished yet")
    rows = sweeps.sort_rows(rows, args.sort_by, descending=not args.ascending)
    print(sweeps.write_report(rows, args.workdir), end="")
