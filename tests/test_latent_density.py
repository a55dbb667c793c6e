"""Densities over a trained model's latent space: the temperature-scaled prior, the ex-post Gaussian mixture (EM)
and the two-stage VAE, against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vae_jax import distributions, latent_density


def _draws(sampler, count: int) -> np.ndarray:
    keys = jax.vmap(lambda n: jax.random.fold_in(jax.random.key(0), n))(jnp.arange(count))
    return np.asarray(jax.vmap(sampler)(keys), np.float64)


def test_temperature_scales_the_prior_standard_deviation():
    draws = _draws(latent_density.temperature_sampler(4, 0.7), 20_000)
    np.testing.assert_allclose(draws.std(axis=0), 0.7, rtol=0.03)
    with pytest.raises(ValueError, match="temperature must be positive"):
        latent_density.temperature_sampler(4, 0.0)


def _two_gaussians(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    first = rng.multivariate_normal([-3.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], size=count * 3 // 10)
    second = rng.multivariate_normal([3.0, 1.0], [[0.5, 0.0], [0.0, 2.0]], size=count - len(first))
    return np.concatenate([first, second])


def test_em_recovers_a_two_component_mixture_and_never_lowers_the_likelihood():
    codes = _two_gaussians(20_000)
    mixture, history = latent_density.fit_gaussian_mixture(codes, 2, jax.random.key(1), iterations=50)
    assert np.all(np.diff(history) >= -1e-9)
    order = np.argsort(mixture.means[:, 0])
    np.testing.assert_allclose(np.exp(mixture.log_weights[order]), [0.3, 0.7], atol=0.01)
    np.testing.assert_allclose(mixture.means[order], [[-3.0, 0.0], [3.0, 1.0]], atol=0.05)
    covariances = mixture.cholesky @ np.swapaxes(mixture.cholesky, 1, 2)
    np.testing.assert_allclose(covariances[order], [[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]], atol=0.06)


def test_mixture_log_density_and_samples_match_the_mixture():
    codes = _two_gaussians(5_000)
    mixture, _ = latent_density.fit_gaussian_mixture(codes, 3, jax.random.key(2), iterations=20)
    covariances = mixture.cholesky @ np.swapaxes(mixture.cholesky, 1, 2)
    direct = np.log(sum(np.exp(w) * scipy.stats.multivariate_normal(m, c).pdf(codes[:50])
                        for w, m, c in zip(mixture.log_weights, mixture.means, covariances)))
    np.testing.assert_allclose(mixture.log_density(codes[:50]), direct, rtol=1e-10)
    draws = _draws(mixture.sampler(), 40_000)
    weights = np.exp(mixture.log_weights)
    mean = weights @ mixture.means
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.05)
    second_moment = sum(w * (c + np.outer(m, m)) for w, m, c in zip(weights, mixture.means, covariances))
    np.testing.assert_allclose(np.cov(draws, rowvar=False), second_moment - np.outer(mean, mean), atol=0.1)


def test_mixture_samples_have_each_components_covariance():
    mixture = latent_density.GaussianMixture(np.zeros(1), np.zeros((1, 2)), np.array([[[1.0, 0.0], [2.0, 1.0]]]))
    np.testing.assert_allclose(np.cov(_draws(mixture.sampler(), 40_000), rowvar=False), [[1, 2], [2, 5]], rtol=0.05)


def test_second_stage_fits_gaussian_codes_near_their_entropy():
    """Codes from N(m, C): the mean negative ELBO per code is at least the entropy 1/2 log det(2 pi e C) in
    expectation, and a fitted second stage comes close to it; its samples have the codes' mean and covariance."""
    rng = np.random.default_rng(3)
    mean, factor = np.array([1.0, -2.0, 0.5]), rng.normal(size=(3, 3)) * 0.5
    covariance = factor @ factor.T + 0.2 * np.eye(3)
    codes = rng.multivariate_normal(mean, covariance, size=4_000)
    fitted = latent_density.fit_second_stage(codes, jax.random.key(4), epochs=60, hidden=(64, 64))
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1]
    assert fitted.history[-1] < fitted.history[0]
    assert entropy - 0.1 < fitted.history[-1] < entropy + 0.2
    draws = _draws(fitted.sampler(), 20_000)
    np.testing.assert_allclose(draws.mean(axis=0), mean, atol=0.15)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), covariance, atol=0.15)


def test_aggregate_posterior_codes_are_keyed_by_example(small_model, binary_pixels):
    params = small_model.init(jax.random.key(5), jnp.zeros(784))
    key = jax.random.key(6)
    whole = latent_density.aggregate_posterior_codes(small_model, params, binary_pixels, key)
    chunked = latent_density.aggregate_posterior_codes(small_model, params, binary_pixels, key, batch_size=7)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-6)  # a batch-position key differs by O(1)
    mean, logvar = small_model.posterior(params, jnp.asarray(binary_pixels[10], jnp.float32))
    eps = jax.random.normal(jax.random.fold_in(key, 10), mean.shape)
    np.testing.assert_allclose(whole[10], distributions.reparameterize(mean, logvar, eps), rtol=1e-6)
