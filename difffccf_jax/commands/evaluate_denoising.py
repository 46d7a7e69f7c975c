"""`difffccf evaluate-denoising`: how close each method's fusion of noisy pairs comes to its
fusion of their clean twins, against the classical rules (evaluation/denoising.py)."""

from difffccf_jax.commands.common import add_config_argument, config_from_args
from difffccf_jax.config_cli import shipped_config
from difffccf_jax.errors import UserError

# The published settings; the command reads only their folder layouts (config.data.layouts).
PAPER_CONFIG = shipped_config("paper")


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate-denoising", help="measure denoising: fusions of noisy pairs against fusions "
                                   "of their clean twins (PSNR, SSIM)",
        description="Compare each method's fusion of every noisy pair with its fusion of the "
                    "pair's clean twin (`difffccf make-data --clean-twins`): PSNR (255 peak) and "
                    "SSIM on 8-bit grey versions, mean ± std over the pairs, against the "
                    "classical rules applied to the noisy and the clean sources; written to "
                    "--out as denoising.md (with a verdict per method) and denoising.json.")
    parser.add_argument("--task", required=True, help="task key: pet, spect, ct, gfp or adni")
    parser.add_argument("--data", required=True, metavar="NOISY_ROOT",
                        help="data root of the noisy pairs, in the published layout")
    parser.add_argument("--clean-data", required=True, metavar="CLEAN_ROOT",
                        help="data root of their clean twins (the same pair names)")
    parser.add_argument("--fused", action="append", default=[],
                        metavar="NAME=NOISY_DIR:CLEAN_DIR",
                        help="a method's folders of fused images of the noisy pairs and of the "
                             "clean pairs, one <pair stem>.png per pair (the first ':' after "
                             "'=' separates them); repeat for several methods")
    parser.add_argument("--baselines", action="store_true",
                        help="also compare the classical rules (average, maximum, "
                             "ycrcb-average, ycrcb-maximum, a-luminance), the yardstick of the "
                             "verdict")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the tables")
    parser.add_argument("--ssim-data-range", type=float, default=255.0, metavar="R",
                        help="SSIM's data range (255 for 8-bit images)")
    add_config_argument(parser, default=PAPER_CONFIG)
    parser.set_defaults(run=run)


def parse_twin_methods(texts):
    """{name: (noisy folder, clean folder)} from the --fused NAME=NOISY_DIR:CLEAN_DIR
    arguments, in the order given."""
    methods = {}
    for text in texts:
        name, equals, folders = text.partition("=")
        noisy, colon, clean = folders.partition(":")
        if not (equals and colon and name and noisy and clean):
            raise UserError(f"--fused {text!r}: expected NAME=NOISY_DIR:CLEAN_DIR")
        if name in methods:
            raise UserError(f"--fused {text!r}: method name {name!r} is already used")
        methods[name] = (noisy, clean)
    return methods


def run(args):
    from difffccf_jax.data import layouts
    from difffccf_jax.evaluation import denoising

    methods = parse_twin_methods(args.fused)
    layout = layouts.layout_from_config(config_from_args(args).data, args.task)
    markdown, paths = denoising.evaluate_denoising(args.data, args.clean_data, layout, methods,
                                                   args.out, args.baselines,
                                                   args.ssim_data_range)
    print(markdown, end="")
    print("written: " + ", ".join(paths))
