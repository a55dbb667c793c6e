"""Log-densities, KL divergence, the reparameterization trick (Kingma & Welling, 2013) and binarization.

Every function acts on one example; callers `jax.vmap` over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

LOG_2PI = 1.8378770664093453  # log(2 pi)


def bernoulli_log_prob(x: ArrayLike, logits: ArrayLike) -> jax.Array:
    """log p(x | logits) of independent Bernoulli pixels, summed over the last axis.

    log p = sum_d x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d) = sum_d x_d l_d - softplus(l_d), since
    log sigmoid(l) = l - softplus(l) and log sigmoid(-l) = -softplus(l). The second form (the negative of PyTorch's
    `binary_cross_entropy_with_logits`) needs one exponential and one logarithm per pixel instead of two of each,
    and is finite for any finite logit; the common form log(1 - sigmoid(l)) underflows to log(0) = -inf for
    l > ~17 in float32.

    Args:
        x: `[..., D]` pixels in {0, 1}.
        logits: `[..., D]` Bernoulli logits.

    Returns:
        `[...]` log-likelihood in nats.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(logits))
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)


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


def gaussian_kl_per_dim_between(mean_q: ArrayLike, logvar_q: ArrayLike, mean_p: ArrayLike,
                                logvar_p: ArrayLike) -> jax.Array:
    """KL(N(mean_q_j, exp(logvar_q_j)) || N(mean_p_j, exp(logvar_p_j))) of each dimension j in closed form:

    KL_j = 1/2 (logvar_p_j - logvar_q_j + (exp(logvar_q_j) + (mean_q_j - mean_p_j)^2) / exp(logvar_p_j) - 1),

    `gaussian_kl_per_dim` when p is N(0, 1). All arguments `[..., J]` (broadcast); returns `[..., J]` in nats.
    """
    mean_q, logvar_q, mean_p, logvar_p = (jnp.asarray(v) for v in (mean_q, logvar_q, mean_p, logvar_p))
    ratio = jnp.exp(logvar_q - logvar_p) + jnp.square(mean_q - mean_p) * jnp.exp(-logvar_p)
    return 0.5 * (ratio - (logvar_q - logvar_p) - 1.0)


def gaussian_log_prob(z: ArrayLike, mean: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """log N(z; mean, diag exp(logvar)), summed over the last axis.

    For a point that was drawn as z = mean + sigma * eps, `gaussian_log_prob_of_noise` is exact where this loses
    digits (sigma much smaller than |z - mean|'s rounding error, or exp(-logvar) overflowing).

    Args:
        z: `[..., J]` points.
        mean: `[..., J]` means.
        logvar: `[..., J]` log-variances.

    Returns:
        `[...]` log-density in nats.
    """
    z, mean, logvar = jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar)
    squared = jnp.square(z - mean) * jnp.exp(-logvar)
    return -0.5 * jnp.sum(squared + logvar + LOG_2PI, axis=-1)


def gaussian_log_prob_of_noise(eps: ArrayLike, logvar: ArrayLike) -> jax.Array:
    """log N(z; mean, diag exp(logvar)) at z = mean + exp(logvar / 2) * eps, from the noise itself.

    Since (z - mean)^2 / sigma^2 = eps^2, log q = -1/2 sum_j (eps_j^2 + logvar_j + log 2 pi) exactly: no
    cancellation in z - mean and no exp(-logvar), so it is finite and exact for any finite logvar (the form of
    `gaussian_log_prob` returns NaN once exp(-logvar) overflows, logvar < -88 in float32).

    Args:
        eps: `[..., J]` the standard normal noise that drew z.
        logvar: `[..., J]` log-variances.

    Returns:
        `[...]` log-density in nats.
    """
    eps, logvar = jnp.asarray(eps), jnp.asarray(logvar)
    return -0.5 * jnp.sum(jnp.square(eps) + logvar + LOG_2PI, axis=-1)


def standard_normal_log_prob(z: ArrayLike) -> jax.Array:
    """log N(z; 0, I), summed over the last axis: `[..., J] -> [...]`."""
    z = jnp.asarray(z)
    return -0.5 * jnp.sum(jnp.square(z) + LOG_2PI, axis=-1)


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


def mixture_log_prob(z: ArrayLike, means: ArrayLike, logvars: ArrayLike) -> jax.Array:
    """log p(z) of the uniform mixture p(z) = 1/K sum_k N(z; means_k, diag exp(logvars_k)).

    Computed as logsumexp_k log N(z; means_k, ...) - log K, which is stable however far z lies from the means.

    Args:
        z: `[..., J]` points.
        means: `[K, J]` component means.
        logvars: `[K, J]` component log-variances.

    Returns:
        `[...]` log-density in nats.
    """
    z, means = jnp.asarray(z), jnp.asarray(means)
    per_component = gaussian_log_prob(z[..., None, :], means, logvars)
    return jax.nn.logsumexp(per_component, axis=-1) - jnp.log(means.shape[0])


def sample_mixture(key: jax.Array, means: ArrayLike, logvars: ArrayLike, num_samples: int) -> jax.Array:
    """`[num_samples, J]` draws from the uniform mixture of `mixture_log_prob`: a component, then its Gaussian."""
    means, logvars = jnp.asarray(means), jnp.asarray(logvars)
    component_key, noise_key = jax.random.split(key)
    components = jax.random.randint(component_key, (num_samples,), 0, means.shape[0])
    eps = jax.random.normal(noise_key, (num_samples, means.shape[1]), means.dtype)
    return reparameterize(means[components], logvars[components], eps)


def binarize(key: jax.Array, pixels: jax.Array, dynamic: bool) -> jax.Array:
    """Float pixels in {0, 1} from uint8 pixels.

    Args:
        key: key of this example's binarization (used only when `dynamic`).
        pixels: `[D]` uint8, 0/1 when `dynamic` is False, grey levels 0..255 when True.
        dynamic: draw each pixel from Bernoulli(grey / 255) (dynamic binarization).

    Returns:
        `[D]` float array of zeros and ones.
    """
    dtype = jnp.result_type(float)
    if dynamic:
        return jax.random.bernoulli(key, pixels.astype(dtype) / 255).astype(dtype)
    return pixels.astype(dtype)
