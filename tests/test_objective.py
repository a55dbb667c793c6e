"""The per-example ELBO, its vmap, and the layout independence of its randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import distributions, objective, train

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _params(small_models):
    encoder, decoder = small_models
    return train.init_params(jax.random.key(0), encoder, decoder)


def test_terms_add_up_and_match_the_closed_forms(small_models, binary_pixels):
    encoder, decoder = small_models
    params = _params(small_models)
    x = jnp.asarray(binary_pixels[0], dtype=jnp.float32)
    eps = jax.random.normal(jax.random.key(1), (4, 3))
    terms = objective.elbo_terms_from_noise(params, x, eps, encoder=encoder, decoder=decoder)
    mean, logvar = encoder.apply(params["encoder"], x)
    z = mean + jnp.exp(0.5 * logvar) * eps
    logits = decoder.apply(params["decoder"], z)
    expected_rec = -np.mean(np.asarray(distributions.bernoulli_log_prob(x, logits)))
    np.testing.assert_allclose(float(terms.rec), expected_rec, rtol=1e-6)
    np.testing.assert_allclose(float(terms.kl), float(distributions.gaussian_kl_to_standard_normal(mean, logvar)))
    np.testing.assert_allclose(float(terms.nelbo), float(terms.rec + terms.kl), rtol=1e-7)
    assert float(terms.kl) > 0 and float(terms.rec) > 0


def test_keyed_terms_equal_terms_from_the_same_noise(small_models, binary_pixels):
    encoder, decoder = small_models
    params = _params(small_models)
    x = jnp.asarray(binary_pixels[1], dtype=jnp.float32)
    key = jax.random.key(7)
    keyed = objective.elbo_terms(params, x, key, encoder=encoder, decoder=decoder, num_samples=5)
    eps = jax.random.normal(key, (5, 3))
    from_noise = objective.elbo_terms_from_noise(params, x, eps, encoder=encoder, decoder=decoder)
    for a, b in zip(keyed, from_noise):
        np.testing.assert_array_equal(a, b)


def test_vmapped_batch_equals_a_python_loop(small_models, binary_pixels):
    encoder, decoder = small_models
    params = _params(small_models)
    base = jax.random.key(3)
    indices = jnp.arange(10, 26)
    pixels = jnp.asarray(binary_pixels[:16])
    batch = objective.batch_elbo_terms(params, pixels, indices, base, encoder=encoder, decoder=decoder)
    for row, index in enumerate(np.asarray(indices)):
        _, noise_key = jax.random.split(jax.random.fold_in(base, int(index)))
        x = pixels[row].astype(jnp.float32)
        single = objective.elbo_terms(params, x, noise_key, encoder=encoder, decoder=decoder)
        np.testing.assert_allclose(float(batch.nelbo[row]), float(single.nelbo), rtol=1e-5)
        np.testing.assert_allclose(float(batch.kl[row]), float(single.kl), rtol=1e-5)


def test_per_example_noise_depends_on_the_index_not_the_batch_position(small_models, binary_pixels):
    encoder, decoder = small_models
    params = _params(small_models)
    base = jax.random.key(5)
    pixels = jnp.asarray(binary_pixels[:8])
    indices = jnp.arange(8)
    whole = objective.batch_elbo_terms(params, pixels, indices, base, encoder=encoder, decoder=decoder)
    reversed_batch = objective.batch_elbo_terms(params, pixels[::-1], indices[::-1], base, encoder=encoder,
                                                decoder=decoder)
    halves = [objective.batch_elbo_terms(params, pixels[s], indices[s], base, encoder=encoder, decoder=decoder)
              for s in (slice(0, 3), slice(3, 8))]
    np.testing.assert_allclose(np.asarray(reversed_batch.nelbo)[::-1], whole.nelbo, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([h.nelbo for h in halves]), whole.nelbo, rtol=1e-6)
    # The same image under two different indices gets different noise.
    same_image = jnp.repeat(pixels[:1], 2, axis=0)
    two = objective.batch_elbo_terms(params, same_image, jnp.array([0, 1]), base, encoder=encoder, decoder=decoder)
    assert float(two.rec[0]) != float(two.rec[1])
    np.testing.assert_allclose(float(two.kl[0]), float(two.kl[1]))


def test_dynamic_binarization_draws_bernoulli_pixels(small_models):
    from vae_jax.data import binarize

    grey = jnp.full((784,), 64, dtype=jnp.uint8)
    draws = jax.vmap(binarize, in_axes=(0, None, None))(jax.random.split(jax.random.key(0), 500), grey, True)
    values = np.asarray(draws)
    assert set(np.unique(values)) == {0.0, 1.0}
    np.testing.assert_allclose(values.mean(), 64 / 255, atol=0.005)
    static = binarize(jax.random.key(0), jnp.array([0, 1, 1], dtype=jnp.uint8), False)
    np.testing.assert_array_equal(static, [0.0, 1.0, 1.0])
