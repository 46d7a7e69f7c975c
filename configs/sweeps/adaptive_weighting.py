"""Adaptive loss weighting (docs/method.md section 8) on versus off, each with three seeds.

    difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:paper --workdir runs/weighting \
        --launcher slurm --gpus-per-node 8 --config.data.batch_size=32 --config.data.root=DATA

`:demo` is the demo's setting (tiny model, 96 px pairs, 32 px training crops, 30 sampling steps)
with a fixed number of training steps, so that policy on and off train equally long whatever
the machine's load; it runs on a 2-core CPU in about 30 minutes:

    difffccf make-data --task pet --num 24 --size 96 --seed 11 --out DATA
    difffccf make-data --task pet --num 12 --size 96 --seed 12 --out HELD_OUT
    difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:demo --workdir runs/weighting \
        --launcher local --config.data.root=DATA --config.data.eval_root=HELD_OUT
"""

import os

from difffccf_jax.config_cli import load_config_file
from difffccf_jax.tools.sweeps import product

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEMO_TRAIN_PAIRS = 24
DEMO_TRAIN_STEPS = 360  # 60 epochs of 6 steps of 4 pairs


def get_config(arg=None):
    """The base config: `tiny` (default), `paper`, or `demo` (the demo's tiny setting)."""
    if arg == "demo":
        from difffccf_jax.tools import experiment

        return experiment.training_config("pet", image_size=96, train_steps=DEMO_TRAIN_STEPS,
                                          data_root="", train_pairs=DEMO_TRAIN_PAIRS,
                                          sampling_steps=30, crop_size=32)
    return load_config_file(os.path.join(CONFIGS, f"{arg or 'tiny'}.py"))


def get_sweep(arg=None):
    return product(("weighting.enabled", [True, False]), ("seed", [0, 1, 2]))
