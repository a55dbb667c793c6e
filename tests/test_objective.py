"""The ELBO from a model's joint samples, its vmap over a batch, and the layout independence of its randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import objective
from vae_jax.errors import ConfigError


def _params(model):
    return model.init(jax.random.key(0), jnp.zeros(784))


def _np_log_sigmoid(logits):
    return -np.logaddexp(0.0, -logits)


def test_terms_match_direct_float64_formulas(small_model, binary_pixels):
    """rec, KL and NELBO against NumPy formulas on the same network outputs: log p(x|z) from sigmoid, the KL of
    Kingma & Welling's Appendix B, and the Monte-Carlo KL from the Gaussian densities."""
    params = _params(small_model)
    x = jnp.asarray(binary_pixels[0], dtype=jnp.float32)
    eps = jax.random.normal(jax.random.key(1), (4, 3))
    samples = small_model.joint_samples_from_noise(params, x, eps)
    terms = objective.elbo_terms_from_samples(samples)
    mean, logvar = (np.asarray(a, np.float64) for a in small_model.posterior(params, x))
    z = mean + np.exp(0.5 * logvar) * np.asarray(eps, np.float64)
    logits = np.asarray(small_model.decoder.apply(params["decoder"], jnp.asarray(z, jnp.float32)), np.float64)
    xs = np.asarray(x, np.float64)
    log_px = np.sum(xs * _np_log_sigmoid(logits) + (1 - xs) * _np_log_sigmoid(-logits), axis=-1)
    kl = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - logvar - 1)
    np.testing.assert_allclose(float(terms.rec), -log_px.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(terms.kl), kl, rtol=1e-5)
    np.testing.assert_allclose(float(terms.nelbo), -log_px.mean() + kl, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms.kl_per_dim).sum(), kl, rtol=1e-5)
    # The samples' own densities: log q(z|x) and log N(z; 0, I) at the drawn z.
    log_q = np.sum(-0.5 * np.log(2 * np.pi * np.exp(logvar)) - (z - mean) ** 2 / (2 * np.exp(logvar)), axis=-1)
    log_p = np.sum(-0.5 * np.log(2 * np.pi) - z ** 2 / 2, axis=-1)
    np.testing.assert_allclose(samples.log_posterior, log_q, rtol=1e-5)
    np.testing.assert_allclose(samples.log_prior, log_p, rtol=1e-5)
    np.testing.assert_allclose(samples.log_likelihood, log_px, rtol=1e-5)


def test_monte_carlo_kl_is_used_where_there_is_no_closed_form():
    samples = objective.JointSamples(log_likelihood=jnp.array([-10.0, -12.0]), log_prior=jnp.array([-3.0, -5.0]),
                                     log_posterior=jnp.array([-1.0, -2.0]))
    terms = objective.elbo_terms_from_samples(samples)
    # rec = 11, KL = mean(log q - log p) = mean(2, 3) = 2.5.
    np.testing.assert_allclose([terms.rec, terms.kl, terms.nelbo], [11.0, 2.5, 13.5])
    assert terms.kl_per_dim.shape == (0,) and terms.posterior_mean.shape == (0,)
    np.testing.assert_allclose(objective.log_weights(samples), [-12.0, -15.0])


def test_keyed_terms_equal_terms_from_the_same_noise(small_model, binary_pixels):
    params = _params(small_model)
    x = jnp.asarray(binary_pixels[1], dtype=jnp.float32)
    key = jax.random.key(7)
    keyed = objective.elbo_terms(small_model, params, x, key, num_samples=5)
    eps = jax.random.normal(key, (5, 3))
    from_noise = objective.elbo_terms_from_samples(small_model.joint_samples_from_noise(params, x, eps))
    for a, b in zip(keyed, from_noise):
        np.testing.assert_array_equal(a, b)


def test_vmapped_batch_equals_a_python_loop(small_model, binary_pixels):
    params = _params(small_model)
    base = jax.random.key(3)
    indices = jnp.arange(10, 26)
    pixels = jnp.asarray(binary_pixels[:16])
    batch = objective.batch_elbo_terms(small_model, params, pixels, indices, base)
    for row, index in enumerate(np.asarray(indices)):
        _, noise_key = jax.random.split(jax.random.fold_in(base, int(index)))
        x = pixels[row].astype(jnp.float32)
        single = objective.elbo_terms(small_model, params, x, noise_key)
        np.testing.assert_allclose(float(batch.nelbo[row]), float(single.nelbo), rtol=1e-5)
        np.testing.assert_allclose(float(batch.kl[row]), float(single.kl), rtol=1e-5)


def test_per_example_noise_depends_on_the_index_not_the_batch_position(small_model, binary_pixels):
    params = _params(small_model)
    base = jax.random.key(5)
    pixels = jnp.asarray(binary_pixels[:8])
    indices = jnp.arange(8)
    whole = objective.batch_elbo_terms(small_model, params, pixels, indices, base)
    reversed_batch = objective.batch_elbo_terms(small_model, params, pixels[::-1], indices[::-1], base)
    halves = [objective.batch_elbo_terms(small_model, params, pixels[s], indices[s], base)
              for s in (slice(0, 3), slice(3, 8))]
    np.testing.assert_allclose(np.asarray(reversed_batch.nelbo)[::-1], whole.nelbo, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([h.nelbo for h in halves]), whole.nelbo, rtol=1e-6)
    # The same image under two different indices gets different noise.
    same_image = jnp.repeat(pixels[:1], 2, axis=0)
    two = objective.batch_elbo_terms(small_model, params, same_image, jnp.array([0, 1]), base)
    assert float(two.rec[0]) != float(two.rec[1])
    np.testing.assert_allclose(float(two.kl[0]), float(two.kl[1]))


def test_training_loss_kl_weight_and_free_bits():
    kl_per_dim = jnp.array([[0.1, 2.0], [0.3, 4.0]])
    kl = kl_per_dim.sum(axis=1)
    rec = jnp.array([10.0, 20.0])
    terms = objective.ElboTerms(rec + kl, rec, kl, kl_per_dim, jnp.zeros((2, 2)))
    np.testing.assert_allclose(objective.training_loss(terms), 15.0 + 3.2, rtol=1e-6)
    np.testing.assert_allclose(objective.training_loss(terms, kl_weight=0.5), 15.0 + 1.6, rtol=1e-6)
    # Free bits of 1 nat lift dimension 0 (mean KL 0.2) to 1 and leave dimension 1 (mean KL 3) alone.
    np.testing.assert_allclose(objective.training_loss(terms, free_bits=1.0), 15.0 + 1.0 + 3.0, rtol=1e-6)
    elbo = objective.Elbo(free_bits=1.0)
    np.testing.assert_allclose(elbo.batch_loss(terms, terms.nelbo, 0.5), 15.0 + 0.5 * 4.0, rtol=1e-6)
    # A model whose KL does not split by dimension (a mixture prior, say) has no free bits.
    without_split = terms._replace(kl_per_dim=jnp.zeros((2, 0)))
    with pytest.raises(ConfigError, match="free bits need a model whose KL splits by dimension"):
        objective.training_loss(without_split, free_bits=1.0)


def test_iwae_objective_is_the_negative_bound_of_the_same_samples(small_model, binary_pixels):
    params = _params(small_model)
    x = jnp.asarray(binary_pixels[2], jnp.float32)
    key = jax.random.key(9)
    terms, value = objective.Iwae(num_samples=6).per_example(small_model, params, x, key)
    np.testing.assert_allclose(-value, objective.iwae_bound(small_model, params, x, key, 6, chunk_size=4), rtol=1e-6)
    # Its metrics are the ELBO terms of the same 6 samples.
    samples = objective.importance_samples(small_model, params, x, key, jnp.arange(6))
    np.testing.assert_allclose(terms.rec, -np.mean(samples.log_likelihood), rtol=1e-6)
    assert -float(value) > -float(terms.nelbo)  # the bound is tighter than the average ELBO


def test_summarize_gives_means_standard_errors_and_active_units():
    from vae_jax import evaluate

    nelbo = np.array([100.0, 102.0, 98.0, 104.0])  # mean 101, deviations -1, 1, -3, 3
    kl_per_dim = np.array([[1.0, 2.0, 3.0]] * 4)
    posterior_mean = np.array([[0.0, 0.0, 0.0], [1.0, 0.1, 0.3], [2.0, 0.0, 0.0], [3.0, 0.1, 0.3]])
    terms = objective.ElboTerms(nelbo, nelbo - 6.0, kl_per_dim.sum(axis=1), kl_per_dim, posterior_mean)
    summary = evaluate.summarize(terms, iwae_bounds=-(nelbo - 5.0))
    stderr = (20 / 3) ** 0.5 / 2  # sample standard deviation (sum of squares 20 over N - 1 = 3) over sqrt(N = 4)
    assert (summary["nelbo"], summary["rec"], summary["kl"], summary["nll"]) == (101.0, 95.0, 6.0, 96.0)
    np.testing.assert_allclose([summary["nelbo_stderr"], summary["nll_stderr"]], [stderr, stderr], rtol=1e-12)
    assert summary["kl_per_dim"] == [1.0, 2.0, 3.0] and summary["num_examples"] == 4
    # Variances of the posterior means over examples: 1.25, 0.0025 and 0.0225; active above 0.01 (Burda et al.).
    assert summary["active_units"] == 2


def test_dynamic_binarization_in_evaluation(small_model):
    """Grey levels are read as Bernoulli(grey / 255): black-and-white images (0 and 255) evaluate as their 0/1
    static copies; grey ones get one draw per example (keyed by its index: batch size does not matter) that moves
    with the key. (Training on grey images: test_train.)"""
    from vae_jax import evaluate

    params = small_model.init(jax.random.key(0), jnp.zeros(784))
    rng = np.random.default_rng(5)
    binary = (rng.random((12, 784)) < 0.3).astype(np.uint8)
    dynamic = evaluate.evaluate_elbo(small_model, params, jnp.asarray(binary * 255), jax.random.key(1), batch_size=4,
                                     dynamic_binarization=True)
    static = evaluate.evaluate_elbo(small_model, params, jnp.asarray(binary), jax.random.key(1), batch_size=4)
    np.testing.assert_array_equal(dynamic.nelbo, static.nelbo)
    grey = jnp.asarray(rng.integers(0, 256, (12, 784)), jnp.uint8)

    def grey_nelbo(key, batch_size):
        return np.asarray(evaluate.evaluate_elbo(small_model, params, grey, key, batch_size=batch_size,
                                                 dynamic_binarization=True).nelbo)

    np.testing.assert_allclose(grey_nelbo(jax.random.key(1), 4), grey_nelbo(jax.random.key(1), 12), rtol=1e-6)
    assert np.all(grey_nelbo(jax.random.key(1), 4) != grey_nelbo(jax.random.key(2), 4))
