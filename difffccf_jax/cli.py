"""The `difffccf` command: one entry point, one module per subcommand under commands/.

Each command module has `register(subparsers)`, which adds its parser and sets `run`. Modules
import their heavy dependencies inside `run`, so `difffccf --help` stays fast.
"""

import argparse
import importlib
import os
import sys

from difffccf_jax.config_cli import SLURM_PREFIX, split_overrides
from difffccf_jax.errors import UserError

COMMAND_MODULES = (
    "difffccf_jax.commands.demo",
    "difffccf_jax.commands.registration",
    "difffccf_jax.commands.sweep",
    "difffccf_jax.commands.show_config",
    "difffccf_jax.commands.model_summary",
    "difffccf_jax.commands.make_data",
    "difffccf_jax.commands.evaluate",
    "difffccf_jax.commands.evaluate_denoising",
    "difffccf_jax.commands.convert_torch",
    "difffccf_jax.commands.export",
    "difffccf_jax.commands.train",
    "difffccf_jax.commands.fuse",
    "difffccf_jax.commands.benchmark",
)


CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def default_cache_dir(environ):
    """Where the command keeps JAX's persistent compilation cache:
    $XDG_CACHE_HOME/difffccf_jax/jax, else ~/.cache/difffccf_jax/jax."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "difffccf_jax", "jax")


def use_compilation_cache(environ):
    """Points JAX's persistent compilation cache at `default_cache_dir` unless the user's
    JAX_COMPILATION_CACHE_DIR is set (a folder; empty: no cache), so that the second run of a
    command reuses the first one's compiled programs. Set in the environment, before JAX is
    imported, so that the processes a command starts use it too."""
    environ.setdefault(CACHE_VARIABLE, default_cache_dir(environ))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="difffccf",
        description="Diff-FCCF in JAX: fuse a grey anatomical image with a colour functional "
                    "image by an unsupervised multi-task diffusion network.",
        epilog="Config fields can be overridden after --config FILE: --config.train.epochs=5.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    """Runs one subcommand; returns its exit status (2 for bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        overrides, rest = split_overrides(argv)
        slurm_fields, rest = split_overrides(rest, SLURM_PREFIX)
    except UserError as error:
        parser.error(str(error))
    args = parser.parse_args(rest)
    args.config_overrides = overrides
    if overrides and not hasattr(args, "config"):
        parser.error(f"'difffccf {args.command}' takes no --config.* overrides")
    if slurm_fields and not hasattr(args, "slurm_fields"):
        parser.error(f"'difffccf {args.command}' takes no {SLURM_PREFIX}* fields")
    args.slurm_fields = slurm_fields
    use_compilation_cache(os.environ)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"difffccf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
