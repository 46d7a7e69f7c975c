"""`difffccf evaluate`: scores folders of fused images, and optionally the classical baselines,
with the standard fusion metrics and writes the comparison table (Markdown, CSV, JSON)."""


from difffccf_jax.commands.common import add_config_argument, config_from_args
from difffccf_jax.errors import UserError
from difffccf_jax.config_cli import shipped_config

# The published settings; evaluation reads only their folder layouts (config.data.layouts).
PAPER_CONFIG = shipped_config("paper")


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="score fused images with EN, SD, SF, MI, SCD, VIF, Qabf, SSIM, "
                         "colour fidelity, ...",
        description="Score fused images against their source pairs with the standard fusion "
                    "metrics (EN, SD, SF, MI, SCD, VIF, Qabf, SSIM, AG, PSNR, CC, MSE) on 8-bit "
                    "grey versions and two colour-fidelity numbers (dE00-B: mean CIEDE2000 from "
                    "B inside B's functional region; dE00-A: from A's grey outside it); one row "
                    "per method, mean ± std over the pairs, written to --out as evaluation.md, "
                    "evaluation.csv and evaluation.json.")
    parser.add_argument("--task", required=True, help="task key: pet, spect, ct, gfp or adni")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data root holding the task's folder in the published layout")
    parser.add_argument("--fused", action="append", default=[], metavar="NAME=DIR",
                        help="a method's folder of fused images, one <pair stem>.png per pair "
                             "(as `difffccf fuse` writes them); repeat for several methods")
    parser.add_argument("--baselines", action="store_true",
                        help="also score the classical rules: average, maximum, ycrcb-average, "
                             "ycrcb-maximum, a-luminance (A's luminance with B's chroma: the "
                             "degenerate solution of copying A), and the multi-scale laplacian "
                             "(Laplacian-pyramid fusion of the Y channels) and max-low-a-detail "
                             "(the maximum's low frequencies plus A's details), with B's chroma")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the tables")
    parser.add_argument("--ssim-data-range", type=float, default=255.0, metavar="R",
                        help="SSIM's data range (255 for 8-bit images; 2 reproduces numbers of "
                             "older scikit-image on float images)")
    add_config_argument(parser, default=PAPER_CONFIG)
    parser.set_defaults(run=run)


def parse_methods(texts, baseline_names=()):
    """{name: folder} from the --fused NAME=DIR arguments, in the order given."""
    methods = {}
    for text in texts:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--fused {text!r}: expected NAME=DIR")
        if name in methods or name in baseline_names:
            raise UserError(f"--fused {text!r}: method name {name!r} is already used")
        methods[name] = folder
    return methods


def run(args):
    from difffccf_jax.data import layouts
    from difffccf_jax.evaluation import baselines, scoring

    methods = parse_methods(args.fused, tuple(baselines.BASELINES) if args.baselines else ())
    layout = layouts.layout_from_config(config_from_args(args).data, args.task)
    markdown, paths = scoring.evaluate_folders(args.data, layout, methods, args.out,
                                               args.baselines, args.ssim_data_range)
    print(markdown, end="")
    print("written: " + ", ".join(paths))
