"""Bounds and training objectives, all derived from a model's joint samples (`vae_jax.contract`).

    ELBO(x)   = E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z))                      (Kingma & Welling, 2013, eq. 3)
    IWAE_K(x) = E[log (1/K) sum_k p(x, z_k) / q(z_k|x)],  z_k ~ q(z|x)          (Burda et al., 2016, eq. 8)

We report the negative ELBO split in two: `rec` = -E_q[log p(x|z)] (a Monte-Carlo estimate over the S joint
samples, Kingma & Welling eq. 10) and `kl`, so that `nelbo = rec + kl` is the loss minimized. The KL is the model's
closed form where it has one (N(0, I) prior), else the Monte-Carlo estimate mean_s [log q(z_s|x) - log p(z_s)]
at the same samples as `rec`.

Randomness: each example's key is `fold_in(base_key, index)`, where `index` is the example's position in its
split, and importance sample k uses `fold_in(noise_key, k)`. The numbers therefore do not depend on the batch
size, the order of a batch, the chunking of the K samples, or the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from vae_jax.contract import JointSamples, Model, Params, as_model
from vae_jax.distributions import binarize
from vae_jax.errors import ConfigError
from vae_jax.sequences import Sequence


class ElboTerms(NamedTuple):
    """Terms of the negative ELBO in nats, for one example (shapes below) or a batch (a leading `[B]`).

    Attributes:
        nelbo: `[]` -ELBO = rec + kl.
        rec: `[]` reconstruction loss -E_q[log p(x|z)].
        kl: `[]` KL(q(z|x) || p(z)).
        kl_per_dim: `[J]` the KL of each latent dimension (they sum to `kl`); `[0]` where the KL does not split by
            dimension (a learned prior, a hierarchy).
        posterior_mean: `[J]` the mean of q(z|x), for counting active units; `[0]` where the model gives none.
    """

    nelbo: jax.Array
    rec: jax.Array
    kl: jax.Array
    kl_per_dim: jax.Array
    posterior_mean: jax.Array


def elbo_terms_from_samples(samples: JointSamples) -> ElboTerms:
    """The negative-ELBO terms of one example from its `[S]` joint samples (see the module's docstring)."""
    rec = -jnp.mean(samples.log_likelihood)
    if samples.kl is None:
        kl = jnp.mean(samples.log_posterior - samples.log_prior)
    else:
        kl = jnp.mean(samples.kl)  # one closed form, or the mean of one per sample
    empty = jnp.zeros((0,), rec.dtype)
    kl_per_dim = samples.kl_per_dim
    if kl_per_dim is not None and kl_per_dim.ndim == 2:
        kl_per_dim = jnp.mean(kl_per_dim, axis=0)
    return ElboTerms(nelbo=rec + kl, rec=rec, kl=kl, kl_per_dim=empty if kl_per_dim is None else kl_per_dim,
                     posterior_mean=empty if samples.posterior_mean is None else samples.posterior_mean)


def log_weights(samples: JointSamples) -> jax.Array:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x), `[S]`."""
    return samples.log_likelihood + samples.log_prior - samples.log_posterior


def elbo_terms(model: Model, params: Params, x: jax.Array, key: jax.Array, num_samples: int = 1) -> ElboTerms:
    """Negative-ELBO terms of the `[D]` example `x` from `num_samples` joint samples drawn with `key`."""
    model = as_model(model)
    return elbo_terms_from_samples(model.joint_samples(params, x, key, num_samples))


def importance_samples(model: Model, params: Params, x: jax.Array, key: jax.Array,
                       sample_ids: jax.Array) -> JointSamples:
    """The joint samples numbered `sample_ids [K]` of the `[D]` example `x`, sample k drawn with `fold_in(key, k)`:
    the log-densities `[K]`, the other fields as `model.joint_samples` gives them. The encoder runs once for all K
    (vmap leaves unbatched what does not depend on k)."""
    model = as_model(model)

    # A closed-form KL and the posterior mean do not depend on the noise: one copy, not K (a KL per sample: K).
    shapes = jax.eval_shape(lambda: model.joint_samples(params, x, key, 1))
    per_sample = shapes.kl is not None and shapes.kl.ndim == 1

    def one(sample_id: jax.Array) -> JointSamples:
        samples = model.joint_samples(params, x, jax.random.fold_in(key, sample_id), 1)
        return samples._replace(log_likelihood=samples.log_likelihood[0], log_prior=samples.log_prior[0],
                                log_posterior=samples.log_posterior[0],
                                kl=samples.kl[0] if per_sample else samples.kl,
                                kl_per_dim=samples.kl_per_dim[0] if per_sample else samples.kl_per_dim)

    kl_axis = 0 if per_sample else None
    return jax.vmap(one, out_axes=JointSamples(0, 0, 0, kl_axis, kl_axis, None))(sample_ids)


def iwae_bound(model: Model, params: Params, x: jax.Array, key: jax.Array, num_samples: int,
               chunk_size: int = 500) -> jax.Array:
    """The importance-weighted bound log (1/K) sum_k w_k of the `[D]` example `x`, K = `num_samples`; `[]`.

    The K samples (`importance_samples`) are drawn `chunk_size` at a time and combined by a running log-sum-exp, so
    memory is bounded whatever K is; the result does not depend on `chunk_size`. K = 1 gives a single-sample ELBO
    estimate (with a Monte-Carlo KL). A lower bound on log p(x), tight as K grows.
    """
    model = as_model(model)
    chunk_size = min(chunk_size, num_samples)
    num_chunks = -(-num_samples // chunk_size)

    def add_chunk(total: jax.Array, chunk: jax.Array) -> tuple[jax.Array, None]:
        sample_ids = chunk * chunk_size + jnp.arange(chunk_size)
        log_w = log_weights(importance_samples(model, params, x, key, sample_ids))
        log_w = jnp.where(sample_ids < num_samples, log_w, -jnp.inf)
        return jnp.logaddexp(total, jax.nn.logsumexp(log_w)), None

    dtype = jax.eval_shape(lambda: model.joint_samples(params, x, key, 1)).log_likelihood.dtype
    total, _ = jax.lax.scan(add_chunk, jnp.array(-jnp.inf, dtype), jnp.arange(num_chunks))
    return total - jnp.log(jnp.asarray(num_samples, dtype))


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
        pixels: `[B, D]` uint8 images: 0/1 (static binarization) or grey levels 0..255; or a batch of sequences,
            `Sequence(frames [B, T, D] uint8, length [B])`, which reach `fn` as they are.
        indices: `[B]` int positions of the examples in their split.
        base_key: key of this epoch (training) or of this evaluation.
        dynamic_binarization: draw each pixel from Bernoulli(grey / 255) instead of reading 0/1.

    Returns:
        `fn`'s outputs with a leading `[B]` axis.
    """

    def one_example(raw: Any, key: jax.Array) -> Any:
        binarize_key, noise_key = jax.random.split(key)
        if isinstance(raw, Sequence):  # binary frames, which the model reads as they are
            return fn(raw, noise_key)
        return fn(binarize(binarize_key, raw, dynamic_binarization), noise_key)

    return jax.vmap(one_example)(pixels, example_keys(base_key, indices))


def batch_elbo_terms(model: Model, params: Params, pixels: jax.Array, indices: jax.Array, base_key: jax.Array,
                     num_samples: int = 1, dynamic_binarization: bool = False) -> ElboTerms:
    """Per-example negative-ELBO terms of a batch: `elbo_terms` mapped by `map_examples`; each field `[B, ...]`."""
    model = as_model(model)
    return map_examples(lambda x, key: elbo_terms(model, params, x, key, num_samples), pixels, indices, base_key,
                        dynamic_binarization)


def training_loss(terms: ElboTerms, kl_weight: jax.Array | float = 1.0, free_bits: float = 0.0) -> jax.Array:
    """The batch loss mean(rec) + kl_weight * sum_j max(free_bits, mean(KL_j)) from `[B]`-batched terms.

    With `kl_weight` 1 and `free_bits` 0 this is the mean negative ELBO. Free bits (Kingma et al., 2016) need a KL
    that splits by dimension (a model whose samples carry `kl_per_dim`, such as `models.VAE` with the N(0, I) prior).
    """
    if free_bits > 0:
        if terms.kl_per_dim.shape[-1] == 0:
            raise ConfigError("free bits need a model whose KL splits by dimension (the N(0, I) prior); set "
                              "free_bits=0")
        kl = jnp.sum(jnp.maximum(free_bits, jnp.mean(terms.kl_per_dim, axis=0)))
    else:
        kl = jnp.mean(terms.kl)
    return jnp.mean(terms.rec) + kl_weight * kl


class Objective(Protocol):
    """A training objective: per-example terms, then one batch loss (hashable: a static argument). An objective may
    also have `samples(model, params, x, key) -> JointSamples`, the joint samples its `per_example` draws, which the
    diagnosis of a non-finite step reads (else it reads one joint sample)."""

    def per_example(self, model: Model, params: Params, x: jax.Array, key: jax.Array) -> tuple[ElboTerms, jax.Array]:
        """The example's negative-ELBO terms (for the metrics) and its own `[]` quantity for `batch_loss`."""
        ...

    def batch_loss(self, terms: ElboTerms, values: jax.Array, kl_weight: jax.Array | float) -> jax.Array:
        """The `[]` loss of a batch from `[B]`-batched `per_example` outputs."""
        ...


@dataclasses.dataclass(frozen=True)
class Elbo:
    """The negative ELBO with `num_samples` samples, the KL weighted by `kl_weight` (beta, and its warm-up) and
    floored per dimension by `free_bits` (`training_loss`).

    Attributes:
        num_samples: S.
        free_bits: nats per latent dimension; 0 disables it.
    """

    num_samples: int = 1
    free_bits: float = 0.0

    def samples(self, model: Model, params: Params, x: jax.Array, key: jax.Array) -> JointSamples:
        """The S joint samples of `x` that `per_example` draws."""
        return model.joint_samples(params, x, key, self.num_samples)

    def per_example(self, model: Model, params: Params, x: jax.Array, key: jax.Array) -> tuple[ElboTerms, jax.Array]:
        terms = elbo_terms_from_samples(self.samples(model, params, x, key))
        return terms, terms.nelbo

    def batch_loss(self, terms: ElboTerms, values: jax.Array, kl_weight: jax.Array | float) -> jax.Array:
        return training_loss(terms, kl_weight, self.free_bits)


@dataclasses.dataclass(frozen=True)
class Iwae:
    """The negative importance-weighted bound with K = `num_samples` (Burda et al., 2016). It has no KL term to
    weight or floor; its metrics are the ELBO terms of the same K samples.

    Attributes:
        num_samples: K.
    """

    num_samples: int = 5

    def samples(self, model: Model, params: Params, x: jax.Array, key: jax.Array) -> JointSamples:
        """The K importance samples of `x` that `per_example` draws."""
        return importance_samples(model, params, x, key, jnp.arange(self.num_samples))

    def per_example(self, model: Model, params: Params, x: jax.Array, key: jax.Array) -> tuple[ElboTerms, jax.Array]:
        samples = self.samples(model, params, x, key)
        bound = jax.nn.logsumexp(log_weights(samples)) - jnp.log(float(self.num_samples))
        return elbo_terms_from_samples(samples), -bound

    def batch_loss(self, terms: ElboTerms, values: jax.Array, kl_weight: jax.Array | float) -> jax.Array:
        return jnp.mean(values)
