"""Mixed precision: with model.dtype bfloat16 the real training step (train.py, all losses)
computes the network in bfloat16 while parameters, optimiser state and every loss term stay
float32, and its losses follow float32 training over a few steps.

Both runs take the same generated batch, keys and initial parameters (the tiny config shrunk
to 16 px, two levels of one residual block each, as in test_fuse.py; one device); their steps
are compiled at XLA optimisation level 0 (train.compile_step's fast mode) to keep the test
short.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import parallel
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, layouts
from difffccf_jax.training import train

pytestmark = pytest.mark.slow  # two compilations of the real step

STEPS = 3
# The tiny config made smaller still: every loss term and the whole step as in training.
SMALL = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"),
         ("data.image_size", "16"), ("loss.registration_size", "16"),
         ("model.deformation_features", "(8, 16)"), ("data.batch_size", "2"))
# bfloat16 rounds to 8 bits of mantissa (2^-9 relative); summed over pixels and rows, the
# terms of 4 steps differed from float32 training by at most 0.13 % (the quality term), the
# near-zero smoothness term by 6e-5 absolutely.
RELATIVE_TOLERANCE, ABSOLUTE_TOLERANCE = 0.01, 1e-3


class Trained(NamedTuple):
    records: list  # per step, the metrics on the host
    initial: Any  # TrainState before the first step
    final: Any  # TrainState after STEPS steps
    program: str  # the compiled step's HLO text


def train_a_few_steps(config_path, root, dtype, initial=None):
    """Trained: STEPS steps of the real step on one batch, with model.dtype `dtype`, from
    `initial` (a TrainState; None: a fresh one, train.new_state)."""
    config = load_config(config_path, SMALL + (("data.root", root), ("model.dtype", dtype)))
    mesh = parallel.make_mesh(jax.devices()[:1])
    run = train.setup_run(config, mesh)
    batch = next(run.batches["pet"])
    rules = run.rules["pet"]
    learning_rate = jnp.float32(config.optim.learning_rate)
    explore_steps = train.explore_steps_of(run, None)
    if initial is None:
        initial = train.new_state(run, config, mesh)
    else:  # this run's own fresh state would have the same float32 leaves (no compile needed)
        fresh = jax.eval_shape(run.create, jax.random.PRNGKey(config.seed))
        assert (jax.tree.map(lambda a: (a.shape, a.dtype), fresh)
                == jax.tree.map(lambda a: (a.shape, a.dtype), initial))
    state = initial
    step = train.compile_step(jax.jit(functools.partial(train.train_step, **run.step_options)),
                              (state, batch, rules, learning_rate, explore_steps), fast=True)
    records = []
    for _ in range(STEPS):
        state, metrics = step(state, batch, rules, learning_rate, explore_steps)
        records.append(jax.device_get(metrics))
    return Trained(records, initial, state, step.as_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config_path):
    root = str(tmp_path_factory.mktemp("pairs"))
    data = load_config(tiny_config_path, SMALL).data
    generator.write_task(root, layouts.layout_from_config(data, "pet"), data.batch_size,
                         data.image_size, seed=0)
    full = train_a_few_steps(tiny_config_path, root, "float32")
    # the same initial state (parameters, optimiser state, keys) for both: built once
    return {"float32": full,
            "bfloat16": train_a_few_steps(tiny_config_path, root, "bfloat16", full.initial)}


def loss_terms(records):
    return [{name: value for name, value in record.items() if name.startswith("loss")}
            for record in records]


def test_bfloat16_computes_the_network_in_bfloat16_and_keeps_float32_state(runs):
    low = runs["bfloat16"]
    assert "bf16" in low.program and "bf16" not in runs["float32"].program
    for tree in (low.final.params, low.final.opt_state):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)
                if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    for record in loss_terms(low.records):
        assert all(value.dtype == np.float32 and np.isfinite(value)
                   for value in record.values())
    assert int(low.final.step) == STEPS  # every step was finite, so every step was applied
    moved = jax.tree.map(lambda p, q: float(jnp.max(jnp.abs(p - q))), low.final.params,
                         low.initial.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_bfloat16_losses_follow_float32_training(runs):
    full, low = (loss_terms(runs[dtype].records) for dtype in ("float32", "bfloat16"))
    for step, (expected, actual) in enumerate(zip(full, low)):
        for name, value in expected.items():
            assert abs(actual[name] - value) <= (RELATIVE_TOLERANCE * abs(value)
                                                 + ABSOLUTE_TOLERANCE), (step, name)
    # the steps change the loss: the agreement is not of three copies of one number
    assert full[0]["loss"] != full[-1]["loss"]
