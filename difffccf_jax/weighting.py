"""Exploration-to-stability adaptive loss weighting (SPEC section 7).

A Gaussian policy over the log-weights of the loss terms: each training step samples one weight
vector (normalised so that the weights keep the sum of the reference weights), and after the step
a reward computed from the losses updates the policy's mean by REINFORCE with a moving-average
baseline, through an optax optimiser. The spread and the entropy bonus anneal from an exploration
value to a stability value; the change of the mean per step is clipped to a trust bound that
widens or narrows by 10 % with the trend of the recent rewards.

Reward (the published recipe): exponential moving references of every loss (factor 0.95),
ratios r_k = loss_k / ref_k, balance = -std(r), trend = mean slope of the recent total losses,
reward = -log(total + 1e-8) + 0.3 * balance + 0.2 * (1 if |trend| < 0.1 else -0.5), where total
is this step's weighted total loss (clipped at 0 inside the log).

The entropy bonus is the entropy of the mean weights seen as a distribution over the terms
(softmax of the mean log-weights): with a scheduled spread the Gaussian's own entropy does not
depend on the mean, so this is the entropy that can keep weight spread over the terms early on.

Everything here is a pure function of arrays; `PolicySettings` holds the plain static values and
`PolicyState` is a PyTree that lives in the train state and in checkpoints. With the policy
switched off the weights are the fixed reference weights and the mean never moves, while the
reward is still tracked so that runs with and without the policy can be compared.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from difffccf_jax.errors import UserError

REWARD_BALANCE = 0.3
REWARD_TREND = 0.2
TREND_FLAT = 0.1  # |mean slope| of the total loss below this counts as stable
TRUST_WIDEN, TRUST_NARROW = 1.1, 0.9  # trust bound factors for a rising / falling reward trend


class PolicySettings(NamedTuple):
    """Static settings of the policy (plain Python values, hashable)."""
    terms: tuple  # loss term names, in the order of every [K] vector here
    reference_weights: tuple  # [K] fixed weights; their sum is kept by the policy
    initial_references: tuple  # [K] initial moving references of the losses
    enabled: bool
    reference_decay: float
    baseline_decay: float
    learning_rate: float
    std_explore: float
    std_stable: float
    entropy_explore: float
    entropy_stable: float
    explore_steps: int  # steps over which spread and entropy bonus anneal
    trust_bound: float  # initial bound on the change of a mean log-weight per step
    trust_bound_min: float
    trust_bound_max: float
    trend_window: int  # rewards whose trend adapts the trust bound
    loss_trend_window: int  # total losses whose mean slope enters the reward


@struct.dataclass
class PolicyState:
    """The policy's learnable and running state; every field is an array."""
    mean: jax.Array  # [K] mean log-weights
    opt_state: optax.OptState
    references: jax.Array  # [K] moving references of the losses
    baseline: jax.Array  # [] moving average of the reward
    trust_bound: jax.Array  # []
    rewards: jax.Array  # [trend_window] recent rewards, newest last
    totals: jax.Array  # [loss_trend_window] recent total losses, newest last
    count: jax.Array  # [] int32, updates done so far


def settings_from_config(weighting, loss_weights, total_steps):
    """PolicySettings from `config.weighting`, `config.loss.weights` and the run length."""
    terms = tuple(loss_weights.keys())
    missing = [t for t in terms if t not in weighting.initial_references]
    if missing:
        raise UserError(f"config.weighting.initial_references has no entry for {missing}; "
                        f"expected one per term of config.loss.weights {list(terms)}")
    weights = tuple(float(loss_weights[t]) for t in terms)
    if min(weights) < 0 or max(weights) <= 0:
        raise UserError(f"config.loss.weights must be >= 0 with at least one > 0, got "
                        f"{dict(zip(terms, weights))}")
    return PolicySettings(
        terms=terms,
        reference_weights=weights,
        initial_references=tuple(float(weighting.initial_references[t]) for t in terms),
        enabled=bool(weighting.enabled),
        reference_decay=float(weighting.reference_decay),
        baseline_decay=float(weighting.baseline_decay),
        learning_rate=float(weighting.policy_learning_rate),
        std_explore=float(weighting.std_explore),
        std_stable=float(weighting.std_stable),
        entropy_explore=float(weighting.entropy_explore),
        entropy_stable=float(weighting.entropy_stable),
        explore_steps=max(1, int(round(weighting.explore_fraction * total_steps))),
        trust_bound=float(weighting.trust_bound),
        trust_bound_min=float(weighting.trust_bound_min),
        trust_bound_max=float(weighting.trust_bound_max),
        trend_window=int(weighting.trend_window),
        loss_trend_window=int(weighting.loss_trend_window),
    )


def _active(settings):
    """[K] bool: the terms with a positive reference weight (the others stay at weight 0)."""
    return jnp.asarray(settings.reference_weights) > 0


def _optimizer(settings):
    return optax.adam(settings.learning_rate)


def init_policy(settings):
    """The policy state before training: mean at the log reference weights."""
    weights = jnp.asarray(settings.reference_weights, jnp.float32)
    mean = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), 0.0)
    return PolicyState(
        mean=mean,
        opt_state=_optimizer(settings).init(mean),
        references=jnp.asarray(settings.initial_references, jnp.float32),
        baseline=jnp.zeros((), jnp.float32),
        trust_bound=jnp.asarray(settings.trust_bound, jnp.float32),
        rewards=jnp.zeros((settings.trend_window,), jnp.float32),
        totals=jnp.zeros((settings.loss_trend_window,), jnp.float32),
        count=jnp.zeros((), jnp.int32),
    )


def anneal(settings, step):
    """(std, entropy coefficient) at `step`: log-linear from exploration to stability values
    over the first `explore_steps` steps, constant afterwards."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / settings.explore_steps, 0.0, 1.0)

    def interpolate(start, end):
        return jnp.exp((1 - progress) * math.log(start) + progress * math.log(end))

    return (interpolate(settings.std_explore, settings.std_stable),
            interpolate(settings.entropy_explore, settings.entropy_stable))


def normalise(settings, log_weights):
    """[K] weights exp(log_weights) over the active terms, scaled to the reference weights' sum."""
    active = _active(settings)
    shifted = jnp.where(active, log_weights, -jnp.inf)
    return jax.nn.softmax(shifted) * sum(settings.reference_weights)


def sample_log_weights(settings, state, key, step):
    """[K] log-weights for one training step: mean + std * N(0, 1), or the mean when off."""
    if not settings.enabled:
        return state.mean
    std, _ = anneal(settings, step)
    return state.mean + std * jax.random.normal(key, state.mean.shape, state.mean.dtype)


def _push(buffer, value):
    """The buffer shifted left by one with `value` appended (newest last)."""
    return jnp.concatenate([buffer[1:], jnp.reshape(value, (1,)).astype(buffer.dtype)])


def _valid(size, count):
    """[size] bool: the newest min(count, size) entries of a buffer filled by `_push`."""
    return jnp.arange(size) >= size - jnp.minimum(count, size)


def mean_slope(buffer, count):
    """Mean of successive differences of the valid (newest `count`) entries; 0 below two."""
    n = jnp.minimum(count, buffer.shape[0])
    first = buffer[buffer.shape[0] - jnp.maximum(n, 1)]
    return jnp.where(n >= 2, (buffer[-1] - first) / jnp.maximum(n - 1, 1), 0.0)


def least_squares_slope(buffer, count):
    """Slope of the least-squares line through the valid entries against their index."""
    valid = _valid(buffer.shape[0], count).astype(buffer.dtype)
    n = jnp.maximum(valid.sum(), 1.0)
    x = jnp.arange(buffer.shape[0], dtype=buffer.dtype)
    x_mean = (x * valid).sum() / n
    y_mean = (buffer * valid).sum() / n
    covariance = ((x - x_mean) * (buffer - y_mean) * valid).sum()
    variance = ((x - x_mean) ** 2 * valid).sum()
    return jnp.where(variance > 0, covariance / jnp.where(variance > 0, variance, 1.0), 0.0)


def reward(settings, references, losses, totals, count):
    """The published reward for one step.

    references: [K] moving references (already including this step); losses: [K] this step's
    loss terms; totals: recent total losses, newest (this step's) last; count: how many of
    `totals` are filled.
    """
    active = _active(settings)
    # A term that stays 0 (folding, say) drives its reference to 0 (float32 underflow after
    # ~1700 steps at decay 0.95): its ratio is then 0, not 0 / 0.
    unset = references == 0
    ratios = jnp.where(unset, 0.0, losses / jnp.where(unset, 1.0, references))
    k = active.sum()
    ratio_mean = jnp.where(active, ratios, 0.0).sum() / k
    balance = -jnp.sqrt(jnp.where(active, (ratios - ratio_mean) ** 2, 0.0).sum() / k)
    trend = mean_slope(totals, count)
    stability = jnp.where(jnp.abs(trend) < TREND_FLAT, 1.0, -0.5)
    fit = -jnp.log(jnp.maximum(totals[-1], 0.0) + 1e-8)
    return fit + REWARD_BALANCE * balance + REWARD_TREND * stability


def _entropy(settings, mean):
    """Entropy of softmax(mean) over the active terms."""
    active = _active(settings)
    log_p = jax.nn.log_softmax(jnp.where(active, mean, -jnp.inf))
    return -jnp.where(active, jnp.exp(log_p) * log_p, 0.0).sum()


def update_policy(settings, state, log_weights, losses, step):
    """The policy after one training step; returns (new state, dict of scalars to log).

    log_weights: [K] the sample that weighted this step; losses: [K] the step's loss terms.
    """
    losses = jax.lax.stop_gradient(losses.astype(jnp.float32))
    weights = normalise(settings, log_weights)
    total = (weights * losses).sum()
    count = state.count + 1
    decay = settings.reference_decay
    references = decay * state.references + (1 - decay) * losses
    totals = _push(state.totals, total)
    step_reward = reward(settings, references, losses, totals, count)
    baseline = jnp.where(state.count == 0, step_reward, state.baseline)
    advantage = step_reward - baseline
    std, entropy_coef = anneal(settings, step)
    active = _active(settings)

    def policy_loss(mean):
        log_prob = jnp.where(active, -0.5 * ((log_weights - mean) / std) ** 2, 0.0).sum()
        return -advantage * log_prob - entropy_coef * _entropy(settings, mean)

    mean, opt_state = state.mean, state.opt_state
    trust_bound = state.trust_bound
    rewards = _push(state.rewards, step_reward)
    if settings.enabled:
        grads = jax.grad(policy_loss)(mean)
        updates, opt_state = _optimizer(settings).update(grads, opt_state, mean)
        mean = mean + jnp.clip(updates, -trust_bound, trust_bound)
        trend = least_squares_slope(rewards, count)
        factor = jnp.where(trend > 0, TRUST_WIDEN, jnp.where(trend < 0, TRUST_NARROW, 1.0))
        trust_bound = jnp.clip(trust_bound * factor, settings.trust_bound_min,
                               settings.trust_bound_max)
    d = settings.baseline_decay
    new_state = PolicyState(
        mean=mean, opt_state=opt_state, references=references,
        baseline=d * baseline + (1 - d) * step_reward, trust_bound=trust_bound,
        rewards=rewards, totals=totals, count=count)
    info = {"policy/reward": step_reward, "policy/advantage": advantage,
            "policy/std": std if settings.enabled else jnp.zeros(()),
            "policy/entropy_coef": entropy_coef, "policy/trust_bound": trust_bound}
    return new_state, info
