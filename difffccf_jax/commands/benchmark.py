"""`difffccf benchmark`: JAX against the PyTorch port (U-Net forward, training step), the real
training step and its split, sampler throughput, the graph bottleneck, the data generator,
the fusion metrics, the folder fusion's throughput and memory (`--cases fuse_throughput`,
not in the default set: about half an hour on 2 cores) and the training data's memory per
process, 1 and 2 processes (`--cases data_memory`, not in the default set), on this machine;
writes BENCHMARKS.md and prints it.

The accelerator check, whenever a GPU is lent (sized for under 8 minutes on one GPU, not yet run
on one; its rows join the report with the machine named):

    difffccf benchmark --preset accelerator --update
"""

from difffccf_jax.errors import UserError

PARTS = ("matmul", "forward", "train", "train_full", "step_split", "throughput", "sampling",
         "graph", "generator", "metrics", "fuse_throughput", "data_memory")
DEFAULTS = dict(configs="paper,tiny", batch_sizes="1,4", graph_sizes="32,64", matmul_size=2048,
                max_repeats=5, budget_s=60.0, whole_sampling_max_size=64, case_timeout_s=3600.0,
                cases=",".join(p for p in PARTS
                               if p not in ("step_split", "throughput", "fuse_throughput",
                                            "data_memory")))
PRESETS = {
    "quick": dict(DEFAULTS, configs="tiny", batch_sizes="1", graph_sizes="32", matmul_size=1024,
                  max_repeats=3, budget_s=20.0,
                  cases="matmul,forward,train,sampling,graph,generator,metrics"),
    # One GPU in under 8 minutes: the real step at the paper's batch in float32 and bfloat16
    # and the 100-step respaced sampler at 256 px; a hung case stops after 150 s.
    "accelerator": dict(DEFAULTS, configs="paper", batch_sizes="4", cases="throughput",
                        max_repeats=5, budget_s=20.0, case_timeout_s=150.0),
}


def register(subparsers):
    parser = subparsers.add_parser(
        "benchmark", help="time JAX against the PyTorch port and write BENCHMARKS.md",
        description="Measure, each case in a fresh process: the U-Net forward and a training "
                    "step in JAX and in the PyTorch port, the real JAX training step (with "
                    "step_split: beside the network's own forward and backward and the "
                    "registration and quality losses; with throughput: in each --dtypes, with "
                    "pairs/s, FLOP utilisation and peak memory), the "
                    "respaced and the full sampler, the graph bottleneck as stencils and as "
                    "dense matrices, the paired-data generator (every task) and the fusion "
                    "metrics per pair at each config's image size, and a float32 matrix "
                    "product as the machine's reference rate. Compile time, first call, "
                    "steady median, CPU time, peak memory and GFLOP/s per case; the targets; "
                    "written to --out (needs the torch extra for the PyTorch cases).")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="'quick': a fast subset (tiny config, batch 1, no train_full: its "
                             "compilation takes minutes; 32 x 32 graph, 1024^2 matmul, at most "
                             "3 repeats); 'accelerator': the GPU check (the throughput part: "
                             "paper config, batch 4, the real step in float32 and bfloat16, the "
                             "respaced sampler; sized for under 8 minutes on one GPU; --configs "
                             "tiny --sampling-steps 4 --case-timeout-s 3600 is its CPU form). "
                             "Explicit options still apply")
    parser.add_argument("--quick", action="store_const", const="quick", dest="preset",
                        help="the same as --preset quick")
    parser.add_argument("--configs", default=None,
                        help="comma-separated configs: 'paper', 'tiny' or config file paths "
                             "(default paper,tiny)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4)")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated parts among {', '.join(PARTS)} (default all "
                             "but step_split and throughput)")
    parser.add_argument("--graph-sizes", default=None,
                        help="comma-separated bottleneck grid sides (default 32,64)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the reference matrix product (default 2048)")
    parser.add_argument("--max-repeats", type=int, default=None,
                        help="most steady calls per case (default 5)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock seconds of steady calls per case; fewer repeats (at "
                             "least 2) when they would take longer (default 60)")
    parser.add_argument("--sampling-steps", type=int, default=100,
                        help="steps of the respaced sampler compared with the full 2000-step "
                             "one (default 100)")
    parser.add_argument("--whole-sampling-max-size", type=int, default=None,
                        help="largest image size whose samplers run whole; larger ones are "
                             "estimated from the per-step time (default 64)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated compute dtypes of the throughput part's training "
                             "steps (default float32,bfloat16)")
    parser.add_argument("--fast-compile", action="store_true",
                        help="compile the throughput part's programs at XLA optimisation level "
                             "0: much shorter compiles on CPU but slower steps, so its timings "
                             "are not the real ones (for checking the CPU form quickly)")
    parser.add_argument("--case-timeout-s", type=float, default=None,
                        help="a case running longer is stopped and reported as timed out "
                             "(default 3600)")
    parser.add_argument("--out", default="BENCHMARKS.md",
                        help="report file (Markdown); its rows are kept in a .json file next "
                             "to it")
    parser.add_argument("--update", action="store_true",
                        help="merge into the existing report: the cases measured now replace "
                             "the same cases of the earlier runs (for example to re-measure "
                             "some rows when the machine is quieter)")
    parser.set_defaults(run=run)


def _integers(text, option):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


def parse_parts(text):
    """The parts named by --cases, in order; UserError for an empty list or an unknown part."""
    parts = tuple(p for p in text.split(",") if p)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        problem = f"unknown part(s) {', '.join(unknown)}" if unknown else "no part"
        raise UserError(f"--cases: {problem} in {text!r}; choose among {', '.join(PARTS)}")
    return parts


def options_from_args(args):
    """(suite.Options, the equivalent command line with every option explicit)."""
    from difffccf_jax.benchmark import suite
    from difffccf_jax.model.unet import DTYPES

    chosen = PRESETS.get(args.preset, DEFAULTS)
    value = {name: getattr(args, name) if getattr(args, name) is not None else default
             for name, default in chosen.items()}
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    if not dtypes or not set(dtypes) <= set(DTYPES):
        raise UserError(f"--dtypes: expected comma-separated dtypes among "
                        f"{', '.join(sorted(DTYPES))}, got {args.dtypes!r}")
    parts = parse_parts(value["cases"])
    options = suite.Options(
        configs=tuple(suite.config_path(c) for c in value["configs"].split(",") if c),
        batch_sizes=_integers(value["batch_sizes"], "--batch-sizes"), parts=parts,
        graph_sizes=_integers(value["graph_sizes"], "--graph-sizes"),
        matmul_size=value["matmul_size"], max_repeats=value["max_repeats"],
        budget_s=value["budget_s"], sampling_steps=args.sampling_steps,
        whole_sampling_max_size=value["whole_sampling_max_size"],
        case_timeout_s=value["case_timeout_s"], dtypes=dtypes,
        fast_compile=bool(getattr(args, "fast_compile", False)))
    if options.max_repeats < 2 or options.budget_s <= 0 or options.matmul_size < 1:
        raise UserError("--max-repeats must be at least 2, --budget-s and --matmul-size "
                        "positive")
    full = suite.FULL_SAMPLING_STEPS
    if not 1 <= options.sampling_steps < full:
        raise UserError(f"--sampling-steps: expected 1..{full - 1} (fewer than the full "
                        f"{full}), got {options.sampling_steps}")
    command = (f"difffccf benchmark --configs {value['configs']} "
               f"--batch-sizes {value['batch_sizes']} --cases {','.join(parts)} "
               f"--graph-sizes {value['graph_sizes']} "
               f"--matmul-size {options.matmul_size} --max-repeats {options.max_repeats} "
               f"--budget-s {options.budget_s:g} "
               f"--sampling-steps {options.sampling_steps} "
               f"--whole-sampling-max-size {options.whole_sampling_max_size} "
               + (f"--dtypes {','.join(dtypes)} " if "throughput" in parts else "")
               + ("--fast-compile " if options.fast_compile and "throughput" in parts else "")
               + f"--case-timeout-s {options.case_timeout_s:g} "
               f"--out {args.out}" + (" --update" if args.update else ""))
    return options, command


def run(args):
    from difffccf_jax.benchmark import suite

    options, command = options_from_args(args)
    print(suite.run(options, command, args.out, args.update))
    print(f"written to {args.out}")
