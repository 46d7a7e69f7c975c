"""`difffccf make-data`: writes realistic generated pairs of one task in the published layout."""

import os

from difffccf_jax.commands.common import add_config_argument, config_from_args
from difffccf_jax.data.generator import ANATOMIES, DEFAULT_ANATOMY, MOTIONS, TASKS
from difffccf_jax.config_cli import shipped_config

PAPER_CONFIG = shipped_config("paper")


def register(subparsers):
    parser = subparsers.add_parser(
        "make-data", help="generate realistic paired data in the published layout",
        description="Generate N brain-like (pet, spect, ct, adni) or cell-culture (gfp) pairs "
                    "into OUT/<task folder>/<A folder> and <B folder>, named 1.png ... N.png. "
                    "Folder names come from the config's data.layouts. With --misalign, B is "
                    "moved by a small random affine plus elastic motion and the field that "
                    "realigns it goes to <task folder>/displacement/<n>.npy ([H, W, 2] pixels, "
                    "x then y; sampling B at (x + dx, y + dy) realigns it). Brain anatomy comes "
                    "from the MNI152 template (default) or a synthetic phantom. "
                    "With --clean-twins DIR, the clean twin of every pair (the same pair "
                    "without scanner noise, the same names and displacement fields) goes to DIR "
                    "in the same layout: the reference of `difffccf evaluate-denoising`.")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--num", type=int, required=True, help="number of pairs")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="pair i depends only on seed and i")
    parser.add_argument("--out", required=True, help="data root to write into")
    parser.add_argument("--misalign", action="store_true",
                        help="misalign B and save the true displacement field")
    parser.add_argument("--motion-strength", type=float, default=1.0, metavar="S",
                        help="with --misalign: multiplies every range of the random motion "
                             "(default 1: up to about 3 px at 256 px; at most 6)")
    parser.add_argument("--motion", choices=tuple(MOTIONS), default="affine",
                        help="with --misalign: 'affine' (the random affine plus elastic motion "
                             "of --motion-strength) or 'head' (rigid head motion plus an elastic "
                             "part, a mean misalignment of 2-4 px at any size; `difffccf "
                             "registration` trains and tests on it)")
    parser.add_argument("--anatomy", choices=ANATOMIES, default=DEFAULT_ANATOMY,
                        help="brain tasks: slices of the MNI152 template (default) or the "
                             "synthetic phantom")
    parser.add_argument("--clean-twins", default=None, metavar="DIR",
                        help="also write the clean twin of every pair (no scanner noise, the "
                             "same anatomy, uptake, colours and misalignment) under this data "
                             "root, in the same layout")
    add_config_argument(parser, default=PAPER_CONFIG)
    parser.set_defaults(run=run)


def run(args):
    from difffccf_jax.data import generator, layouts

    config = config_from_args(args)
    layout = layouts.layout_from_config(config.data, args.task)
    folder = generator.write_task(args.out, layout, args.num, args.size, args.seed,
                                  misalign_b=args.misalign,
                                  motion_strength=args.motion_strength, anatomy=args.anatomy,
                                  clean_twins_out=args.clean_twins, motion=args.motion)
    brain = "" if args.task == "gfp" else f" on the {args.anatomy} anatomy"
    print(f"wrote {args.num} {args.task} pairs of {args.size} x {args.size}{brain}"
          f"{' with misaligned B' if args.misalign else ''} to {folder}")
    if args.clean_twins is not None:
        print(f"wrote their clean twins to {os.path.join(args.clean_twins, layout.folder)}")
