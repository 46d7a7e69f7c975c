"""`difffccf benchmark`: JAX against the PyTorch port (U-Net forward, training step), sampler
throughput, the graph bottleneck, the data generator and the fusion metrics, on this machine;
writes BENCHMARKS.md and prints it."""

from difffccf_jax.errors import UserError

PARTS = ("matmul", "forward", "train", "train_full", "sampling", "graph", "generator", "metrics")
QUICK = dict(configs="tiny", batch_sizes="1", graph_sizes="32", matmul_size=1024, max_repeats=3,
             budget_s=20.0, cases="matmul,forward,train,sampling,graph,generator,metrics")


def register(subparsers):
    parser = subparsers.add_parser(
        "benchmark", help="time JAX against the PyTorch port and write BENCHMARKS.md",
        description="Measure, each case in a fresh process: the U-Net forward and a training "
                    "step in JAX and in the PyTorch port, the real JAX training step, the "
                    "respaced and the full sampler, the graph bottleneck as stencils and as "
                    "dense matrices, the paired-data generator (every task) and the fusion "
                    "metrics per pair at each config's image size, and a float32 matrix "
                    "product as the machine's reference rate. Compile time, first call, "
                    "steady median, CPU time, peak memory and GFLOP/s per case; the targets; "
                    "written to --out (needs the torch extra for the PyTorch cases).")
    parser.add_argument("--quick", action="store_true",
                        help="a fast subset: tiny config, batch 1, no train_full (its "
                             "compilation takes minutes), 32 x 32 graph, 1024^2 matmul, at most "
                             "3 repeats (explicit options still apply)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated configs: 'paper', 'tiny' or config file paths "
                             "(default paper,tiny)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,4)")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated parts among {', '.join(PARTS)} (default all)")
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
    parser.add_argument("--whole-sampling-max-size", type=int, default=64,
                        help="largest image size whose samplers run whole; larger ones are "
                             "estimated from the per-step time (default 64)")
    parser.add_argument("--case-timeout-s", type=float, default=3600.0,
                        help="a case running longer is stopped and reported as timed out")
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


def _choose(value, quick_value, default, quick):
    if value is not None:
        return value
    return quick_value if quick else default


def options_from_args(args):
    """(suite.Options, the equivalent command line with every option explicit)."""
    from difffccf_jax.benchmark import suite

    quick = args.quick
    configs = _choose(args.configs, QUICK["configs"], "paper,tiny", quick)
    batch_sizes = _choose(args.batch_sizes, QUICK["batch_sizes"], "1,4", quick)
    graph_sizes = _choose(args.graph_sizes, QUICK["graph_sizes"], "32,64", quick)
    parts = parse_parts(_choose(args.cases, QUICK["cases"], ",".join(PARTS), quick))
    options = suite.Options(
        configs=tuple(suite.config_path(c) for c in configs.split(",") if c),
        batch_sizes=_integers(batch_sizes, "--batch-sizes"), parts=parts,
        graph_sizes=_integers(graph_sizes, "--graph-sizes"),
        matmul_size=_choose(args.matmul_size, QUICK["matmul_size"], 2048, quick),
        max_repeats=_choose(args.max_repeats, QUICK["max_repeats"], 5, quick),
        budget_s=_choose(args.budget_s, QUICK["budget_s"], 60.0, quick),
        sampling_steps=args.sampling_steps,
        whole_sampling_max_size=args.whole_sampling_max_size,
        case_timeout_s=args.case_timeout_s)
    if options.max_repeats < 2 or options.budget_s <= 0 or options.matmul_size < 1:
        raise UserError("--max-repeats must be at least 2, --budget-s and --matmul-size "
                        "positive")
    full = suite.FULL_SAMPLING_STEPS
    if not 1 <= options.sampling_steps < full:
        raise UserError(f"--sampling-steps: expected 1..{full - 1} (fewer than the full "
                        f"{full}), got {options.sampling_steps}")
    command = (f"difffccf benchmark --configs {configs} --batch-sizes {batch_sizes} "
               f"--cases {','.join(parts)} --graph-sizes {graph_sizes} "
               f"--matmul-size {options.matmul_size} --max-repeats {options.max_repeats} "
               f"--budget-s {options.budget_s:g} "
               f"--sampling-steps {options.sampling_steps} "
               f"--whole-sampling-max-size {options.whole_sampling_max_size} "
               f"--out {args.out}" + (" --update" if args.update else ""))
    return options, command


def run(args):
    from difffccf_jax.benchmark import suite

    options, command = options_from_args(args)
    print(suite.run(options, command, args.out, args.update))
    print(f"written to {args.out}")
