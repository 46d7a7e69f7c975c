"""Subcommands of the `difffccf` CLI, one module each (see difffccf_jax/cli.py)."""
