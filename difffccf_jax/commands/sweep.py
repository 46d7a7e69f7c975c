"""`difffccf sweep`, `sweep-run` and `sweep-report`: hyper-parameter sweeps (see sweeps.py)."""

import os

from difffccf_jax.errors import UserError

# Fields that have their own flag (or are the sweep's to set).
OWN_FLAGS = ("nodes", "gpus_per_node", "ntasks_per_node", "time", "setup", "array_parallelism",
             "num_gpus", "job_name")


def register(subparsers):
    sweep = subparsers.add_parser(
        "sweep", help="expand a sweep into runs and launch them with submitit (SLURM or here)",
        description="Expand a sweep file (base config plus grid) into named runs, each with "
                    "its own folder and resolved config.json, check every run against the "
                    "requested devices, then launch the runs not finished yet through "
                    "submitit: a SLURM job array, or submitit's local executor here. "
                    "--config.FIELD=VALUE overrides apply to every run; any sbatch field "
                    "submitit knows is --slurm.FIELD=VALUE.")
    sweep.add_argument("--sweep", required=True, metavar="FILE[:ARG]",
                       help="sweep file, e.g. configs/sweeps/adaptive_weighting.py:paper")
    sweep.add_argument("--workdir", required=True, metavar="DIR", help="the sweep's folder")
    sweep.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: submitit's local executor, here (this command waits for "
                            "the runs); slurm: one job array, submitted with sbatch")
    sweep.add_argument("--nodes", type=int, default=1, help="nodes per run")
    sweep.add_argument("--gpus-per-node", type=int, default=0,
                       help="GPUs per node (0: CPU devices)")
    sweep.add_argument("--tasks-per-node", type=int, default=1,
                       help="processes per node; the node's GPUs are split between them")
    sweep.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per process")
    sweep.add_argument("--time", default="24:00:00",
                       help="time limit of one job (SLURM format); a run that needs longer "
                            "is requeued and resumes")
    sweep.add_argument("--parallel", type=int, default=None,
                       help="runs at a time (default: 1 here; on SLURM the job array's "
                            "throttle, default none)")
    sweep.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="shell line run before each job (repeat), e.g. 'module load cuda'")
    for field in ("partition", "account", "qos", "mem", "constraint"):
        sweep.add_argument(f"--{field}", default=None, help=f"slurm: --{field}")
    # --slurm.FIELD=VALUE items are taken out of the command line by cli.main (SLURM_PREFIX)
    sweep.set_defaults(run=run_sweep, config=None, slurm_fields=[])

    one = subparsers.add_parser(
        "sweep-run", help="run one run of a sweep here, in this process (what each of its jobs does)",
        description="Train, fuse and score the run whose folder holds config.json.")
    one.add_argument("--run-dir", required=True, metavar="DIR")
    one.set_defaults(run=run_one, config=None)

    report = subparsers.add_parser(
        "sweep-report", help="list done, failed and unfinished runs; tabulate the finished",
        description="Print every run that is not done (failed ones with the last line of "
                    "their error), then write report.md and report.csv of the finished runs' "
                    "final metrics into the sweep's folder, sorted by a metric.")
    report.add_argument("--workdir", required=True, metavar="DIR")
    report.add_argument("--sort-by", default="MI", metavar="METRIC",
                        help="metric to sort by (default: MI)")
    report.add_argument("--ascending", action="store_true",
                        help="smallest first (default: largest first)")
    report.set_defaults(run=run_report)


def slurm_fields(args):
    """{submitit field: value} from --partition/--account/... and every --slurm.FIELD=VALUE
    (integers as numbers); the latter win. A field submitit does not know, or one with its own
    flag, is a UserError."""
    import submitit  # pylint: disable=import-outside-toplevel

    known = submitit.SlurmExecutor._valid_parameters()  # pylint: disable=protected-access
    for field, _ in args.slurm_fields:
        if field not in known or field in OWN_FLAGS:
            raise UserError(f"--slurm.{field}: not an sbatch field submitit sets here; expected "
                            f"one of {', '.join(sorted(set(known) - set(OWN_FLAGS)))}")
    fields = {name: getattr(args, name) for name in ("partition", "account", "qos", "mem",
                                                     "constraint", "cpus_per_task")}
    fields.update(dict(args.slurm_fields))
    return {key: int(value) if isinstance(value, str) and value.isdigit() else value
            for key, value in fields.items() if value is not None}


def resources_from_args(args):
    from difffccf_jax.tools import sweeps  # pylint: disable=import-outside-toplevel

    cpu_devices = 1
    if args.launcher == "local":
        # The local executor hides the GPUs from jobs that ask for none; they inherit XLA_FLAGS.
        cpu_devices = sweeps.host_device_count(os.environ.get("XLA_FLAGS", ""))
    return sweeps.Resources(nodes=args.nodes, tasks_per_node=args.tasks_per_node,
                            gpus_per_node=args.gpus_per_node, cpu_devices=cpu_devices)


def run_sweep(args):
    from difffccf_jax.tools import sweeps  # pylint: disable=import-outside-toplevel

    runs = sweeps.expand(args.sweep, args.config_overrides)
    resources = resources_from_args(args)
    fields = slurm_fields(args)
    if args.launcher == "local":
        fields.pop("cpus_per_task", None)
    parameters = sweeps.executor_parameters(
        args.launcher, resources, sweeps.parse_minutes(args.time), setup=args.setup,
        parallel=args.parallel, slurm_fields=fields)
    sweeps.validate(runs, resources)
    sweeps.check_unchanged(runs, args.workdir)
    executor = sweeps.make_executor(args.launcher, os.path.join(args.workdir, "logs", "%j"),
                                    parameters)
    sweeps.write_runs(runs, args.workdir)
    pending = [os.path.join(args.workdir, run.name) for run in runs
               if not sweeps.is_done(os.path.join(args.workdir, run.name))]
    print(f"{len(runs)} runs in {args.workdir}, {len(runs) - len(pending)} done before; "
          f"launching {len(pending)} ({args.launcher})")
    jobs = sweeps.launch(executor, pending, parallel=args.parallel or 1)
    if args.launcher == "slurm":
        if jobs:
            print(f"submitted job array {jobs[0].job_id.split('_')[0]}; progress: "
                  f"difffccf sweep-report --workdir {args.workdir}")
        return 0
    lines = sweeps.status_lines(args.workdir)
    print("\n".join(lines))
    failed = any(line.startswith("failed") for line in lines)
    print(f"table: difffccf sweep-report --workdir {args.workdir}")
    return 1 if failed else 0


def run_one(args):
    from difffccf_jax.tools import sweeps  # pylint: disable=import-outside-toplevel
    from difffccf_jax.config_cli import load_config  # pylint: disable=import-outside-toplevel

    path = os.path.join(args.run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{args.run_dir}: no config.json (not a sweep run folder)")
    config = load_config(path, args.config_overrides)
    sweeps.run_in_folder(config, args.run_dir, sweeps.train_and_score)


def run_report(args):
    from difffccf_jax.tools import sweeps  # pylint: disable=import-outside-toplevel

    print("\n".join(sweeps.status_lines(args.workdir)))
    rows = sweeps.collect(args.workdir)
    if not rows:
        raise UserError(f"{args.workdir}: no run has finished yet")
    rows = sweeps.sort_rows(rows, args.sort_by, descending=not args.ascending)
    print(sweeps.write_report(rows, args.workdir), end="")
