"""`difffccf demo`: the whole method end to end on generated data, in a few minutes on a CPU."""

import shlex
import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="generate data, train, fuse, evaluate and write a report (minutes, CPU)",
        description="Generate misaligned pairs, train the tiny configuration for a bounded "
                    "time, fuse held-out pairs, compare with classical baselines, and write "
                    "figures, tables and report.md into --out.")
    parser.add_argument("--task", default="pet", choices=("pet", "spect", "ct", "gfp", "adni"),
                        help="which kind of pair to generate and fuse (default: pet)")
    parser.add_argument("--out", default="demo_out", metavar="DIR",
                        help="output folder, new or empty (default: demo_out)")
    parser.add_argument("--minutes", type=float, default=4.0, metavar="M",
                        help="training time budget in minutes (default: 4)")
    parser.add_argument("--size", type=int, default=32, metavar="PX",
                        help="image side in pixels (default: 32: about 1000 training steps in "
                             "4 minutes on 2 CPU cores)")
    parser.add_argument("--train-pairs", type=int, default=32, metavar="N",
                        help="generated training pairs (default: 32)")
    parser.add_argument("--test-pairs", type=int, default=6, metavar="N",
                        help="generated held-out pairs (default: 6)")
    parser.add_argument("--steps", type=int, default=30, metavar="N",
                        help="respaced sampling steps (default: 30)")
    parser.add_argument("--motion-strength", type=float, default=4.0, metavar="S",
                        help="scale of B's random misalignment (see make-data; default: 4, "
                             "about 0.65 px on average at 32 px)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.set_defaults(run=run)


def run(args):
    from difffccf_jax import demo

    demo.run_demo(args.out, task=args.task, minutes=args.minutes, image_size=args.size,
                  train_pairs=args.train_pairs, test_pairs=args.test_pairs,
                  sampling_steps=args.steps, seed=args.seed,
                  motion_strength=args.motion_strength,
                  command="difffccf " + shlex.join(sys.argv[1:]))
