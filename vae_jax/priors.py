"""Learned priors p(z) beyond N(0, I), as Flax modules. Both are uniform mixtures of diagonal Gaussians:

- `MixturePrior`: K free components, means and log-variances learned (the CS236 GMVAE prior);
- `VampPrior`: the encoder's own posteriors at K learned pseudo-inputs, p(z) = 1/K sum_k q(z | u_k)
  (Tomczak & Welling, 2018).

A prior module is called as `prior(z, encode)` for log p(z) (`z [..., J] -> [...]`) and has
`sample(key, num_samples, encode) -> [N, J]`; `encode` is the encoder bound to its parameters
(`x [..., D] -> (mean, logvar) [..., J]`), which only the VampPrior uses. Write your own prior with these two
methods (a Student-t, a flow) and pass it to `vae_jax.models.VAE(prior=...)`. KL(q(z|x) || p(z)) has no closed
form for such priors, so the objective estimates it by Monte Carlo with the same draws of z as the reconstruction
term. The standard normal prior is represented by `None` and keeps its closed-form KL.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions

Encode = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class GaussianMixturePrior(nn.Module):
    """A uniform mixture of diagonal Gaussians whose components a subclass's `components(encode)` gives."""

    def components(self, encode: Encode) -> tuple[jax.Array, jax.Array]:
        """`(means [K, J], logvars [K, J])` of the mixture."""
        raise NotImplementedError

    def __call__(self, z: jax.Array, encode: Encode) -> jax.Array:
        """log p(z) for `z [..., J]`; returns `[...]` (`distributions.mixture_log_prob`)."""
        return distributions.mixture_log_prob(z, *self.components(encode))

    def sample(self, key: jax.Array, num_samples: int, encode: Encode) -> jax.Array:
        """`[num_samples, J]` draws from the mixture (`distributions.sample_mixture`)."""
        return distributions.sample_mixture(key, *self.components(encode), num_samples)


class MixturePrior(GaussianMixturePrior):
    """p(z) = 1/K sum_k N(z; m_k, diag exp(l_k)) with learned m_k, l_k (the GMVAE prior of Stanford CS236).

    The means start as draws from N(0, I) and the log-variances at 0, so the initial prior resembles N(0, I).

    Attributes:
        num_components: K.
        latent_dim: J.
    """

    num_components: int
    latent_dim: int

    @nn.compact
    def components(self, encode: Encode) -> tuple[jax.Array, jax.Array]:
        """`(means [K, J], logvars [K, J])`; `encode` is not used."""
        shape = (self.num_components, self.latent_dim)
        means = self.param("means", nn.initializers.normal(1.0), shape)
        return means, self.param("logvars", nn.initializers.zeros, shape)


class VampPrior(GaussianMixturePrior):
    """p(z) = 1/K sum_k q(z | u_k): the variational mixture of posteriors at learned pseudo-inputs u_k.

    A pseudo-input is `scale * sigmoid(logits)`: an image with pixels in (0, 1) times the data's scale, so that it
    reaches the encoder as data does. On 8-bit data (grey levels 0..255, `scale=255`) the encoder sees x / 255
    (`models.ScaledEncoder`), so the pseudo-inputs reach its layers in (0, 1), the range of the data there: Tomczak &
    Welling keep binary pseudo-inputs in [0, 1] with a hardtanh; the sigmoid keeps them inside (0, 1) with a gradient
    everywhere. The logits start near -3 (dark images, pixels about 0.05, as in Tomczak & Welling's
    initialization). Gradients reach the encoder through the prior.

    Attributes:
        num_components: K pseudo-inputs.
        num_pixels: D, the size of a pseudo-input.
        scale: the data's largest value: 1 for binary pixels, 255 for 8-bit grey levels.
    """

    num_components: int
    num_pixels: int
    scale: float = 1.0

    @nn.compact
    def components(self, encode: Encode) -> tuple[jax.Array, jax.Array]:
        """`(means [K, J], logvars [K, J])`, the encoder's posteriors at the K pseudo-inputs `[K, D]`."""
        logits = self.param("pseudo_input_logits", _shifted_normal(-3.0, 0.01), (self.num_components, self.num_pixels))
        return encode(self.scale * jax.nn.sigmoid(logits))


def _shifted_normal(mean: float, stddev: float) -> Callable[..., jax.Array]:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init
