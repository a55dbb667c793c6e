"""The ELBO and the importance-weighted bound of one example, and their vmap over a batch.

    ELBO(x)   = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))                      (Kingma & Welling, 2013, eq. 3)
    IWAE_K(x) = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)],  z_k ~ q(z|x)          (Burda et al., 2016, eq. 8)

We report the negative ELBO split in two: `rec` = -E_q[log p(x|z)] (a Monte-Carlo estimate over reparameterized
draws of z, Kingma & Welling eq. 10) and `kl`, so that `nelbo = rec + kl` is the loss minimized. With the
standard normal prior (`prior=None`) the KL is in closed form; with a learned mixture prior (`vae_jax.priors`)
it is estimated by Monte Carlo, KL ~ mean_s [log q(z_s|x) - log p(z_s)], with the same draws z_s as `rec`.

Randomness: each example's key is `fold_in(base_key, index)`, where `index` is the example's position in its
split, and importance sample k uses `fold_in(noise_key, k)`. The numbers therefore do not depend on the batch
size, the order of a batch, the chunking of the K samples, or the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions
from vae_jax.data import binarize

Params = Any  # {"encoder": encoder variables, "decoder": decoder variables[, "prior": prior variables]}
MixtureComponents = tuple[jax.Array, jax.Array] | None  # (means [K, J], logvars [K, J]); None is N(0, I)


class ElboTerms(NamedTuple):
    """Terms of the negative ELBO in nats, for one example (shapes below) or a batch (a leading `[B]`).

    Attributes:
        nelbo: `[]` -ELBO = rec + kl.
        rec: `[]` reconstruction loss -E_q[log p(x|z)].
        kl: `[]` KL(q(z|x) || p(z)).
        kl_per_dim: `[J]` the KL of each latent dimension (they sum to `kl`); `[0]` for a mixture prior, whose KL
            does not split by dimension.
        posterior_mean: `[J]` the mean of q(z|x), for counting active units.
    """

    nelbo: jax.Array
    rec: jax.Array
    kl: jax.Array
    kl_per_dim: jax.Array
    posterior_mean: jax.Array


def prior_components(params: Params, *, encoder: nn.Module, prior: nn.Module | None) -> MixtureComponents:
    """The mixture `(means [K, J], logvars [K, J])` of a learned prior, or None for N(0, I)."""
    if prior is None:
        return None
    return prior.apply(params["prior"], functools.partial(encoder.apply, params["encoder"]))


def prior_log_prob(z: jax.Array, components: MixtureComponents) -> jax.Array:
    """log p(z) for `z [..., J]`: N(0, I) when `components` is None, else the uniform mixture; `[...]`."""
    if components is None:
        return distributions.gaussian_log_prob(z, jnp.zeros_like(z), jnp.zeros_like(z))
    return distributions.mixture_log_prob(z, *components)


def _terms_given_posterior(
    decoder_params: Any, x: jax.Array, mean: jax.Array, logvar: jax.Array, eps: jax.Array, decoder: nn.Module,
    components: MixtureComponents,
) -> ElboTerms:
    z = distributions.reparameterize(mean, logvar, eps)
    logits = decoder.apply(decoder_params, z)
    rec = -jnp.mean(distributions.bernoulli_log_prob(x, logits))
    if components is None:
        kl_per_dim = distributions.gaussian_kl_per_dim(mean, logvar)
        kl = jnp.sum(kl_per_dim, axis=-1)
    else:
        kl_per_dim = jnp.zeros((0,), mean.dtype)
        kl = jnp.mean(distributions.gaussian_log_prob(z, mean, logvar) - prior_log_prob(z, components))
    return ElboTerms(nelbo=rec + kl, rec=rec, kl=kl, kl_per_dim=kl_per_dim, posterior_mean=mean)


def elbo_terms_from_noise(
    params: Params, x: jax.Array, eps: jax.Array, *, encoder: nn.Module, decoder: nn.Module,
    prior: nn.Module | None = None,
) -> ElboTerms:
    """Negative-ELBO terms of one example for given standard-normal noise.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables (and `"prior"` with a learned prior).
        x: `[D]` pixels in {0, 1}.
        eps: `[S, J]` noise; z_s = mean + sigma * eps_s, and `rec` (and a Monte-Carlo KL) average over the S samples.
        encoder: module `x [D] -> (mean [J], logvar [J])`.
        decoder: module `z [S, J] -> logits [S, D]`.
        prior: None for N(0, I) (closed-form KL), or a module of `vae_jax.priors`.

    Returns:
        `ElboTerms` of one example.
    """
    mean, logvar = encoder.apply(params["encoder"], x)
    components = prior_components(params, encoder=encoder, prior=prior)
    return _terms_given_posterior(params["decoder"], x, mean, logvar, eps, decoder, components)


def elbo_terms(
    params: Params, x: jax.Array, key: jax.Array, *, encoder: nn.Module, decoder: nn.Module,
    prior: nn.Module | None = None, num_samples: int = 1,
) -> ElboTerms:
    """Negative-ELBO terms of one example, with `[num_samples, J]` standard-normal noise drawn from `key`.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables (and `"prior"` with a learned prior).
        x: `[D]` pixels in {0, 1}.
        key: the example's noise key.
        encoder, decoder, prior: see `elbo_terms_from_noise`.
        num_samples: Monte-Carlo samples S of z.

    Returns:
        `ElboTerms` of one example.
    """
    mean, _ = jax.eval_shape(encoder.apply, params["encoder"], x)
    eps = jax.random.normal(key, (num_samples, *mean.shape), dtype=mean.dtype)
    return elbo_terms_from_noise(params, x, eps, encoder=encoder, decoder=decoder, prior=prior)


def _log_weights(
    decoder_params: Any, x: jax.Array, mean: jax.Array, logvar: jax.Array, eps: jax.Array, decoder: nn.Module,
    components: MixtureComponents,
) -> jax.Array:
    """`[K]` log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k = mean + sigma * eps_k, eps `[K, J]`."""
    z = distributions.reparameterize(mean, logvar, eps)
    log_px = distributions.bernoulli_log_prob(x, decoder.apply(decoder_params, z))
    return log_px + prior_log_prob(z, components) - distributions.gaussian_log_prob(z, mean, logvar)


def log_importance_weights_from_noise(
    params: Params, x: jax.Array, eps: jax.Array, *, encoder: nn.Module, decoder: nn.Module,
    prior: nn.Module | None = None,
) -> jax.Array:
    """log w_k = log p(x, z_k) - log q(z_k|x) of one example for given noise `eps [K, J]`; returns `[K]`."""
    mean, logvar = encoder.apply(params["encoder"], x)
    components = prior_components(params, encoder=encoder, prior=prior)
    return _log_weights(params["decoder"], x, mean, logvar, eps, decoder, components)


def iwae_bound(
    params: Params,
    x: jax.Array,
    key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    num_samples: int,
    prior: nn.Module | None = None,
    chunk_size: int = 500,
) -> jax.Array:
    """The importance-weighted bound log (1/K) sum_k w_k of one example, K = `num_samples`.

    The K samples are drawn `chunk_size` at a time and combined by a running log-sum-exp, so memory is bounded
    whatever K is; sample k uses the noise `normal(fold_in(key, k))`, so the result does not depend on
    `chunk_size`. K = 1 gives a single-sample ELBO estimate (with a Monte-Carlo KL).

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables (and `"prior"` with a learned prior).
        x: `[D]` pixels in {0, 1}.
        key: the example's noise key.
        encoder, decoder, prior: see `elbo_terms_from_noise`.
        num_samples: K.
        chunk_size: samples evaluated at once.

    Returns:
        `[]` the bound in nats (a lower bound on log p(x), tight as K grows).
    """
    mean, logvar = encoder.apply(params["encoder"], x)
    components = prior_components(params, encoder=encoder, prior=prior)
    chunk_size = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk_size)

    def add_chunk(total: jax.Array, chunk: jax.Array) -> tuple[jax.Array, None]:
        sample_ids = chunk * chunk_size + jnp.arange(chunk_size)
        eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(key, k), mean.shape, mean.dtype))(sample_ids)
        log_w = _log_weights(params["decoder"], x, mean, logvar, eps, decoder, components)
        log_w = jnp.where(sample_ids < num_samples, log_w, -jnp.inf)
        return jnp.logaddexp(total, jax.nn.logsumexp(log_w)), None

    total, _ = jax.lax.scan(add_chunk, jnp.array(-jnp.inf, mean.dtype), jnp.arange(num_chunks))
    return total - jnp.log(jnp.asarray(num_samples, mean.dtype))


def example_keys(base_key: jax.Array, indices: jax.Array) -> jax.Array:
    """`[B]` keys, `fold_in(base_key, i)` for each example index `i` of `indices [B]`."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, indices)


def map_examples(
    fn: Callable[[jax.Array, jax.Array], Any],
    pixels: jax.Array,
    indices: jax.Array,
    base_key: jax.Array,
    dynamic_binarization: bool = False,
) -> Any:
    """vmaps `fn(x [D], noise_key)` over a batch, binarizing each example with its own key.

    Example `i` gets the key `fold_in(base_key, i)`, split into a binarization key and a noise key.

    Args:
        fn: the per-example computation.
        pixels: `[B, D]` uint8 images: 0/1 (static binarization) or grey levels 0..255.
        indices: `[B]` int positions of the examples in their split.
        base_key: key of this epoch (training) or of this evaluation.
        dynamic_binarization: draw each pixel from Bernoulli(grey / 255) instead of reading 0/1.

    Returns:
        `fn`'s outputs with a leading `[B]` axis.
    """

    def one_example(raw: jax.Array, key: jax.Array) -> Any:
        binarize_key, noise_key = jax.random.split(key)
        return fn(binarize(binarize_key, raw, dynamic_binarization), noise_key)

    return jax.vmap(one_example)(pixels, example_keys(base_key, indices))


def batch_elbo_terms(
    params: Params,
    pixels: jax.Array,
    indices: jax.Array,
    base_key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    prior: nn.Module | None = None,
    num_samples: int = 1,
    dynamic_binarization: bool = False,
) -> ElboTerms:
    """Per-example negative-ELBO terms of a batch: `elbo_terms` mapped by `map_examples`; each field `[B, ...]`."""

    def one(x: jax.Array, key: jax.Array) -> ElboTerms:
        return elbo_terms(params, x, key, encoder=encoder, decoder=decoder, prior=prior, num_samples=num_samples)

    return map_examples(one, pixels, indices, base_key, dynamic_binarization)
