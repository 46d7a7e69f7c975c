"""`difffccf export`: a training run's checkpoint as a small params-only checkpoint to share.

    difffccf export --checkpoint RUN/checkpoints --out MODEL

The latest step's parameters (the EMA copy when the run kept one, as `fuse` would use) and the
run's config; no optimiser state, weighting policy or progress record, so the result is about a
third of the run's step. The config's data paths (data.root, data.eval_root) name the trainer's
folders, which a user of the model does not have, and are cleared. `fuse` and `train`
(config.train.init_params) accept the written checkpoint.
"""

from difffccf_jax.errors import UserError

TRAINING_PATHS = ("root", "eval_root")  # config.data fields that name the trainer's folders


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="a run's checkpoint as a small params-only checkpoint to share",
        description="Write the latest parameters of a training run (EMA when kept) and its "
                    "config, without optimiser state or data paths, as a checkpoint for fuse.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="the run's checkpoint directory (RUN/checkpoints)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="checkpoint directory to create (must be new or empty)")
    parser.set_defaults(run=run)


def shareable_config(config):
    """A copy of `config` with the data paths of TRAINING_PATHS cleared."""
    config = config.copy_and_resolve_references()
    for field in TRAINING_PATHS:
        config.data[field] = ""
    return config


def run(args):
    import os

    from difffccf_jax.model import checkpoints

    if os.path.realpath(args.out) == os.path.realpath(args.checkpoint):
        raise UserError(f"--out {args.out}: expected a new directory, not the run's own")
    config, params = checkpoints.load_for_inference(args.checkpoint)
    checkpoints.write_params_checkpoint(args.out, shareable_config(config), params)
    print(f"exported the parameters of {args.checkpoint} to {args.out}")
