"""The adaptive loss-weight policy (SPEC section 7) against closed forms and NumPy oracles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax import weighting
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError


def make_settings(**overrides):
    values = dict(
        terms=("a", "b", "c"), reference_weights=(10.0, 1.0, 1.0),
        initial_references=(10.0, 100.0, 1000.0), enabled=True, reference_decay=0.95,
        baseline_decay=0.9, learning_rate=1e-2, std_explore=0.3, std_stable=0.05,
        entropy_explore=1e-2, entropy_stable=1e-4, explore_steps=100, trust_bound=0.1,
        trust_bound_min=1e-3, trust_bound_max=1.0, trend_window=100, loss_trend_window=10)
    values.update(overrides)
    return weighting.PolicySettings(**values)


def test_settings_from_paper_config(paper_config_path):
    config = load_config(paper_config_path)
    settings = weighting.settings_from_config(config.weighting, config.loss.weights, 1000)
    assert settings.terms == tuple(config.loss.weights.keys())
    index = settings.terms.index("mi")
    assert settings.initial_references[index] == 1e5
    assert settings.reference_weights[settings.terms.index("noise")] == 10.0
    assert settings.explore_steps == 300
    del config.weighting.initial_references["mi"]
    with pytest.raises(UserError, match="initial_references"):
        weighting.settings_from_config(config.weighting, config.loss.weights, 1000)


def test_init_mean_gives_reference_weights_and_normalise_keeps_sum():
    settings = make_settings(reference_weights=(10.0, 0.0, 2.0))
    state = weighting.init_policy(settings)
    np.testing.assert_allclose(weighting.normalise(settings, state.mean), [10.0, 0.0, 2.0],
                               rtol=1e-6)
    log_w = jnp.array([0.3, 5.0, -1.0])
    w = np.asarray(weighting.normalise(settings, log_w))
    expected = np.exp([0.3, -1.0]) / np.exp([0.3, -1.0]).sum() * 12.0
    np.testing.assert_allclose(w[[0, 2]], expected, rtol=1e-6)
    assert w[1] == 0.0  # a term with reference weight 0 stays off


def test_anneal_is_log_linear_from_exploration_to_stability():
    settings = make_settings()
    std0, ent0 = weighting.anneal(settings, 0)
    std_mid, ent_mid = weighting.anneal(settings, 50)
    std_end, ent_end = weighting.anneal(settings, 100)
    std_late, _ = weighting.anneal(settings, 10_000)
    np.testing.assert_allclose([std0, ent0], [0.3, 1e-2], rtol=1e-6)
    np.testing.assert_allclose([std_mid, ent_mid], [math.sqrt(0.3 * 0.05), 1e-3], rtol=1e-5)
    np.testing.assert_allclose([std_end, ent_end, std_late], [0.05, 1e-4, 0.05], rtol=1e-5)


def test_slopes_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=12).astype(np.float32)
    buffer = jnp.zeros(20)
    for v in values:
        buffer = weighting._push(buffer, v)
    count = jnp.asarray(len(values))
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    np.testing.assert_allclose(weighting.least_squares_slope(buffer, count), slope, rtol=1e-4)
    np.testing.assert_allclose(weighting.mean_slope(buffer, count), np.mean(np.diff(values)),
                               rtol=1e-5)
    small = weighting._push(jnp.zeros(5), 3.0)
    assert weighting.mean_slope(small, jnp.asarray(1)) == 0.0
    assert weighting.least_squares_slope(small, jnp.asarray(1)) == 0.0


def numpy_reward(references, losses, weights, history):
    """The published recipe written out in NumPy (float64)."""
    ratios = losses / references
    total = float(np.dot(weights, losses))
    recent = np.append(history, total)
    trend = np.mean(np.diff(recent)) if len(recent) > 1 else 0.0
    return (-np.log(total + 1e-8) + 0.3 * -np.std(ratios)
            + 0.2 * (1.0 if abs(trend) < 0.1 else -0.5))


def test_update_tracks_references_and_reward_like_the_recipe():
    settings = make_settings(loss_trend_window=4)
    state = weighting.init_policy(settings)
    rng = np.random.default_rng(1)
    references = np.array(settings.initial_references)
    history = []
    for step in range(6):
        losses = rng.uniform(1, 50, size=3)
        log_w = np.asarray(state.mean) + 0.2 * rng.normal(size=3)
        weights = np.exp(log_w) / np.exp(log_w).sum() * 12.0
        references = 0.95 * references + 0.05 * losses
        expected = numpy_reward(references, losses, weights, history[-3:])
        history.append(float(np.dot(weights, losses)))
        state, info = weighting.update_policy(settings, state, jnp.asarray(log_w, jnp.float32),
                                              jnp.asarray(losses, jnp.float32), step)
        np.testing.assert_allclose(state.references, references, rtol=1e-5)
        np.testing.assert_allclose(info["policy/reward"], expected, rtol=1e-4, atol=1e-5)
    assert int(state.count) == 6


def test_a_term_that_stays_zero_keeps_the_policy_finite():
    """Term c is 0 at every step: its reference underflows to 0 (0.95^n) within 2000 steps;
    the reward treats its ratio as 0 and the policy stays finite."""
    settings = make_settings()
    losses = jnp.array([3.0, 2.0, 0.0])

    def step(state, i):
        state, info = weighting.update_policy(settings, state, state.mean, losses, i)
        return state, info["policy/reward"]

    state, rewards = jax.lax.scan(step, weighting.init_policy(settings), jnp.arange(2000))
    assert float(state.references[2]) == 0.0
    assert np.all(np.isfinite(np.asarray(rewards))) and np.all(np.isfinite(state.mean))
    ratios = np.array([3.0 / float(state.references[0]), 2.0 / float(state.references[1]), 0.0])
    total = float(np.dot(np.asarray(weighting.normalise(settings, state.mean)), losses))
    assert float(weighting.reward(settings, state.references, losses,
                                  jnp.full(10, total), 10)) == pytest.approx(
        -math.log(total + 1e-8) - 0.3 * ratios.std() + 0.2, rel=1e-5)


def test_first_update_is_reinforce_with_entropy_bonus_through_adam():
    """One Adam step of size lr in the direction of -sign(gradient), the gradient in closed
    form: -advantage (z - m) / std^2 - c dH/dm with dH/dm_k = -p_k (log p_k + H)."""
    settings = make_settings(trust_bound=1.0)
    state = weighting.init_policy(settings)
    state = state.replace(count=jnp.asarray(3), baseline=jnp.asarray(-5.0),
                          totals=jnp.asarray([9.0] * 10))
    mean = np.asarray(state.mean, np.float64)
    z = mean + np.array([0.1, -0.2, 0.05])
    losses = np.array([1.0, 2.0, 3.0])
    _, info = weighting.update_policy(settings, state, jnp.asarray(z, jnp.float32),
                                      jnp.asarray(losses, jnp.float32), 7)
    new_state, _ = weighting.update_policy(settings, state, jnp.asarray(z, jnp.float32),
                                           jnp.asarray(losses, jnp.float32), 7)
    advantage = float(info["policy/reward"]) + 5.0
    std, coef = (float(v) for v in weighting.anneal(settings, 7))
    p = np.exp(mean) / np.exp(mean).sum()
    entropy = -(p * np.log(p)).sum()
    grad = -advantage * (z - mean) / std ** 2 + coef * p * (np.log(p) + entropy)
    np.testing.assert_allclose(new_state.mean - mean, -1e-2 * np.sign(grad), atol=1e-6)
    np.testing.assert_allclose(info["policy/advantage"], advantage, rtol=1e-6)


def test_trust_bound_clips_the_step_and_follows_the_reward_trend():
    settings = make_settings(learning_rate=1.0, trust_bound=0.01, trend_window=5)
    state = weighting.init_policy(settings)
    mean0 = np.asarray(state.mean)
    z = state.mean + jnp.array([0.3, -0.3, 0.3])
    # Falling total loss -> rising reward -> the bound widens by 10 % per step once two rewards
    # exist.
    bounds = []
    for step, scale in enumerate([8.0, 4.0, 2.0, 1.0]):
        previous = np.asarray(state.mean)
        state, info = weighting.update_policy(settings, state, z, jnp.ones(3) * scale, step)
        assert np.max(np.abs(np.asarray(state.mean) - previous)) <= float(bounds[-1] if bounds
                                                                          else 0.01) + 1e-7
        bounds.append(float(info["policy/trust_bound"]))
    np.testing.assert_allclose(bounds, 0.01 * 1.1 ** np.arange(0, 4), rtol=1e-5)
    assert not np.allclose(state.mean, mean0)
    # Rising total loss -> falling reward -> the bound narrows by 10 % per step until the floor.
    for step, scale in enumerate([4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 2 ** 14]):
        state, info = weighting.update_policy(settings, state, z, jnp.ones(3) * scale, step)
    assert np.polyfit(np.arange(5), np.array(state.rewards), 1)[0] < 0
    np.testing.assert_allclose(info["policy/trust_bound"], bounds[-1] * 1.1 * 0.9 ** 6,
                               rtol=1e-5)


def test_policy_learns_to_favour_the_cheap_term_and_is_off_when_disabled():
    """A bandit: constant losses [1, 10, 10]; -log(total) rewards weight on term a."""
    losses = jnp.array([1.0, 10.0, 10.0])

    def run(settings):
        def step(state, i):
            log_w = weighting.sample_log_weights(settings, state, jax.random.PRNGKey(i), i)
            state, _ = weighting.update_policy(settings, state, log_w, losses, i)
            return state, weighting.normalise(settings, log_w)
        return jax.lax.scan(step, weighting.init_policy(settings), jnp.arange(300))

    settings = make_settings(reference_weights=(1.0, 1.0, 1.0), initial_references=(1.0,) * 3)
    state, weights = run(settings)
    final = weighting.normalise(settings, state.mean)
    assert float(final[0]) > 1.2 and float(final[1]) < 1.0 and float(final[2]) < 1.0  # from 1, 1, 1
    np.testing.assert_allclose(weights.sum(axis=1), 3.0, rtol=1e-5)
    off = settings._replace(enabled=False)
    state_off, weights_off = run(off)
    np.testing.assert_allclose(weights_off, np.ones((300, 3)), rtol=1e-6)
    np.testing.assert_array_equal(state_off.mean, weighting.init_policy(off).mean)
