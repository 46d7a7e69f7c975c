"""Number of respaced sampling steps (docs/method.md section 6) for one trained configuration.

    difffccf sweep --sweep configs/sweeps/sampling_steps.py:paper --workdir runs/steps \
        --launcher slurm --gpus-per-node 8 --config.data.batch_size=32 --config.data.root=DATA
"""

import os

from difffccf_jax.config_cli import load_config_file
from difffccf_jax.tools.sweeps import zipped

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def get_config(arg=None):
    """The base config: `tiny` (default) or `paper`."""
    return load_config_file(os.path.join(CONFIGS, f"{arg or 'tiny'}.py"))


def get_sweep(arg=None):
    if get_config(arg).diffusion.steps >= 2000:
        return zipped(("sampling.steps", [10, 30, 60, 100, 250, 2000]))
    return zipped(("sampling.steps", [6, 12, 24, 48]))
