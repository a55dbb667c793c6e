"""A VAE with two stochastic layers: the HVAE of Tomczak & Welling (2018), "VAE with a VampPrior", section 3.

    inference:   q(z2 | x) q(z1 | x, z2)
    generation:  p(z2) p(z1 | z2) p(x | z1, z2)

z2 is the top layer; its prior p(z2) is N(0, I) or learned (the VampPrior puts the posteriors q(z2 | u_k) of the
learned pseudo-inputs there). Every conditional is a diagonal Gaussian from an MLP (gated dense layers in the
paper), and x sees both layers, which keeps the top layer in use. p(x | z1, z2) is Bernoulli, or any likelihood of
`vae_jax.likelihoods` (the 8-bit mixture, whose encoders see x scaled by `input_scale`, 1/255). The model is one
Flax module that keeps the contract of `vae_jax.contract` in its `__call__`, so it trains, resumes, evaluates and
reports exactly as the one-layer `vae_jax.models.VAE` does. KL(q || p) has no closed form here: the objective uses
the Monte-Carlo estimate log q(z1, z2 | x) - log p(z1, z2) at the same draws as the reconstruction term, as the
paper does.

Why this model and not the two-layer IWAE model of Burda et al. (2016): it is the one published on the same static
binarization of MNIST with the VampPrior (83.19 nats), which vae_jax already has, and its skip connection from z2
to x avoids the inactive top layer that the purely stacked model suffers from (Burda et al. report few active units
in their second layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions, likelihoods, models
from vae_jax.contract import JointSamples


class JoinedMLP(nn.Module):
    """Two inputs, each through one hidden layer of `width`, concatenated, then one more hidden layer: the
    `[..., A], [..., B] -> [..., width]` trunk of q(z1 | x, z2) and p(x | z1, z2). Leading axes broadcast."""

    width: int
    activation: str = models.GATED
    dtype: str | None = None
    precision: str | None = "float32"

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        layer = (self.width,)
        ha = models.MLP(layer, self.activation, self.dtype, self.precision)(a)
        hb = models.MLP(layer, self.activation, self.dtype, self.precision)(b)
        shape = jnp.broadcast_shapes(ha.shape, hb.shape)
        joined = jnp.concatenate([jnp.broadcast_to(ha, shape), jnp.broadcast_to(hb, shape)], axis=-1)
        return models.MLP(layer, self.activation, self.dtype, self.precision)(joined)


class HierarchicalVAE(nn.Module):
    """The two-layer HVAE (see the module's docstring), one Flax module.

    Attributes:
        num_pixels: D, the size of an example.
        latent_dim: the size J of each of z1 and z2 (40 in the paper).
        encoder_hidden: widths of q(z2 | x)'s MLP; its last width is also that of q(z1 | x, z2)'s layers.
        decoder_hidden: widths of p(z1 | z2)'s MLP; its last width is also that of p(x | z1, z2)'s layers.
        activation: a name in `configs.ACTIVATIONS`, `gated` in the paper.
        logvar_bound: bound of every log-variance (`models.bound_logvar`); the authors' code clips to (-6, 2).
        prior: None for p(z2) = N(0, I), or a prior module of `vae_jax.priors` on z2 (the VampPrior encodes its
            pseudo-inputs with q(z2 | .)).
        dtype, precision: see `models.Encoder`.
        likelihood: p(x | z1, z2) from the output of `p_x_head` (`vae_jax.likelihoods`); Bernoulli logits by default.
        input_scale: the factor of x where the encoders see it (1/255 for 8-bit grey levels, as `models.ScaledEncoder`);
            the VampPrior's pseudo-inputs are on the data's scale and are scaled alike.
    """

    num_pixels: int
    latent_dim: int = 40
    encoder_hidden: Sequence[int] = (300, 300)
    decoder_hidden: Sequence[int] = (300, 300)
    activation: str = models.GATED
    logvar_bound: models.LogvarBound = 6.0
    prior: nn.Module | None = None
    dtype: str | None = None
    precision: str | None = "float32"
    likelihood: Any = likelihoods.Bernoulli()
    input_scale: float = 1.0

    def setup(self) -> None:
        gaussian = {"activation": self.activation, "logvar_bound": self.logvar_bound, "dtype": self.dtype,
                    "precision": self.precision}
        trunk = {"activation": self.activation, "dtype": self.dtype, "precision": self.precision}
        self.q_z2 = models.Encoder(self.latent_dim, tuple(self.encoder_hidden), **gaussian)
        self.q_z1_trunk = JoinedMLP(self.encoder_hidden[-1], **trunk)
        self.q_z1_head = nn.Dense(2 * self.latent_dim, dtype=self.dtype, precision=self.precision)
        self.p_z1 = models.Encoder(self.latent_dim, tuple(self.decoder_hidden), **gaussian)
        self.p_x_trunk = JoinedMLP(self.decoder_hidden[-1], **trunk)
        num_params = likelihoods.num_params(self.likelihood, self.num_pixels)
        self.p_x_head = nn.Dense(num_params, dtype=self.dtype, precision=self.precision)

    def top_posterior(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(mean, logvar)` of q(z2 | x): `[..., D] -> [..., J]` each, x seen times `input_scale`."""
        return self.q_z2(self.input_scale * x)

    def q_z1(self, x: jax.Array, z2: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`(mean, logvar)` of q(z1 | x, z2): `[..., D], [..., J] -> [..., J]` each (leading axes broadcast)."""
        return models.split_gaussian(self.q_z1_head(self.q_z1_trunk(self.input_scale * x, z2)), self.logvar_bound)

    def p_x_params(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
        """The parameters of p(x | z1, z2) (Bernoulli logits, P = D): `[..., J], [..., J] -> [..., P]`."""
        return models.float32_if_reduced(self.p_x_head(self.p_x_trunk(z1, z2)))

    def log_prior_z2(self, z2: jax.Array) -> jax.Array:
        """log p(z2), `[..., J] -> [...]`."""
        if self.prior is None:
            return distributions.standard_normal_log_prob(z2)
        return self.prior(z2, self.top_posterior)

    def __call__(self, x: jax.Array, key: jax.Array, num_samples: int) -> JointSamples:
        """`num_samples` joint samples of the `[D]` example `x`: the noise of z2 and of z1 drawn from the two
        halves of `split(key)`, each `normal([S, J])`."""
        z2_key, z1_key = jax.random.split(key)
        shape = (num_samples, self.latent_dim)
        return self.joint_samples_from_noise(x, jax.random.normal(z1_key, shape), jax.random.normal(z2_key, shape))

    def joint_samples_from_noise(self, x: jax.Array, eps1: jax.Array, eps2: jax.Array) -> JointSamples:
        """The samples z2 = mean2 + sigma2 * eps2 ~ q(z2 | x), z1 = mean1 + sigma1 * eps1 ~ q(z1 | x, z2), for noise
        `eps1, eps2 [S, J]`; log q from the noise (exact), log p(z1 | z2) from the density."""
        mean2, logvar2 = self.top_posterior(x)
        z2 = distributions.reparameterize(mean2, logvar2, eps2)
        mean1, logvar1 = self.q_z1(x, z2)
        z1 = distributions.reparameterize(mean1, logvar1, eps1)
        log_posterior = (distributions.gaussian_log_prob_of_noise(eps2, logvar2)
                         + distributions.gaussian_log_prob_of_noise(eps1, logvar1))
        return self._joint(x, z1, z2, log_posterior, mean2)

    def _joint(self, x: jax.Array, z1: jax.Array, z2: jax.Array, log_posterior: jax.Array,
               posterior_mean: jax.Array) -> JointSamples:
        """`JointSamples` at given `z1, z2 [S, J]`: log p(x | z1, z2), log p(z2) + log p(z1 | z2), and the given
        log q."""
        prior_mean1, prior_logvar1 = self.p_z1(z2)
        log_prior = self.log_prior_z2(z2) + distributions.gaussian_log_prob(z1, prior_mean1, prior_logvar1)
        log_likelihood = self.likelihood.log_prob(x, self.p_x_params(z1, z2))
        return JointSamples(log_likelihood, log_prior, log_posterior, posterior_mean=posterior_mean)

    def posterior(self, x: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """A factorized Gaussian guess at q(z1, z2 | x), the start of per-example inference: q(z2 | x), and
        q(z1 | x, z2) at z2's mean; `(mean, logvar)`, each `{"z1": [J], "z2": [J]}`."""
        mean2, logvar2 = self.top_posterior(x)
        mean1, logvar1 = self.q_z1(x, mean2)
        return {"z1": mean1, "z2": mean2}, {"z1": logvar1, "z2": logvar2}

    def joint_samples_given_posterior(self, x: jax.Array, mean: dict[str, jax.Array], logvar: dict[str, jax.Array],
                                      eps: dict[str, jax.Array]) -> JointSamples:
        """The samples of a factorized Gaussian posterior N(mean, diag exp(logvar)) over `{"z1", "z2"}` (per-example
        parameters, `vae_jax.inference`), for noise `eps = {"z1": [S, J], "z2": [S, J]}`."""
        z1 = distributions.reparameterize(mean["z1"], logvar["z1"], eps["z1"])
        z2 = distributions.reparameterize(mean["z2"], logvar["z2"], eps["z2"])
        log_posterior = (distributions.gaussian_log_prob_of_noise(eps["z1"], logvar["z1"])
                         + distributions.gaussian_log_prob_of_noise(eps["z2"], logvar["z2"]))
        return self._joint(x, z1, z2, log_posterior, mean["z2"])

    def generate(self, key: jax.Array, num_images: int) -> jax.Array:
        """Data means at draws z2 ~ p(z2), z1 ~ p(z1 | z2); `[N, D]`."""
        z2_key, z1_key = jax.random.split(key)
        if self.prior is None:
            z2 = jax.random.normal(z2_key, (num_images, self.latent_dim))
        else:
            z2 = self.prior.sample(z2_key, num_images, self.top_posterior)
        prior_mean1, prior_logvar1 = self.p_z1(z2)
        z1 = distributions.reparameterize(prior_mean1, prior_logvar1, jax.random.normal(z1_key, z2.shape))
        return self.likelihood.mean(self.p_x_params(z1, z2))

    def encode(self, x: jax.Array) -> jax.Array:
        """The top layer's posterior mean, `[..., D] -> [..., J]`."""
        return self.top_posterior(x)[0]

    def decode(self, z2: jax.Array) -> jax.Array:
        """Data means at a top-layer code, with z1 at the mean of p(z1 | z2): `[..., J] -> [..., D]`."""
        return self.likelihood.mean(self.p_x_params(self.p_z1(z2)[0], z2))

    def reconstruct(self, x: jax.Array) -> jax.Array:
        """Data means at the posterior means of z2 and then of z1: `[N, D] -> [N, D]`."""
        mean2 = self.top_posterior(x)[0]
        mean1 = self.q_z1(x, mean2)[0]
        return self.likelihood.mean(self.p_x_params(mean1, mean2))
