"""`difffccf show-config`: prints the resolved config (file plus overrides)."""

from difffccf_jax.commands.common import add_config_argument, config_from_args


def register(subparsers):
    parser = subparsers.add_parser(
        "show-config", help="print a config with command-line overrides applied",
        description="Print the config that a command would use, after --config.* overrides.")
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args):
    print(config_from_args(args).to_yaml(), end="")
