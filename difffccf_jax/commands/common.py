"""Arguments shared by several subcommands."""

from difffccf_jax.config_cli import load_config


def add_config_argument(parser, default=None):
    """Adds `--config FILE[:ARG]`; fields are overridden by `--config.a.b=VALUE` after it."""
    parser.add_argument(
        "--config", default=default, required=default is None, metavar="FILE[:ARG]",
        help="ml_collections config file (configs/paper.py, configs/tiny.py); override any "
             "field with --config.FIELD=VALUE")


def config_from_args(args):
    """The config named by --config with the command line's overrides applied."""
    return load_config(args.config, args.config_overrides)
