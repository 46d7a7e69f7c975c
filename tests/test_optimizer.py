"""The training update through optax (`train.make_optimizer`): the same numbers as AdamW
followed by the deformation head's scale and p - lr u written by hand, and a checkpoint whose
optimiser state has the hand-written update's layout refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from difffccf_jax import parallel
from difffccf_jax.errors import UserError
from difffccf_jax.model import checkpoints
from difffccf_jax.training import train

RATES = (1e-3, 1e-3, 5e-4, 2.5e-4)  # a step decay over four steps


def small_tree(seed):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {"encoder": {"kernel": normal(3, 3, 2, 4), "bias": normal(4)},
            "deformation_head": {"kernel": normal(3, 3, 4, 2), "bias": normal(2)},
            "noise_head": {"scale": normal(4)}}


def optim(grad_clip, factor):
    return ConfigDict(dict(learning_rate=RATES[0], weight_decay=1e-2, grad_clip=grad_clip,
                           registration_lr_factor=factor))


def hand_written_steps(config, params, grads):
    """The update before optax carried it: AdamW without its rate, the head's updates times
    the factor, then p - lr u."""
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    tx = optax.chain(*parts, optax.scale_by_adam(), optax.add_decayed_weights(config.weight_decay))
    state = tx.init(params)

    @jax.jit
    def step(params, state, grad, rate):
        updates, state = tx.update(grad, state, params)
        updates = dict(updates, deformation_head=jax.tree.map(
            lambda u: config.registration_lr_factor * u, updates["deformation_head"]))
        return jax.tree.map(lambda p, u: p - rate * u, params, updates), state

    for grad, rate in zip(grads, RATES):
        params, state = step(params, state, grad, jnp.float32(rate))
    return params


def optax_steps(config, params, grads):
    tx = train.make_optimizer(config)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grad, rate):
        updates, state = tx.update(grad, train.set_learning_rate(state, rate), params)
        return optax.apply_updates(params, updates), state

    for grad, rate in zip(grads, RATES):
        params, state = step(params, state, grad, jnp.float32(rate))
    return params


@pytest.mark.parametrize("grad_clip, factor", [(0.0, 3.0), (0.5, 1.0)])
def test_optax_update_equals_the_hand_written_one(grad_clip, factor):
    params = small_tree(0)
    grads = [small_tree(seed) for seed in range(1, 1 + len(RATES))]
    config = optim(grad_clip, factor)
    expected = hand_written_steps(config, params, grads)
    got = optax_steps(config, params, grads)
    for path_leaf, want in zip(jax.tree_util.tree_leaves_with_path(got),
                               jax.tree.leaves(expected)):
        np.testing.assert_array_equal(path_leaf[1], want,
                                      err_msg=jax.tree_util.keystr(path_leaf[0]))
    # the head moved by its own rate: its step differs from the same update at factor 1
    same = optax_steps(optim(grad_clip, 1.0), params, grads)
    head_moved = not np.allclose(got["deformation_head"]["kernel"],
                                 same["deformation_head"]["kernel"])
    assert head_moved == (factor != 1.0)
    np.testing.assert_array_equal(got["encoder"]["kernel"], same["encoder"]["kernel"])


def test_a_checkpoint_of_the_hand_written_layout_is_refused(tmp_path, paper_config_path):
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.training import weighting

    config = load_config(paper_config_path)
    params = small_tree(0)
    policy = weighting.init_policy(weighting.settings_from_config(
        config.weighting, config.loss.weights, 10))

    def state(opt_state):
        return train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=opt_state, ema_params=None, policy=policy,
                                rng=jax.random.PRNGKey(0))

    old_tx = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(1e-2))
    manager = checkpoints.open_manager(str(tmp_path))
    checkpoints.save(manager, 1, train.state_to_items(state(old_tx.init(params))), {"epoch": 1})
    template = state(train.make_optimizer(config.optim).init(params))
    mesh = parallel.make_mesh(jax.devices()[:1])
    with pytest.raises(UserError, match="opt_state.*older layout.*train.init_params"):
        train.restore_state(manager, 1, template, mesh)
    restored, progress = train.restore_state(
        manager, 1, state(old_tx.init(params)), mesh)  # the old layout reads as it was saved
    assert progress["epoch"] == 1 and int(restored.opt_state[0].count) == 0
    manager.close()
