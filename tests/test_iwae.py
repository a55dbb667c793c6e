"""The importance-weighted bound: K = 1, monotonicity in K, chunking, and exact log p(x) by quadrature."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import distributions, evaluate, models, objective, train

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _setup(small_models, binary_pixels):
    encoder, decoder = small_models
    params = train.init_params(jax.random.key(0), encoder, decoder)
    return encoder, decoder, params, jnp.asarray(binary_pixels[0], jnp.float32)


def test_k1_bound_is_the_single_sample_elbo_with_the_same_noise(small_models, binary_pixels):
    encoder, decoder, params, x = _setup(small_models, binary_pixels)
    key = jax.random.key(4)
    bound = objective.iwae_bound(params, x, key, encoder=encoder, decoder=decoder, num_samples=1)
    eps = jax.random.normal(jax.random.fold_in(key, 0), (1, 3))
    # The single-sample ELBO estimate with a Monte-Carlo KL: log p(x|z) + log p(z) - log q(z|x).
    mean, logvar = encoder.apply(params["encoder"], x)
    z = mean + jnp.exp(0.5 * logvar) * eps
    log_px = distributions.bernoulli_log_prob(x, decoder.apply(params["decoder"], z))
    mc_kl = distributions.gaussian_log_prob(z, mean, logvar) - distributions.gaussian_log_prob(z, 0 * z, 0 * z)
    np.testing.assert_allclose(float(bound), float((log_px - mc_kl)[0]), rtol=1e-6)


def test_bound_rises_with_k_and_does_not_depend_on_chunking(small_models, binary_pixels):
    encoder, decoder, params, _ = _setup(small_models, binary_pixels)
    pixels = jnp.asarray(binary_pixels[:32])
    bounds = {k: evaluate.evaluate_iwae(params, pixels, jax.random.key(1), encoder=encoder, decoder=decoder,
                                        num_samples=k, batch_size=8, chunk_size=min(k, 64))
              for k in (1, 10, 100)}
    assert float(bounds[1].mean()) < float(bounds[10].mean()) < float(bounds[100].mean())
    rechunked = evaluate.evaluate_iwae(params, pixels, jax.random.key(1), encoder=encoder, decoder=decoder,
                                       num_samples=100, batch_size=5, chunk_size=7)
    np.testing.assert_allclose(rechunked, bounds[100], rtol=1e-6)


class _Linear1d(nn.Module):
    """Decoder of a 1-D latent: logits = w z + b, a model whose log p(x) is a 1-D integral."""

    @nn.compact
    def __call__(self, z):
        return nn.Dense(784)(z)


def test_bound_converges_to_the_exact_log_likelihood():
    encoder = models.Encoder(latent_dim=1, hidden=(8,))
    decoder = _Linear1d()
    params = train.init_params(jax.random.key(2), encoder, decoder)
    params["decoder"] = jax.tree.map(lambda p: p * 0.5, params["decoder"])
    x = (np.random.default_rng(3).random(784) < 0.3).astype(np.float32)
    # Exact log p(x) = log of the integral of p(x|z) N(z; 0, 1) dz, by quadrature on a fine grid.
    grid = np.linspace(-10, 10, 40001)
    log_joint = np.asarray(distributions.bernoulli_log_prob(x, decoder.apply(params["decoder"], grid[:, None]))
                           + distributions.gaussian_log_prob(grid[:, None], np.zeros(1), np.zeros(1)), np.float64)
    peak = log_joint.max()
    exact = peak + np.log(np.sum(np.exp(log_joint - peak)) * (grid[1] - grid[0]))
    estimates = {k: float(objective.iwae_bound(params, jnp.asarray(x), jax.random.key(0), encoder=encoder,
                                               decoder=decoder, num_samples=k, chunk_size=1000))
                 for k in (1, 5000)}
    assert estimates[1] < exact
    assert abs(estimates[5000] - exact) < 0.05
    assert abs(estimates[5000] - exact) < abs(estimates[1] - exact) / 5
