"""Exploration-to-stability adaptive loss weighting (docs/method.md section 8).

A Gaussian policy over the log-weights of the loss terms: each training step samples one weight
vector, and after the step a reward computed from the losses updates the policy's mean by
REINFORCE with a moving-average baseline, through an optax optimiser. The spread and the entropy
bonus anneal from an exploration value to a stability value; the change of the mean per step is
clipped to a trust bound that widens or narrows by 10 % with the trend of the recent rewards.

The published recipe and its flaw. The reward was -log(total + 1e-8) + 0.3 * balance
+ 0.2 * (1 if |trend| < 0.1 else -0.5), with exponential moving references of every loss
(factor 0.95), ratios r_k = loss_k / ref_k, balance = -std(r) and trend = mean slope of the
recent weighted total losses. Its first part depends on the weights being chosen: the policy
raises it without any loss going down by moving weight onto the term whose value is smallest
(measured: within 800 steps the smoothness weight rose from 30 to ~53 while the noise and
quality weights fell to ~0, and the network stopped learning to denoise and to fuse).

What this project does instead:
- Reward = progress + 0.3 * balance + 0.2 * stability, none of which reads the weights.
  progress = sum_k w_k (ref_k - loss_k) / sum_k w_k (|ref_k| + |loss_k|), with w_k the fixed
  reference weights and ref_k the moving references before this step: the relative decrease of
  the total loss under the reference weights against its recent level. It counts a term by its
  share of that total (per-term relative decreases weighted by the reference weights alone would
  let smoothness, weight 30 on a small value, decide most of the reward); it lies in [-1, 1], so
  a term that falls to 0 adds at most its share, one that stays 0 adds nothing once its
  reference has decayed, and all-zero counts as 0; and it keeps its sign for negative terms (MI
  enters as -MI). balance is the published -std(r); stability is the published step function of
  the trend, the trend taken of the same fixed-weight total.
- Credit goes to the sample that caused the reward. A step's losses are computed before its
  weights change the parameters, so they say nothing about that step's sample; the reward of
  step t is credited to the sample of step t - 1 (whose score the state keeps).
- Bounds. Every applied weight lies in [min_factor, max_factor] * its reference weight, and the
  weights keep the sum of the reference weights: exp(log-weights) times one common factor (found
  by bisection), each clipped to its bounds (`normalise`). Terms with reference weight 0 stay 0.
  After every update the mean moves (within the trust bound) towards the log of the weights it
  stands for, so it neither leaves the bounds nor drifts along the common shift that the
  normalisation ignores.
- The entropy bonus is the entropy of the mean weights seen as a distribution over the terms
  (softmax of the mean log-weights), taken relative to the reference weights: -KL(softmax(mean)
  || reference weights / their sum). The plain entropy is largest at equal weights and would
  pull every weight towards the same value whatever the losses do (the reference weights span
  1 to 30); relative to the references the bonus is largest at them. (With a scheduled spread
  the Gaussian's own entropy does not depend on the mean, so it could not play this role.)

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
BISECTION_STEPS = 40  # halvings of the bracket in `normalise`: far below float32 resolution


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
    min_factor: float  # every weight >= min_factor * its reference weight
    max_factor: float  # every weight <= max_factor * its reference weight


@struct.dataclass
class PolicyState:
    """The policy's learnable and running state; every field is an array."""
    mean: jax.Array  # [K] mean log-weights
    opt_state: optax.OptState
    references: jax.Array  # [K] moving references of the losses
    baseline: jax.Array  # [] moving average of the reward
    trust_bound: jax.Array  # []
    rewards: jax.Array  # [trend_window] recent rewards, newest last
    totals: jax.Array  # [loss_trend_window] recent reference-weighted total losses, newest last
    score: jax.Array  # [K] d log-density / d mean of the last sample, at the mean that drew it
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
    min_factor, max_factor = float(weighting.min_factor), float(weighting.max_factor)
    if not 0 < min_factor <= 1:
        raise UserError(f"config.weighting.min_factor must be in (0, 1], got {min_factor}")
    if not 1 <= max_factor < math.inf:
        raise UserError(f"config.weighting.max_factor must be finite and >= 1, got {max_factor}")
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
        min_factor=min_factor,
        max_factor=max_factor,
    )


def _reference(settings):
    """[K] float32 reference weights."""
    return jnp.asarray(settings.reference_weights, jnp.float32)


def _active(settings):
    """[K] bool: the terms with a positive reference weight (the others stay at weight 0)."""
    return _reference(settings) > 0


def _log_reference(settings):
    """[K] log reference weights of the active terms, 0 for the others."""
    reference = _reference(settings)
    return jnp.where(reference > 0, jnp.log(jnp.where(reference > 0, reference, 1.0)), 0.0)


def _optimizer(settings):
    return optax.adam(settings.learning_rate)


def init_policy(settings):
    """The policy state before training: mean at the log reference weights."""
    mean = _log_reference(settings)
    return PolicyState(
        mean=mean,
        opt_state=_optimizer(settings).init(mean),
        references=jnp.asarray(settings.initial_references, jnp.float32),
        baseline=jnp.zeros((), jnp.float32),
        trust_bound=jnp.asarray(settings.trust_bound, jnp.float32),
        rewards=jnp.zeros((settings.trend_window,), jnp.float32),
        totals=jnp.zeros((settings.loss_trend_window,), jnp.float32),
        score=jnp.zeros_like(mean),
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


def weight_bounds(settings):
    """([K], [K]) the least and greatest weight of every term: the factors times its reference
    weight (both 0 for a term with reference weight 0)."""
    reference = _reference(settings)
    return settings.min_factor * reference, settings.max_factor * reference


def normalise(settings, log_weights):
    """[K] weights: s * exp(log_weights), each clipped to its `weight_bounds`, with the one
    factor s > 0 that makes them sum to the reference weights' sum; 0 for inactive terms.

    The sum of the clipped weights falls continuously from max_factor to min_factor times the
    target as log s runs over the bracket below, so bisection finds s; the clip makes the
    bounds hold exactly whatever s is.
    """
    reference = _reference(settings)
    active = reference > 0
    low, high = weight_bounds(settings)
    offsets = jnp.where(active, log_weights - _log_reference(settings), 0.0)
    target = sum(settings.reference_weights)

    def weights(log_scale):
        return jnp.where(active, jnp.clip(reference * jnp.exp(offsets + log_scale), low, high),
                         0.0)

    def bisect(_, bracket):
        lower, upper = bracket  # weights(lower) sums to <= target, weights(upper) to >= target
        middle = 0.5 * (lower + upper)
        heavy = weights(middle).sum() >= target
        return jnp.where(heavy, lower, middle), jnp.where(heavy, middle, upper)

    bracket = (math.log(settings.min_factor) - jnp.where(active, offsets, -jnp.inf).max(),
               math.log(settings.max_factor) - jnp.where(active, offsets, jnp.inf).min())
    lower, upper = jax.lax.fori_loop(0, BISECTION_STEPS, bisect, bracket)
    return weights(0.5 * (lower + upper))


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


def reference_total(settings, losses):
    """[] the total loss under the fixed reference weights (what the trend follows)."""
    return (_reference(settings) * losses).sum()


def progress(settings, references, losses):
    """[] sum_k w_k (ref_k - loss_k) / sum_k w_k (|ref_k| + |loss_k|), w the reference weights:
    the relative decrease of the total loss under the reference weights against its recent
    level, in [-1, 1] (0 when every term and reference is 0)."""
    weights = _reference(settings)
    scale = (weights * (jnp.abs(references) + jnp.abs(losses))).sum()
    return jnp.where(scale > 0, (weights * (references - losses)).sum()
                     / jnp.where(scale > 0, scale, 1.0), 0.0)


def reward(settings, references, losses, totals, count):
    """The reward for one step; it does not depend on the weights that weighted the step.

    references: [K] moving references of the steps before this one; losses: [K] this step's
    loss terms; totals: recent `reference_total`s, newest (this step's) last; count: how many of
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
    return (progress(settings, references, losses) + REWARD_BALANCE * balance
            + REWARD_TREND * stability)


def _relative_entropy(settings, mean):
    """-KL(softmax(mean) || reference weights / their sum) over the active terms; 0 at the
    reference weights, negative elsewhere."""
    active = _active(settings)
    log_p = jax.nn.log_softmax(jnp.where(active, mean, -jnp.inf))
    log_q = _log_reference(settings) - math.log(sum(settings.reference_weights))
    return -jnp.where(active, jnp.exp(log_p) * (log_p - log_q), 0.0).sum()


def update_policy(settings, state, log_weights, losses, step):
    """The policy after one training step; returns (new state, dict of scalars to log).

    log_weights: [K] the sample that weighted this step; losses: [K] the step's loss terms,
    computed before that sample changed the parameters. The step's reward is credited to the
    previous step's sample (the first step's reward to none).
    """
    losses = jax.lax.stop_gradient(losses.astype(jnp.float32))
    count = state.count + 1
    totals = _push(state.totals, reference_total(settings, losses))
    step_reward = reward(settings, state.references, losses, totals, count)
    decay = settings.reference_decay
    references = decay * state.references + (1 - decay) * losses
    baseline = jnp.where(state.count == 0, step_reward, state.baseline)
    advantage = step_reward - baseline
    std, entropy_coef = anneal(settings, step)
    active = _active(settings)

    def policy_loss(mean):
        # REINFORCE through the stored score: its gradient is -advantage * score.
        return (-advantage * jnp.vdot(state.score, mean)
                - entropy_coef * _relative_entropy(settings, mean))

    mean, opt_state = state.mean, state.opt_state
    trust_bound = state.trust_bound
    rewards = _push(state.rewards, step_reward)
    if settings.enabled:
        grads = jax.grad(policy_loss)(mean)
        updates, opt_state = _optimizer(settings).update(grads, opt_state, mean)
        # The mean moves towards the log of the weights that the updated mean stands for.
        stands_for = jnp.log(normalise(settings, mean + updates))
        mean = jnp.where(active, mean + jnp.clip(stands_for - mean, -trust_bound, trust_bound),
                         0.0)
        trend = least_squares_slope(rewards, count)
        factor = jnp.where(trend > 0, TRUST_WIDEN, jnp.where(trend < 0, TRUST_NARROW, 1.0))
        trust_bound = jnp.clip(trust_bound * factor, settings.trust_bound_min,
                               settings.trust_bound_max)
    score = jnp.where(active, (log_weights - state.mean) / std ** 2, 0.0)
    d = settings.baseline_decay
    new_state = PolicyState(
        mean=mean, opt_state=opt_state, references=references,
        baseline=d * baseline + (1 - d) * step_reward, trust_bound=trust_bound,
        rewards=rewards, totals=totals, score=score, count=count)
    info = {"policy/reward": step_reward, "policy/advantage": advantage,
            "policy/std": std if settings.enabled else jnp.zeros(()),
            "policy/entropy_coef": entropy_coef, "policy/trust_bound": trust_bound}
    return new_state, info
