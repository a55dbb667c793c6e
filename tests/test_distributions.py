"""Closed forms against direct formulas in float64, Monte-Carlo estimates, and extreme inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import distributions


def test_bernoulli_log_prob_matches_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(5, 784))
    x = (rng.random((5, 784)) < 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    expected = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=-1)
    with jax.enable_x64(True):
        got = distributions.bernoulli_log_prob(jnp.asarray(x), jnp.asarray(logits))
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)


@pytest.mark.parametrize("logit", [-1e9, -200.0, -30.0, 30.0, 200.0, 1e9])
def test_bernoulli_log_prob_is_finite_and_exact_for_extreme_logits(logit):
    logits = jnp.full((2,), logit, dtype=jnp.float32)
    x = jnp.array([1.0, 0.0], dtype=jnp.float32)
    got = float(distributions.bernoulli_log_prob(x, logits))
    # log sigmoid(l) + log sigmoid(-l) = -|l| - 2 log(1 + exp(-|l|)), which is -|l| for |l| >= 30 in float32.
    assert np.isfinite(got)
    np.testing.assert_allclose(got, -abs(logit), rtol=1e-6)
    grad = jax.grad(lambda lg: distributions.bernoulli_log_prob(x, lg))(logits)
    tanh = np.tanh(np.float64(logit) / 2)  # the gradient is x - sigmoid(l), sigmoid(l) = (1 + tanh(l / 2)) / 2
    np.testing.assert_allclose(np.asarray(grad), [(1.0 - tanh) / 2, -(1.0 + tanh) / 2], rtol=1e-6, atol=1e-7)


def test_kl_matches_a_float64_monte_carlo_estimate():
    mean, logvar = np.array([0.5, -1.0, 2.0]), np.array([0.0, -1.5, 0.7])
    z = mean + np.exp(0.5 * logvar) * np.random.default_rng(0).normal(size=(400_000, 3))
    # log q - log p by direct NumPy formulas, not the library's.
    log_q = np.sum(-0.5 * np.log(2 * np.pi * np.exp(logvar)) - (z - mean) ** 2 / (2 * np.exp(logvar)), axis=1)
    log_p = np.sum(-0.5 * np.log(2 * np.pi) - z ** 2 / 2, axis=1)
    samples = log_q - log_p
    stderr = samples.std() / np.sqrt(len(samples))
    analytic = float(jnp.sum(distributions.gaussian_kl_per_dim(jnp.asarray(mean, jnp.float32),
                                                               jnp.asarray(logvar, jnp.float32))))
    assert abs(samples.mean() - analytic) < 4 * stderr
    np.testing.assert_allclose(analytic, 0.5 * np.sum(np.square(mean) + np.exp(logvar) - logvar - 1), rtol=1e-6)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    np.testing.assert_array_equal(distributions.gaussian_kl_per_dim(jnp.zeros(4), jnp.zeros(4)), np.zeros(4))
    assert np.all(np.asarray(distributions.gaussian_kl_per_dim(jnp.full(4, 0.1), jnp.zeros(4))) > 0.0)


def test_gaussian_log_prob_matches_direct_formula():
    z, mean, logvar = np.array([0.3, -2.0]), np.array([1.0, 0.5]), np.array([0.2, -0.4])
    var = np.exp(logvar)
    expected = np.sum(-0.5 * np.log(2 * np.pi * var) - (z - mean) ** 2 / (2 * var))
    with jax.enable_x64(True):
        got = distributions.gaussian_log_prob(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar))
        np.testing.assert_allclose(float(got), expected, rtol=1e-12)
        np.testing.assert_allclose(float(distributions.standard_normal_log_prob(jnp.asarray(z))),
                                   np.sum(-0.5 * np.log(2 * np.pi) - z ** 2 / 2), rtol=1e-12)


@pytest.mark.parametrize("logvar", [-30.0, -90.0, 0.0, 20.0])
def test_log_density_from_the_noise_is_exact_where_the_density_form_fails(logvar):
    # z = mean + sigma * eps with mean 3: in float32, z - mean loses the digits of sigma * eps (and for logvar < -88
    # exp(-logvar) overflows and meets a zero); from the noise the log-density is exact.
    mean = np.full(4, 3.0)
    eps = np.array([0.5, -1.2, 2.0, 0.1])
    logvars = np.full(4, logvar)
    exact = np.sum(-0.5 * (eps ** 2 + logvars + np.log(2 * np.pi)))  # float64, since (z - mean)^2 / sigma^2 = eps^2
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = float(distributions.gaussian_log_prob_of_noise(f32(eps), f32(logvars)))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    if logvar <= -30:  # the density form, for contrast: wrong digits or NaN
        z = distributions.reparameterize(f32(mean), f32(logvars), f32(eps))
        density = float(distributions.gaussian_log_prob(z, f32(mean), f32(logvars)))
        assert not np.isfinite(density) or abs(density - exact) > 1e-3 * abs(exact)


def test_reparameterize_has_the_right_moments_and_gradients():
    mean, logvar = jnp.array([1.0, -2.0]), jnp.array([0.0, 1.0])
    eps = jax.random.normal(jax.random.key(1), (200_000, 2))
    z = np.asarray(distributions.reparameterize(mean, logvar, eps))
    np.testing.assert_allclose(z.mean(0), [1.0, -2.0], atol=0.02)
    np.testing.assert_allclose(z.var(0), [1.0, np.e], rtol=0.02)
    # dz/dmean = 1 and dz/dlogvar = eps * sigma / 2.
    e = jnp.array([0.3, -0.7])
    grad_mean, grad_logvar = jax.grad(lambda m, lv: distributions.reparameterize(m, lv, e).sum(), (0, 1))(mean, logvar)
    np.testing.assert_allclose(grad_mean, [1.0, 1.0])
    np.testing.assert_allclose(grad_logvar, np.asarray(e) * np.exp(0.5 * np.asarray(logvar)) / 2, rtol=1e-6)


def test_dynamic_binarization_draws_bernoulli_pixels():
    grey = jnp.full((784,), 64, dtype=jnp.uint8)
    keys = jax.random.split(jax.random.key(0), 500)
    draws = np.asarray(jax.vmap(distributions.binarize, in_axes=(0, None, None))(keys, grey, True))
    assert set(np.unique(draws)) == {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(), 64 / 255, atol=0.005)
    static = distributions.binarize(jax.random.key(0), jnp.array([0, 1, 1], dtype=jnp.uint8), False)
    np.testing.assert_array_equal(static, [0.0, 1.0, 1.0])
