"""`difffccf registration`: trains the registration on generated misaligned pairs and reports,
per held-out pair, the true and the predicted mean shift and the error before and after."""

import shlex
import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "registration", help="train on generated misaligned pairs and report how well the "
                             "network registers them (minutes, CPU)",
        description="Generate pairs whose B is moved by a rigid plus elastic head motion (mean "
                    "end-point error 2-4 px, true field saved), train the tiny configuration "
                    "for a bounded time (registration pass on the whole pairs, diffusion rows "
                    "on random windows), fuse the held-out pairs with registration off and on, "
                    "and write report.md: per pair the true and predicted mean shift and the "
                    "error before and after, their Pearson correlation, the mean errors, and "
                    "the fusion metrics off and on, with the classical rules applied to the "
                    "pairs as given.")
    parser.add_argument("--task", default="pet", choices=("pet", "spect", "ct", "gfp", "adni"),
                        help="which kind of pair (default: pet)")
    parser.add_argument("--out", default="registration_out", metavar="DIR",
                        help="output folder, new or empty (default: registration_out)")
    parser.add_argument("--minutes", type=float, default=12.0, metavar="M",
                        help="training time budget in minutes (default: 12)")
    parser.add_argument("--image-size", type=int, default=128, metavar="PX",
                        help="side of the generated pairs (default: 128)")
    parser.add_argument("--train-pairs", type=int, default=256, metavar="N",
                        help="generated training pairs (default: 256)")
    parser.add_argument("--test-pairs", type=int, default=12, metavar="N",
                        help="generated held-out pairs (default: 12)")
    parser.add_argument("--diffusion-crop", type=int, default=32, metavar="PX",
                        help="side of the random windows the diffusion rows train on "
                             "(config.loss.diffusion_crop; default: 32)")
    parser.add_argument("--registration-size", type=int, default=32, metavar="PX",
                        help="side the registration pass shrinks the pairs to "
                             "(config.loss.registration_size; default: 32)")
    parser.add_argument("--refine-steps", type=int, default=50, metavar="N",
                        help="steps of refinement of the network's field at sampling "
                             "(config.sampling.refine_steps; 0: the network alone; default: 50)")
    parser.add_argument("--steps", type=int, default=30, metavar="N",
                        help="respaced sampling steps (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.set_defaults(run=run)


def run(args):
    from difffccf_jax.tools import registration_check

    registration_check.run_registration_check(
        args.out, task=args.task, minutes=args.minutes, image_size=args.image_size,
        train_pairs=args.train_pairs, test_pairs=args.test_pairs,
        diffusion_crop=args.diffusion_crop, registration_size=args.registration_size,
        sampling_steps=args.steps, refine_steps=args.refine_steps, seed=args.seed,
        command="difffccf " + shlex.join(sys.argv[1:]))
