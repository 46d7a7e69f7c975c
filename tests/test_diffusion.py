"""Diffusion maths against float64 closed forms."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from difffccf_jax.model import diffusion
from difffccf_jax.errors import UserError

T = 2000


def uniform(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def cosine():
    return diffusion.make_schedule("cosine", T)


def closed_form_cosine_alphas_cumprod(steps):
    """abar_t = prod_{i<=t} (1 - beta_i) with the cosine betas, written out in float64."""
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    i = np.arange(steps, dtype=np.float64)
    betas = np.minimum(1 - f((i + 1) / steps) / f(i / steps), 0.999)
    return betas, np.cumprod(1 - betas)


def test_cosine_schedule_matches_closed_form(cosine):
    betas, abar = closed_form_cosine_alphas_cumprod(T)
    np.testing.assert_allclose(cosine.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(cosine.alphas_cumprod, abar, rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(cosine.log_alphas, np.float64)), 1 - betas,
                               rtol=1e-6)
    # Without the clip, abar_t = f((t+1)/T) / f(0): true for every step before the last.
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(cosine.alphas_cumprod[999], f(1000 / T) / f(0), rtol=1e-6)
    assert float(cosine.betas[-1]) == pytest.approx(0.999)
    assert cosine.betas.dtype == jnp.float32
    np.testing.assert_array_equal(cosine.timesteps, np.arange(T))


def test_linear_schedule_end_points():
    schedule = diffusion.make_schedule("linear", 500)
    np.testing.assert_allclose(schedule.betas[jnp.array([0, -1])], [2 * 1e-4, 2 * 0.02], rtol=1e-6)
    np.testing.assert_allclose(np.diff(np.asarray(schedule.betas, np.float64)),
                               (0.04 - 2e-4) / 499, rtol=1e-4)


def test_q_sample_is_closed_form_with_fixed_noise(cosine):
    x0 = uniform(0, (4, 8, 8, 1))
    noise = normal(1, x0.shape)
    t = jnp.array([0, 10, 1000, 1999])
    _, abar = closed_form_cosine_alphas_cumprod(T)
    expected = (np.sqrt(abar[t])[:, None, None, None] * np.asarray(x0, np.float64)
                + np.sqrt(1 - abar[t])[:, None, None, None] * np.asarray(noise, np.float64))
    np.testing.assert_allclose(diffusion.q_sample(cosine, x0, t, noise), expected, atol=2e-6)


def test_q_sample_statistics_and_shared_noise(cosine):
    """Over many noise draws x_t has mean sqrt(abar) x0 and variance 1 - abar; both sources
    noised with one eps differ by exactly sqrt(abar) (A - B)."""
    t = jnp.full((20000,), 700)
    a = jnp.full((20000, 1, 1, 1), 0.6)
    b = jnp.full((20000, 1, 1, 1), -0.2)
    noise = normal(2, a.shape)
    x_a = diffusion.q_sample(cosine, a, t, noise)
    x_b = diffusion.q_sample(cosine, b, t, noise)
    abar = float(closed_form_cosine_alphas_cumprod(T)[1][700])
    assert float(jnp.mean(x_a)) == pytest.approx(math.sqrt(abar) * 0.6, abs=0.02)
    assert float(jnp.var(x_a)) == pytest.approx(1 - abar, rel=0.03)
    np.testing.assert_allclose(x_a - x_b, math.sqrt(abar) * 0.8, rtol=1e-5)


def test_predict_x0_inverts_q_sample(cosine):
    x0 = uniform(3, (5, 6, 6, 1))
    noise = normal(4, x0.shape)
    t = jnp.array([0, 1, 300, 1200, 1800])
    x_t = diffusion.q_sample(cosine, x0, t, noise)
    np.testing.assert_allclose(diffusion.predict_x0(cosine, x_t, t, noise), x0, atol=2e-3)


def test_posterior_equals_gaussian_product(cosine):
    """q(x_{t-1} | x_t, x0) from multiplying N(x_t; sqrt(alpha) x_{t-1}, beta) by
    N(x_{t-1}; sqrt(abar_prev) x0, 1 - abar_prev), in float64."""
    betas, abar = closed_form_cosine_alphas_cumprod(T)
    t = np.array([1, 5, 400, 1500, 1999])
    x0 = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 1))
    x_t = np.random.default_rng(1).normal(size=(5, 4, 4, 1))
    beta, abar_prev = betas[t], abar[t - 1]
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    variance = 1 / precision
    mean = variance[:, None, None, None] * (
        (np.sqrt(abar_prev) / (1 - abar_prev))[:, None, None, None] * x0
        + (np.sqrt(1 - beta) / beta)[:, None, None, None] * x_t)
    got_mean, got_var, got_log_var = diffusion.q_posterior(
        cosine, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_var[:, 0, 0, 0], variance, rtol=1e-5)
    np.testing.assert_allclose(got_log_var[:, 0, 0, 0], np.log(variance), rtol=1e-5)
    # At t = 0 the posterior is x0 itself: zero variance, log variance clipped at log(1e-20).
    mean0, var0, log_var0 = diffusion.q_posterior(cosine, jnp.asarray(x0[:1], jnp.float32),
                                                  jnp.asarray(x_t[:1], jnp.float32),
                                                  jnp.array([0]))
    np.testing.assert_allclose(mean0, x0[:1], atol=1e-6)
    assert float(var0[0, 0, 0, 0]) == 0.0
    assert float(log_var0[0, 0, 0, 0]) == pytest.approx(math.log(1e-20), rel=1e-6)


def test_respace_all_steps_reproduces_schedule(cosine):
    respaced = diffusion.respace(cosine, np.arange(T))
    for name, table in cosine._asdict().items():
        np.testing.assert_allclose(getattr(respaced, name), table, rtol=1e-6, err_msg=name)


def test_respace_subset_keeps_alphas_cumprod(cosine):
    steps = diffusion.respaced_steps(T, 100)
    assert len(steps) == 100 and steps[0] == 0 and steps[-1] == T - 1
    assert set(np.diff(steps)) <= {20, 21}
    respaced = diffusion.respace(cosine, steps)
    _, abar = closed_form_cosine_alphas_cumprod(T)
    np.testing.assert_allclose(respaced.alphas_cumprod, abar[steps], rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(respaced.timesteps, steps)
    kept_prev = np.concatenate([[1.0], abar[steps[:-1]]])
    np.testing.assert_allclose(respaced.betas, 1 - abar[steps] / kept_prev, rtol=1e-5)
    np.testing.assert_allclose(respaced.alphas_cumprod_prev[1:], abar[steps[:-1]], rtol=1e-5,
                               atol=1e-12)
    # Respacing a respaced schedule composes: positions index the respaced tables.
    twice = diffusion.respace(respaced, np.arange(0, 100, 3))
    np.testing.assert_array_equal(twice.timesteps, steps[::3])
    np.testing.assert_allclose(twice.alphas_cumprod, abar[steps[::3]], rtol=1e-5, atol=1e-12)


def test_bad_schedule_requests_raise():
    with pytest.raises(UserError, match="cosine"):
        diffusion.make_schedule("quadratic", 10)
    with pytest.raises(UserError, match="1..50"):
        diffusion.respaced_steps(50, 51)
    with pytest.raises(ValueError, match="increasing"):
        diffusion.respace(diffusion.make_schedule("cosine", 10), [3, 2])
