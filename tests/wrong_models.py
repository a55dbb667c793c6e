"""Models for the contract checks at the door (tests/test_resolve.py): one that keeps the contract, and one for each
way of breaking it that a user met. Loaded by the command line as `--model tests.wrong_models:NAME`."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import contract, distributions

LATENT = 2


class TinyVAE(nn.Module):
    """A small VAE that keeps the contract: q(z|x) Gaussian from an MLP, p(z) = N(0, I), p(x|z) Bernoulli."""

    hidden: int = 16

    def setup(self):
        self.encoder = nn.Sequential([nn.Dense(self.hidden), nn.elu, nn.Dense(2 * LATENT)])
        self.decoder = nn.Sequential([nn.Dense(self.hidden), nn.elu, nn.Dense(784)])

    def terms(self, x, key, num_samples):
        """`log p(x_d|z)` per pixel `[S, D]`, `log p(z)` `[S]`, `log q(z|x)` `[S]` and the posterior mean `[J]`."""
        mean, logvar = jnp.split(self.encoder(x), 2, axis=-1)
        eps = jax.random.normal(key, (num_samples, LATENT))
        z = distributions.reparameterize(mean, logvar, eps)
        logits = self.decoder(z)
        per_pixel = x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
        return per_pixel, distributions.standard_normal_log_prob(z), distributions.gaussian_log_prob_of_noise(
            eps, logvar), mean

    def __call__(self, x, key, num_samples):
        per_pixel, log_prior, log_posterior, mean = self.terms(x, key, num_samples)
        return contract.JointSamples(per_pixel.sum(-1), log_prior, log_posterior, posterior_mean=mean)


class LookalikeVAE(TinyVAE):
    """The same parameters as `TinyVAE`, another model: evaluating a TinyVAE run with it must be refused."""

    def __call__(self, x, key, num_samples):
        per_pixel, log_prior, log_posterior, mean = self.terms(x, key, num_samples)
        return contract.JointSamples(0.5 * per_pixel.sum(-1), log_prior, log_posterior, posterior_mean=mean)


class PerPixelLikelihood(TinyVAE):
    """log p(x|z) left per pixel, `[S, 784]` instead of `[S]`."""

    def __call__(self, x, key, num_samples):
        per_pixel, log_prior, log_posterior, mean = self.terms(x, key, num_samples)
        return contract.JointSamples(per_pixel, log_prior, log_posterior, posterior_mean=mean)


class PlainTuple(TinyVAE):
    """A plain tuple instead of `JointSamples`."""

    def __call__(self, x, key, num_samples):
        per_pixel, log_prior, log_posterior, _ = self.terms(x, key, num_samples)
        return per_pixel.sum(-1), log_prior, log_posterior


class NonFinitePosterior(TinyVAE):
    """log q(z|x) = -inf for every example whose first pixel is 0 (most of MNIST's)."""

    def __call__(self, x, key, num_samples):
        per_pixel, log_prior, log_posterior, mean = self.terms(x, key, num_samples)
        log_posterior = jnp.where(x[0] == 0, -jnp.inf, log_posterior)
        return contract.JointSamples(per_pixel.sum(-1), log_prior, log_posterior, posterior_mean=mean)
