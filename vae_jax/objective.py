"""The ELBO of one example, and its vmap over a batch (Kingma & Welling, 2013, eqs. 7 and 10).

    ELBO(x) = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z)),   p(z) = N(0, I).

We report its negative split in two: `rec` = -E_q[log p(x|z)] (a Monte-Carlo estimate over `num_samples`
reparameterized draws of z) and `kl` (closed form), so that `nelbo = rec + kl` is the loss that is minimized.

Randomness: each example's key is `fold_in(base_key, index)`, where `index` is the example's position in its
split. The numbers therefore do not depend on the batch size, on the order of a batch, or on the device.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import distributions
from vae_jax.data import binarize

Params = Any  # {"encoder": encoder variables, "decoder": decoder variables}


class ElboTerms(NamedTuple):
    """Terms of the negative ELBO, in nats; each `[]` for one example or `[B]` for a batch.

    Attributes:
        nelbo: -ELBO = rec + kl.
        rec: reconstruction loss -E_q[log p(x|z)].
        kl: KL(q(z|x) || N(0, I)).
    """

    nelbo: jax.Array
    rec: jax.Array
    kl: jax.Array


def _terms_given_posterior(
    decoder_params: Any, x: jax.Array, mean: jax.Array, logvar: jax.Array, eps: jax.Array, decoder: nn.Module
) -> ElboTerms:
    z = distributions.reparameterize(mean, logvar, eps)
    logits = decoder.apply(decoder_params, z)
    rec = -jnp.mean(distributions.bernoulli_log_prob(x, logits))
    kl = distributions.gaussian_kl_to_standard_normal(mean, logvar)
    return ElboTerms(nelbo=rec + kl, rec=rec, kl=kl)


def elbo_terms_from_noise(
    params: Params, x: jax.Array, eps: jax.Array, *, encoder: nn.Module, decoder: nn.Module
) -> ElboTerms:
    """Negative-ELBO terms of one example for given standard-normal noise.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables.
        x: `[D]` pixels in {0, 1}.
        eps: `[S, J]` noise; z_s = mean + sigma * eps_s, and `rec` averages over the S samples.
        encoder: module `x [D] -> (mean [J], logvar [J])`.
        decoder: module `z [S, J] -> logits [S, D]`.

    Returns:
        `ElboTerms` of scalars.
    """
    mean, logvar = encoder.apply(params["encoder"], x)
    return _terms_given_posterior(params["decoder"], x, mean, logvar, eps, decoder)


def elbo_terms(
    params: Params, x: jax.Array, key: jax.Array, *, encoder: nn.Module, decoder: nn.Module, num_samples: int = 1
) -> ElboTerms:
    """Negative-ELBO terms of one example, with `[num_samples, J]` standard-normal noise drawn from `key`.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables.
        x: `[D]` pixels in {0, 1}.
        key: the example's key.
        encoder, decoder: see `elbo_terms_from_noise`.
        num_samples: Monte-Carlo samples S of z.

    Returns:
        `ElboTerms` of scalars.
    """
    mean, logvar = encoder.apply(params["encoder"], x)
    eps = jax.random.normal(key, (num_samples, *mean.shape), dtype=mean.dtype)
    return _terms_given_posterior(params["decoder"], x, mean, logvar, eps, decoder)


def example_keys(base_key: jax.Array, indices: jax.Array) -> jax.Array:
    """`[B]` keys, `fold_in(base_key, i)` for each example index `i` of `indices [B]`."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, indices)


def batch_elbo_terms(
    params: Params,
    pixels: jax.Array,
    indices: jax.Array,
    base_key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    num_samples: int = 1,
    dynamic_binarization: bool = False,
) -> ElboTerms:
    """Per-example negative-ELBO terms of a batch: the vmap of `elbo_terms`.

    Each example's key `fold_in(base_key, index)` is split into a binarization key and a noise key.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables.
        pixels: `[B, D]` uint8 images: 0/1 (static binarization) or grey levels 0..255.
        indices: `[B]` int positions of the examples in their split.
        base_key: key of this epoch (training) or of this evaluation.
        encoder, decoder, num_samples: see `elbo_terms`.
        dynamic_binarization: draw each pixel from Bernoulli(grey / 255) instead of reading 0/1.

    Returns:
        `ElboTerms`, each `[B]`.
    """

    def one_example(raw: jax.Array, key: jax.Array) -> ElboTerms:
        binarize_key, noise_key = jax.random.split(key)
        x = binarize(binarize_key, raw, dynamic_binarization)
        return elbo_terms(params, x, noise_key, encoder=encoder, decoder=decoder, num_samples=num_samples)

    return jax.vmap(one_example)(pixels, example_keys(base_key, indices))
