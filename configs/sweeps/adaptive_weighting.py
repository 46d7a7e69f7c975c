"""Adaptive loss weighting (SPEC section 7) on versus off, each with two seeds.

    difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:paper --workdir runs/weighting \
        --launcher slurm --config.data.root=DATA
"""

import os

from difffccf_jax.config_cli import load_config_file
from difffccf_jax.sweeps import product

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def get_config(arg=None):
    """The base config: `tiny` (default) or `paper`."""
    return load_config_file(os.path.join(CONFIGS, f"{arg or 'tiny'}.py"))


def get_sweep(arg=None):
    return product(("weighting.enabled", [True, False]), ("seed", [0, 1]))
