"""The information bottleneck's estimates against closed forms: I_q of a linear-Gaussian encoder on Gaussian data,
its bounds (0 and log N), the aggregate posterior against a direct float64 sum, and the linear probe on separable
and on random codes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import bottleneck


def _linear_gaussian(num_examples: int, gains: np.ndarray, noise_std: float, seed: int = 0):
    """x ~ N(0, I) in J dimensions and q(z|x) = N(gains * x, noise_std^2 I): posterior means and log-variances."""
    x = np.random.default_rng(seed).standard_normal((num_examples, len(gains)))
    mean = jnp.asarray(gains * x, jnp.float32)
    return mean, jnp.full(mean.shape, 2 * math.log(noise_std), jnp.float32)


def test_linear_gaussian_encoder_matches_the_closed_form():
    """I(x; z) = sum_j 1/2 log(1 + a_j^2 / s^2) and KL(q(z) || N(0, I)) = sum_j 1/2 (v_j - 1 - log v_j) with
    v_j = a_j^2 + s^2 (q(z) = N(0, diag v)); on N = 4000 examples the empirical estimates are within a few hundredths
    (Monte-Carlo error ~0.01, the empirical distribution's bias smaller still at I ~ 1.3 nats << log N)."""
    gains, noise = np.array([1.0, 2.0]), 1.0
    mean, logvar = _linear_gaussian(4000, gains, noise)
    info = bottleneck.aggregate_posterior_information(mean, logvar, jax.random.key(1), num_samples=4)
    variance = gains**2 + noise**2
    exact_information = float(np.sum(0.5 * np.log1p(gains**2 / noise**2)))  # 0.347 + 0.805 = 1.151
    exact_marginal_kl = float(np.sum(0.5 * (variance - 1 - np.log(variance))))
    assert float(info.mutual_information) == pytest.approx(exact_information, abs=0.03)
    assert float(info.marginal_kl) == pytest.approx(exact_marginal_kl, abs=0.03)
    # ELBO surgery: the average KL is I_q + the marginal KL, and it estimates the closed-form average KL
    assert float(info.average_kl) == pytest.approx(float(info.mutual_information + info.marginal_kl), abs=1e-4)
    closed_kl = 0.5 * np.mean(np.sum(np.square(mean) + np.exp(logvar) - 1 - logvar, axis=1))
    assert float(info.average_kl) == pytest.approx(float(closed_kl), abs=0.05)


def test_information_is_zero_without_dependence_and_at_most_log_n():
    """q(z|x) that does not depend on x: I_q = 0 exactly (every log q(z|x_n) - log q(z) is 0); posteriors so narrow
    and far apart that each z names its example: I_q = log N, never more."""
    num_examples, key = 500, jax.random.key(2)
    constant = jnp.full((num_examples, 3), 0.7), jnp.full((num_examples, 3), -1.0)
    same = bottleneck.aggregate_posterior_information(*constant, key, num_samples=2)
    assert float(same.mutual_information) == pytest.approx(0.0, abs=1e-5)
    assert same.log_n == pytest.approx(math.log(num_examples))
    separated = jnp.asarray(np.random.default_rng(3).standard_normal((num_examples, 3)) * 10, jnp.float32)
    sharp = bottleneck.aggregate_posterior_information(separated, jnp.full((num_examples, 3), -12.0), key)
    assert float(sharp.mutual_information) <= math.log(num_examples) + 1e-5
    assert float(sharp.mutual_information) == pytest.approx(math.log(num_examples), abs=1e-3)


@pytest.mark.parametrize("chunk_size", [0, 1, 7, 64])
def test_aggregate_posterior_matches_a_direct_float64_sum(chunk_size):
    """log q(z_i) = log (1/N) sum_n N(z_i; m_n, s_n^2) for 50 points over 30 posteriors, whatever the chunk size
    (7 does not divide 50: the padding is dropped)."""
    rng = np.random.default_rng(4)
    z, mean = rng.standard_normal((50, 4)), rng.standard_normal((30, 4))
    logvar = rng.uniform(-2, 1, (30, 4))
    densities = np.exp(-0.5 * np.sum((z[:, None] - mean[None]) ** 2 / np.exp(logvar) + logvar + math.log(2 * math.pi),
                                     axis=-1))
    expected = np.log(densities.mean(axis=1))
    got = bottleneck.log_aggregate_posterior(*(jnp.asarray(a, jnp.float32) for a in (z, mean, logvar)), chunk_size)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=1e-5)


def _blobs(num_examples: int, spread: float, seed: int):
    """Ten classes, 5-D codes: class c's codes around its own centre (spread = the centres' scale) plus N(0, I)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num_examples)
    centres = np.random.default_rng(99).standard_normal((10, 5)) * spread
    return jnp.asarray(centres[labels] + rng.standard_normal((num_examples, 5)), jnp.float32), labels


def test_probe_separates_separable_codes_and_is_deterministic():
    train, test = _blobs(2000, 20.0, 0), _blobs(1000, 20.0, 1)
    probe = bottleneck.fit_probe(*train, num_classes=10, l2=1e-4)
    assert bottleneck.probe_accuracy(probe, *test) >= 0.99
    again = bottleneck.fit_probe(*train, num_classes=10, l2=1e-4)
    np.testing.assert_array_equal(np.asarray(probe.weights), np.asarray(again.weights))


def test_probe_is_at_chance_on_random_codes():
    """Codes independent of the labels: test accuracy within 4 standard errors of 1/10 (sd = 0.0067 at 2000)."""
    train, test = _blobs(2000, 0.0, 2), _blobs(2000, 0.0, 3)
    probe, l2, _ = bottleneck.select_probe(train, _blobs(1000, 0.0, 4), num_classes=10)
    assert abs(bottleneck.probe_accuracy(probe, *test) - 0.1) < 0.027
    assert l2 in bottleneck.DEFAULT_L2S


def test_select_probe_takes_the_penalty_best_on_validation():
    """Barely separable codes: a huge penalty flattens the probe to one class, so the selection must not pick it."""
    train, validation = _blobs(1000, 1.0, 5), _blobs(500, 1.0, 6)
    probe, l2, accuracy = bottleneck.select_probe(train, validation, 10, l2s=(1e3, 1e-3))
    assert l2 == 1e-3
    assert accuracy == bottleneck.probe_accuracy(probe, *validation)
    assert accuracy > bottleneck.probe_accuracy(bottleneck.fit_probe(*train, 10, 1e3), *validation) + 0.1


def test_posterior_of_split_is_the_models_posterior_per_example_whatever_the_batch(small_model):
    """Each example's (mean, logvar) is the model's posterior at that example, binarized with `fold_in(key, i)` as
    `vae_jax eval` does; the batch size changes nothing but rounding. Without `posterior`, `encode` gives the means
    alone."""
    grey = np.random.default_rng(5).integers(0, 256, (7, 784)).astype(np.uint8)
    params, key = small_model.init(jax.random.key(0), jnp.zeros(784)), jax.random.key(3)
    mean, logvar = bottleneck.posterior_of_split(small_model, params, grey, key, dynamic=True, batch_size=3)
    whole, _ = bottleneck.posterior_of_split(small_model, params, grey, key, dynamic=True)
    np.testing.assert_allclose(mean, whole, rtol=1e-5, atol=1e-6)  # the same draws; matmul rounding by batch shape
    binarize_key = jax.random.split(jax.random.fold_in(key, 4))[0]  # example 4's, as map_examples draws it
    x = jax.random.bernoulli(binarize_key, grey[4].astype(jnp.float32) / 255).astype(jnp.float32)
    expected = small_model.posterior(params, x)
    np.testing.assert_allclose(mean[4], np.asarray(expected[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar[4], np.asarray(expected[1]), rtol=1e-5, atol=1e-6)

    class EncodeOnly:  # a model with a point code and no posterior
        encode = staticmethod(small_model.encode)

    means, none = bottleneck.posterior_of_split(EncodeOnly(), params, grey, key, dynamic=True)
    assert none is None
    np.testing.assert_allclose(means, mean, rtol=1e-5, atol=1e-6)
