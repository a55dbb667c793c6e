"""Log-densities, KL divergence and the reparameterization trick (Kingma & Welling, 2013).

Every function acts on one example; callers `jax.vmap` over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def bernoulli_log_prob(x: ArrayLike, logits: ArrayLike) -> jax.Array:
    """log p(x | logits) of independent Bernoulli pixels, summed over the last axis.

    log p = sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d). Both terms use
    `log_sigmoid`, which is finite for any finite logit; the common form
    log(1 - sigmoid(l)) underflows to log(0) = -inf for l > ~17 in float32.

    Args:
        x: `[..., D]` pixels in {0, 1}.
        logits: `[..., D]` Bernoulli logits.

    Returns:
        `[...]` log-likelihood in nats.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(logits))
    return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits), axis=-1)


def gaussian_kl_per_dim(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """KL(N(mean_j, exp(logvar_j)) || N(0, 1)) of each dimension j in closed form.

    KL_j = 1/2 (mean_j^2 + exp(logvar_j) - logvar_j - 1)   (Kingma & Welling, 2013, Appendix B).

    Args:
        mean: `[..., J]` posterior means.
        logvar: `[..., J]` posterior log-variances.

    Returns:
        `[..., J]` KL in nats.
    """
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0)


def gaussian_kl_to_standard_normal(mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """KL(N(mean, diag exp(logvar)) || N(0, I)): `gaussian_kl_per_dim` summed over the last axis; `[...]`."""
    return jnp.sum(gaussian_kl_per_dim(mean, logvar), axis=-1)


def gaussian_log_prob(z: ArrayLike, mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """log N(z; mean, diag exp(logvar)), summed over the last axis.

    Args:
        z: `[..., J]` points.
        mean: `[..., J]` means.
        logvar: `[..., J]` log-variances.

    Returns:
        `[...]` log-density in nats.
    """
    z, mean, logvar = jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar)
    squared = jnp.square(z - mean) * jnp.exp(-logvar)
    return -0.5 * jnp.sum(squared + logvar + jnp.log(2 * jnp.pi), axis=-1)


def reparameterize(mean: ArrayLike, logvar: ArrayLike, eps: ArrayLike) -> jax.Array:
    """z = mean + sigma * eps with sigma = exp(logvar / 2)   (Kingma & Welling, 2013, eq. 10).

    Args:
        mean: `[J]` posterior mean.
        logvar: `[J]` posterior log-variance.
        eps: `[..., J]` standard normal noise; leading axes index Monte-Carlo samples.

    Returns:
        `[..., J]` samples of z, differentiable in `mean` and `logvar`.
    """
    return jnp.asarray(mean) + jnp.exp(0.5 * jnp.asarray(logvar)) * jnp.asarray(eps)
