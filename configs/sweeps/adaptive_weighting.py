"""Adaptive loss weighting (docs/method.md section 8) on versus off, each with two seeds.

    difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:paper --workdir runs/weighting \
        --launcher slurm --config.data.root=DATA

`:demo` is the demo's setting (tiny model, 96 px pairs, 32 px training crops, 2 minutes of
training per run, 30 sampling steps), a comparison that runs on a 2-core CPU in about 15 minutes:

    difffccf make-data --task pet --num 24 --size 96 --seed 11 --out DATA
    difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:demo --workdir runs/weighting \
        --launcher local --config.data.root=DATA
"""

import os

from difffccf_jax.config_cli import load_config_file
from difffccf_jax.sweeps import product

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEMO_MINUTES = 2.0


def get_config(arg=None):
    """The base config: `tiny` (default), `paper`, or `demo` (the demo's tiny setting)."""
    if arg == "demo":
        from difffccf_jax import demo

        return demo.demo_config("pet", image_size=96, minutes=DEMO_MINUTES, data_root="",
                                train_pairs=24, sampling_steps=30, crop_size=32)
    return load_config_file(os.path.join(CONFIGS, f"{arg or 'tiny'}.py"))


def get_sweep(arg=None):
    return product(("weighting.enabled", [True, False]), ("seed", [0, 1]))
