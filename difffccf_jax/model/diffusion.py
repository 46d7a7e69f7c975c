"""Gaussian diffusion maths (docs/method.md section 4): schedules, forward noising, x0 and the
posterior.

Tables are computed in float64 with NumPy (or, as the published code computes them, in float32:
`precision` TABLES_FLOAT32) and stored as float32 arrays in a `Schedule`; every function below is
a pure function of arrays and works under jit. `t` is always an index into the
schedule's tables; for a respaced schedule `schedule.timesteps[t]` is the original step index,
which is what the network must be called with.
"""

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from difffccf_jax.errors import UserError

MAX_BETA = 0.999
COSINE_OFFSET = 0.008
LOG_VARIANCE_FLOOR = 1e-20
TABLES_FLOAT64 = "float64"  # every table computed in float64, then stored in float32
TABLES_FLOAT32 = "float32"  # betas rounded to float32 first, every table computed in float32
TABLE_PRECISIONS = (TABLES_FLOAT64, TABLES_FLOAT32)


class Schedule(NamedTuple):
    """Per-step float32 tables of length S (S = T, or the number of kept steps when respaced)."""
    betas: jnp.ndarray
    log_alphas: jnp.ndarray  # log(1 - beta): keeps tiny betas and betas near 1 precise in float32
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    timesteps: jnp.ndarray  # int32, the original step index of each entry


def cosine_betas(num_steps):
    """Betas of the cosine schedule, float64 [T]: beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999)
    with abar(s) = cos((s + 0.008) / 1.008 * pi/2)^2."""
    def alpha_bar(s):
        return math.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), MAX_BETA)
                     for i in range(num_steps)], dtype=np.float64)


def linear_betas(num_steps):
    """Betas of the linear schedule, float64 [T]: 1e-4 to 2e-2 for T = 1000, scaled by 1000 / T
    (capped at 0.999, which only matters for T < 21)."""
    scale = 1000.0 / num_steps
    return np.minimum(np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64),
                      MAX_BETA)


def schedule_from_betas(betas, timesteps=None, precision=TABLES_FLOAT64):
    """Builds every table from betas [S], computed in `precision` (TABLES_FLOAT64 or
    TABLES_FLOAT32); `timesteps` [S] defaults to 0..S-1."""
    if precision not in TABLE_PRECISIONS:
        raise UserError(f"schedule table precision: expected one of {', '.join(TABLE_PRECISIONS)}, "
                        f"got {precision!r}")
    betas = np.asarray(betas, dtype=np.float64).astype(precision)
    if timesteps is None:
        timesteps = np.arange(len(betas))
    one = betas.dtype.type(1.0)
    alphas_cumprod = np.cumprod(one - betas)
    alphas_cumprod_prev = np.concatenate([[one], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    tables = dict(
        betas=betas,
        log_alphas=np.log1p(-betas),
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(one - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(one / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(one / alphas_cumprod - one),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(
            np.maximum(posterior_variance, betas.dtype.type(LOG_VARIANCE_FLOOR))),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (one - alphas_cumprod),
        posterior_mean_coef2=(one - alphas_cumprod_prev) * np.sqrt(one - betas)
        / (one - alphas_cumprod),
    )
    tables = {name: jnp.asarray(value, dtype=jnp.float32) for name, value in tables.items()}
    return Schedule(**tables, timesteps=jnp.asarray(timesteps, dtype=jnp.int32))


def make_schedule(kind, num_steps, precision=TABLES_FLOAT64):
    """The full schedule of `num_steps` steps; kind is 'cosine' (paper preset) or 'linear';
    tables computed in `precision` (`schedule_from_betas`)."""
    makers = dict(cosine=cosine_betas, linear=linear_betas)
    if kind not in makers:
        raise UserError(f"diffusion schedule: expected 'cosine' or 'linear', got {kind!r}")
    if int(num_steps) < 1:
        raise UserError(f"diffusion steps: expected a positive number, got {num_steps}")
    return schedule_from_betas(makers[kind](int(num_steps)), precision=precision)


def respace(schedule, use_steps, precision=TABLES_FLOAT64):
    """The schedule restricted to the entries `use_steps` (strictly increasing indices into
    `schedule`, i.e. original steps for a full schedule), with recomputed betas (their tables
    computed in `precision`, `schedule_from_betas`).

    Keeping steps k_0 < k_1 < ... gives beta_i = 1 - abar(k_i) / abar(k_{i-1}) (abar(k_{-1}) = 1),
    so every kept step has the same abar as before and the reverse process can jump between them.
    The ratio is recomputed in float64 as exp of the summed log_alphas of the merged steps, which
    stays precise for tiny betas and for betas close to 1.
    """
    steps = np.asarray(use_steps, dtype=np.int64)
    total = len(schedule.betas)
    if steps.ndim != 1 or len(steps) == 0:
        raise ValueError(f"use_steps: expected a non-empty 1-D list of steps, "
                         f"got shape {steps.shape}")
    if np.any(np.diff(steps) <= 0) or steps[0] < 0 or steps[-1] >= total:
        raise ValueError(f"use_steps: expected strictly increasing steps in 0..{total - 1}")
    log_alphas_cumprod = np.cumsum(np.asarray(schedule.log_alphas, dtype=np.float64))
    merged_log_alphas = np.diff(log_alphas_cumprod[steps], prepend=0.0)
    original = np.asarray(schedule.timesteps)[steps]
    return schedule_from_betas(-np.expm1(merged_log_alphas), timesteps=original,
                               precision=precision)


def respaced_steps(num_steps, count):
    """`count` steps of 0..num_steps-1, evenly strided (rounded) and including both ends
    (for example 100 of 2000: 0, 20, 40, 61, 81, ..., 1979, 1999)."""
    count = int(count)
    if not 1 <= count <= num_steps:
        raise UserError(f"sampling steps: expected 1..{num_steps} (the diffusion steps), "
                        f"got {count}")
    if count == 1:
        return np.array([num_steps - 1], dtype=np.int64)
    return np.round(np.linspace(0, num_steps - 1, count)).astype(np.int64)


def _at(table, t, ndim):
    """table[t] reshaped to [B, 1, ..., 1] to broadcast against an array of rank `ndim`."""
    values = table[t]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(schedule, x0, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [B, ...], t [B] int.
    Both sources are noised with the same `noise` (call once per source)."""
    return (_at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def predict_x0(schedule, x_t, t, eps):
    """The x0 implied by x_t and a noise estimate: sqrt(1/abar) x_t - sqrt(1/abar - 1) eps."""
    return (_at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def q_posterior(schedule, x0, x_t, t):
    """q(x_{t-1} | x_t, x0) as (mean [B, ...], variance [B, 1, ...], clipped log variance
    [B, 1, ...]); the log variance at t = 0 (variance 0) is clipped to log(1e-20)."""
    mean = (_at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
            + _at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
    return (mean, _at(schedule.posterior_variance, t, x_t.ndim),
            _at(schedule.posterior_log_variance_clipped, t, x_t.ndim))
