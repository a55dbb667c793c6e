"""Evaluation on whole splits (or on chunks of a split streamed from the host, `vae_jax.stream`): per-example
negative-ELBO terms and importance-weighted bounds, and their summary."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vae_jax.contract import Model, Params, as_model
from vae_jax.objective import ElboTerms, batch_elbo_terms, iwae_bound, map_examples
from vae_jax.parallel import shard_batch

ACTIVE_UNIT_THRESHOLD = 0.01  # a latent dimension is active when Var_x[E_q(z|x)[z_j]] exceeds this (Burda et al.)


def map_over_split(fn: Callable[[Any, jax.Array], Any], pixels: Any, batch_size: int, mesh: Mesh | None,
                   first_index: jax.Array | int = 0, indices: jax.Array | None = None) -> Any:
    """Applies `fn(pixels [B, D], indices [B])` to a whole `[N, D]` split (or any pytree of `[N, ...]` examples, such
    as a part of a split of sequences, `vae_jax.buckets`), `batch_size` examples at a time; the examples' indices
    count from `first_index` (the index in its split of a chunk's first example), or are `indices [N]`.

    The split is zero-padded to a whole number of batches; the padding's outputs are dropped. With a `mesh`,
    each batch is split over its devices. Returns `fn`'s outputs with a leading `[N]` axis.
    """
    num_examples = jax.tree.leaves(pixels)[0].shape[0]
    num_chunks = -(-num_examples // batch_size)
    pad = num_chunks * batch_size - num_examples

    def batched(a: jax.Array) -> jax.Array:
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(num_chunks, batch_size, *a.shape[1:])

    indices = first_index + jnp.arange(num_examples) if indices is None else jnp.asarray(indices)
    chunks = (jax.tree.map(batched, pixels), batched(indices))
    outputs = jax.lax.map(lambda chunk: fn(*shard_batch(chunk, mesh)), chunks)
    return jax.tree.map(lambda t: t.reshape(num_chunks * batch_size, *t.shape[2:])[:num_examples], outputs)


def map_in_chunks(fn: Callable[..., jax.Array], num_examples: int, arrays: tuple[Any, ...] = (),
                  batch_size: int = 1000) -> np.ndarray:
    """`fn(*chunks, indices [B])`, jitted, over examples `[start, start + batch_size)` of `num_examples`, each array
    of `arrays` (`[N, ...]`, host or device) sliced alike, concatenated on the host: `[N, ...]` NumPy. Unlike
    `map_over_split`, only one chunk at a time is on the device (for splits read from disk, and loops of draws)."""
    jitted = jax.jit(fn)
    return np.concatenate([
        np.asarray(jitted(*(jnp.asarray(a[start:start + batch_size]) for a in arrays),
                          jnp.arange(start, min(start + batch_size, num_examples))))
        for start in range(0, num_examples, batch_size)])


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "dynamic_binarization", "num_samples", "mesh"))
def evaluate_elbo(
    model: Model,
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    batch_size: int,
    dynamic_binarization: bool = False,
    num_samples: int = 1,
    mesh: Mesh | None = None,
    first_index: jax.Array | int = 0,
    indices: jax.Array | None = None,
) -> ElboTerms:
    """Per-example negative-ELBO terms of a whole split, computed `batch_size` examples at a time.

    Example `i` uses the key `fold_in(key, i)`, so the result does not depend on `batch_size`.

    Args:
        model: the model (`vae_jax.contract`).
        params: its variables.
        pixels: `[N, D]` uint8 split.
        key: the evaluation key.
        batch_size: examples per chunk (bounds memory).
        dynamic_binarization: binarize grey levels with a Bernoulli draw keyed by the example.
        num_samples: Monte-Carlo samples of z per example.
        mesh: split each batch over this device mesh (data parallelism).
        first_index: the index in its split of `pixels[0]`, where `pixels` is a chunk of the split (traced).
        indices: `[N]` the examples' indices in their split, where they are not consecutive (a part of a split of
            sequences, `vae_jax.buckets`); None counts from `first_index`.

    Returns:
        `ElboTerms`, each with a leading `[N]` axis.
    """
    model = as_model(model)

    def chunk_terms(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> ElboTerms:
        return batch_elbo_terms(model, params, chunk_pixels, chunk_indices, key, num_samples, dynamic_binarization)

    return map_over_split(chunk_terms, pixels, batch_size, mesh, first_index, indices)


@functools.partial(jax.jit, static_argnames=(
    "model", "num_samples", "batch_size", "chunk_size", "dynamic_binarization", "mesh"))
def evaluate_iwae(
    model: Model,
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    batch_size: int = 100,
    chunk_size: int = 500,
    dynamic_binarization: bool = False,
    mesh: Mesh | None = None,
    first_index: jax.Array | int = 0,
    indices: jax.Array | None = None,
) -> jax.Array:
    """Per-example importance-weighted bounds log (1/K) sum_k w_k on a whole split; `[N]` in nats.

    With the same `key`, each example is binarized exactly as in `evaluate_elbo`. The result does not depend
    on `batch_size` (examples at once) or `chunk_size` (importance samples at once), which only bound memory,
    nor on the `mesh` that splits each batch over devices. `first_index` and `indices` are those of `evaluate_elbo`.
    """
    model = as_model(model)

    def chunk_bounds(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> jax.Array:
        def bound(x: jax.Array, noise_key: jax.Array) -> jax.Array:
            return iwae_bound(model, params, x, noise_key, num_samples, chunk_size)

        return map_examples(bound, chunk_pixels, chunk_indices, key, dynamic_binarization)

    return map_over_split(chunk_bounds, pixels, batch_size, mesh, first_index, indices)


@functools.partial(jax.jit, static_argnames=("model", "num_particles", "batch_size", "mesh"))
def evaluate_fivo(
    model: Model,
    params: Params,
    sequences: Any,
    key: jax.Array,
    *,
    num_particles: int,
    batch_size: int = 100,
    mesh: Mesh | None = None,
    first_index: jax.Array | int = 0,
    indices: jax.Array | None = None,
) -> jax.Array:
    """Per-sequence FIVO bounds log p_hat(x) with K = `num_particles` (`vae_jax.particles`) on a whole split of
    `Sequence`s; `[N]` in nats. The model must have `fivo_bound(params, x, key, num_particles)`, as the latent models
    of `vae_jax.recurrent` do. Sequence i is keyed by `fold_in(key, i)`, as in `evaluate_iwae`, so the result does
    not depend on `batch_size` or the `mesh`; `first_index` and `indices` are those of `evaluate_elbo`."""
    model = as_model(model)

    def chunk_bounds(chunk: Any, chunk_indices: jax.Array) -> jax.Array:
        return map_examples(lambda x, noise_key: model.fivo_bound(params, x, noise_key, num_particles), chunk,
                            chunk_indices, key)

    return map_over_split(chunk_bounds, sequences, batch_size, mesh, first_index, indices)


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """The mean of `[N]` values and its standard error (0 for a single value)."""
    stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(stderr)


def per_frame(terms: ElboTerms, iwae_bounds: jax.Array | None, lengths: np.ndarray) -> dict[str, float | int]:
    """For sequences, the NELBO (and NLL) per time step: the total over the `[N]` sequences divided by their
    `lengths`' sum, with the standard error of this ratio (delta method: sqrt(sum_i (a_i - r T_i)^2 / (N (N - 1)))
    / mean T). `nelbo_per_frame`, `nelbo_per_frame_stderr` (`nll_per_frame`, `nll_per_frame_stderr`), `num_frames`."""
    lengths = np.asarray(lengths, dtype=np.float64)
    result: dict[str, float | int] = {"num_frames": int(lengths.sum())}
    totals = {"nelbo": terms.nelbo, **({"nll": -iwae_bounds} if iwae_bounds is not None else {})}
    for name, values in totals.items():
        values = np.asarray(values, dtype=np.float64)
        ratio = values.sum() / lengths.sum()
        spread = np.sum(np.square(values - ratio * lengths)) / max(len(values) * (len(values) - 1), 1)
        result[f"{name}_per_frame"], result[f"{name}_per_frame_stderr"] = (
            float(ratio), float(math.sqrt(spread) / lengths.mean()))
    return result


def per_dimension_list(values: np.ndarray | jax.Array) -> list[float]:
    """`[J]` per-dimension values (e.g. the KL of each latent dimension) as a JSON list, to 4 decimals."""
    return [round(float(v), 4) for v in np.asarray(values)]


def summarize(terms: ElboTerms, iwae_bounds: jax.Array | None = None) -> dict[str, Any]:
    """Means over examples of `[N]` terms, standard errors of the means, KL per dimension and active units.

    Args:
        terms: per-example `ElboTerms` of a split.
        iwae_bounds: optional `[N]` importance-weighted bounds; adds `nll` = -mean bound and `nll_stderr`.

    Returns:
        `nelbo`, `nelbo_stderr`, `rec`, `kl`, `kl_per_dim`, `active_units` (None for a model that gives no posterior
        mean), `num_examples` (and `nll`, `nll_stderr`).
    """
    nelbo, nelbo_stderr = mean_and_stderr(np.asarray(terms.nelbo, dtype=np.float64))
    means = np.asarray(terms.posterior_mean, dtype=np.float64)
    summary = {
        "nelbo": nelbo,
        "nelbo_stderr": nelbo_stderr,
        "rec": float(np.asarray(terms.rec, dtype=np.float64).mean()),
        "kl": float(np.asarray(terms.kl, dtype=np.float64).mean()),
        "kl_per_dim": per_dimension_list(np.asarray(terms.kl_per_dim, dtype=np.float64).mean(axis=0)),
        "active_units": int(np.sum(means.var(axis=0) > ACTIVE_UNIT_THRESHOLD)) if means.shape[1] else None,
        "num_examples": len(means),
    }
    if iwae_bounds is not None:
        summary["nll"], summary["nll_stderr"] = mean_and_stderr(-np.asarray(iwae_bounds, dtype=np.float64))
    return summary
