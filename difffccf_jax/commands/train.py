"""`difffccf train`: trains a model, checkpointing and logging into a work directory."""

from difffccf_jax.commands.common import add_config_argument, config_from_args


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a model (resumes from the work directory's latest checkpoint)",
        description="Train Diff-FCCF on the configured data. Checkpoints, config.json, "
                    "metrics.jsonl and TensorBoard events go to --workdir; an existing "
                    "checkpoint there is resumed.")
    add_config_argument(parser)
    parser.add_argument("--workdir", required=True, help="folder for checkpoints and logs")
    parser.set_defaults(run=run)


def run(args):
    from difffccf_jax.training import stopping, train

    try:
        train.fit(config_from_args(args), args.workdir)
    except stopping.Preempted as stopped:
        # A requested stop, not a failure: the checkpoint is saved and the command resumes.
        print(stopped)
