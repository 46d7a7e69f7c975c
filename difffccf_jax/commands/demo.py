"""`difffccf demo`: the whole method end to end on generated data, in a few minutes on a CPU."""

import shlex
import sys

from difffccf_jax.config_cli import shipped_config
from difffccf_jax.tools.demo import TRAIN_STEPS


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="generate data, train, fuse, evaluate and write a report (minutes, CPU)",
        description="Generate misaligned pairs, train the tiny configuration for a fixed "
                    "number of steps, fuse held-out pairs, compare with classical baselines, and write "
                    "figures, tables and report.md into --out.")
    parser.add_argument("--task", default="pet", choices=("pet", "spect", "ct", "gfp", "adni"),
                        help="which kind of pair to generate and fuse (default: pet)")
    parser.add_argument("--out", default="demo_out", metavar="DIR",
                        help="output folder, new or empty (default: demo_out)")
    parser.add_argument("--train-steps", type=int, default=TRAIN_STEPS, metavar="N",
                        help="training steps, rounded up to whole epochs of the training pairs "
                             f"(default: {TRAIN_STEPS})")
    parser.add_argument("--image-size", "--size", dest="image_size", type=int, default=96,
                        metavar="PX",
                        help="side in pixels of the generated pairs, fused whole (default: 96, "
                             "the smallest size at which every metric, VIF included, is defined)")
    parser.add_argument("--crop-size", type=int, default=32, metavar="PX",
                        help="train on random PX x PX crops of the pairs (config.data.crop_size; "
                             "at most --image-size, 0 for whole pairs; default: 32)")
    parser.add_argument("--train-pairs", type=int, default=64, metavar="N",
                        help="generated training pairs (default: 64)")
    parser.add_argument("--test-pairs", type=int, default=8, metavar="N",
                        help="generated held-out pairs (default: 8)")
    parser.add_argument("--steps", type=int, default=30, metavar="N",
                        help="respaced sampling steps (default: 30)")
    parser.add_argument("--motion-strength", type=float, default=4.0, metavar="S",
                        help="scale of B's random misalignment (see make-data; default: 4, "
                             "about 1.9 px on average at 96 px)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.add_argument(
        "--config", default=shipped_config("tiny"), metavar="FILE[:ARG]",
        help="the config the demo trains (default: configs/tiny.py); the demo sets its data, "
             "training steps and sampling steps, then --config.FIELD=VALUE overrides any field")
    parser.set_defaults(run=run)


def run(args):
    from difffccf_jax.tools import demo

    demo.run_demo(args.out, task=args.task, train_steps=args.train_steps,
                  image_size=args.image_size, train_pairs=args.train_pairs,
                  test_pairs=args.test_pairs,
                  sampling_steps=args.steps, seed=args.seed,
                  motion_strength=args.motion_strength, crop_size=args.crop_size,
                  config_spec=args.config, overrides=args.config_overrides,
                  command="difffccf " + shlex.join(sys.argv[1:]))
