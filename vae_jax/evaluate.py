"""Evaluation on whole splits, prior samples, reconstructions, PNG grids and the latent scatter plot."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from vae_jax.distributions import sample_mixture
from vae_jax.objective import ElboTerms, Params, batch_elbo_terms, iwae_bound, map_examples, prior_components
from vae_jax.parallel import shard_batch

ACTIVE_UNIT_THRESHOLD = 0.01  # a latent dimension is active when Var_x[E_q(z|x)[z_j]] exceeds this (Burda et al.)


def _map_over_split(fn: Callable[[jax.Array, jax.Array], Any], pixels: jax.Array, batch_size: int,
                    mesh: Mesh | None) -> Any:
    """Applies `fn(pixels [B, D], indices [B])` to a whole `[N, D]` split, `batch_size` examples at a time.

    The split is zero-padded to a whole number of batches; the padding's outputs are dropped. With a `mesh`,
    each batch is split over its devices. Returns `fn`'s outputs with a leading `[N]` axis.
    """
    num_examples = pixels.shape[0]
    num_chunks = -(-num_examples // batch_size)
    padded = jnp.pad(pixels, ((0, num_chunks * batch_size - num_examples), (0, 0)))
    chunks = (padded.reshape(num_chunks, batch_size, -1), jnp.arange(num_chunks * batch_size).reshape(num_chunks, -1))
    outputs = jax.lax.map(lambda chunk: fn(*shard_batch(chunk, mesh)), chunks)
    return jax.tree.map(lambda t: t.reshape(num_chunks * batch_size, *t.shape[2:])[:num_examples], outputs)


@functools.partial(jax.jit, static_argnames=(
    "encoder", "decoder", "prior", "batch_size", "dynamic_binarization", "num_samples", "mesh"))
def evaluate_elbo(
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    batch_size: int,
    prior: nn.Module | None = None,
    dynamic_binarization: bool = False,
    num_samples: int = 1,
    mesh: Mesh | None = None,
) -> ElboTerms:
    """Per-example negative-ELBO terms of a whole split, computed `batch_size` examples at a time.

    Example `i` uses the key `fold_in(key, i)`, so the result does not depend on `batch_size`.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables (and `"prior"` with a learned prior).
        pixels: `[N, D]` uint8 split.
        key: the evaluation key.
        encoder, decoder: the modules.
        batch_size: examples per chunk (bounds memory).
        prior: None for N(0, I), or a learned prior of `vae_jax.priors`.
        dynamic_binarization: binarize grey levels with a Bernoulli draw keyed by the example.
        num_samples: Monte-Carlo samples of z per example.
        mesh: split each batch over this device mesh (data parallelism).

    Returns:
        `ElboTerms`, each with a leading `[N]` axis.
    """

    def chunk_terms(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> ElboTerms:
        return batch_elbo_terms(params, chunk_pixels, chunk_indices, key, encoder=encoder, decoder=decoder,
                                prior=prior, num_samples=num_samples, dynamic_binarization=dynamic_binarization)

    return _map_over_split(chunk_terms, pixels, batch_size, mesh)


@functools.partial(jax.jit, static_argnames=(
    "encoder", "decoder", "prior", "num_samples", "batch_size", "chunk_size", "dynamic_binarization", "mesh"))
def evaluate_iwae(
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    num_samples: int,
    prior: nn.Module | None = None,
    batch_size: int = 100,
    chunk_size: int = 500,
    dynamic_binarization: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Per-example importance-weighted bounds log (1/K) sum_k w_k on a whole split; `[N]` in nats.

    With the same `key`, each example is binarized exactly as in `evaluate_elbo`. The result does not depend
    on `batch_size` (examples at once) or `chunk_size` (importance samples at once), which only bound memory,
    nor on the `mesh` that splits each batch over devices.
    """

    def chunk_bounds(chunk_pixels: jax.Array, chunk_indices: jax.Array) -> jax.Array:
        def bound(x: jax.Array, noise_key: jax.Array) -> jax.Array:
            return iwae_bound(params, x, noise_key, encoder=encoder, decoder=decoder, prior=prior,
                              num_samples=num_samples, chunk_size=chunk_size)

        return map_examples(bound, chunk_pixels, chunk_indices, key, dynamic_binarization)

    return _map_over_split(chunk_bounds, pixels, batch_size, mesh)


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(stderr)


def per_dimension_list(values: np.ndarray | jax.Array) -> list[float]:
    """`[J]` per-dimension values (e.g. the KL of each latent dimension) as a JSON list, to 4 decimals."""
    return [round(float(v), 4) for v in np.asarray(values)]


def summarize(terms: ElboTerms, iwae_bounds: jax.Array | None = None) -> dict[str, Any]:
    """Means over examples of `[N]` terms, standard errors of the means, KL per dimension and active units.

    Args:
        terms: per-example `ElboTerms` of a split.
        iwae_bounds: optional `[N]` importance-weighted bounds; adds `nll` = -mean bound and `nll_stderr`.

    Returns:
        `nelbo`, `nelbo_stderr`, `rec`, `kl`, `kl_per_dim`, `active_units`, `num_examples` (and `nll`, `nll_stderr`).
    """
    nelbo, nelbo_stderr = _mean_and_stderr(np.asarray(terms.nelbo, dtype=np.float64))
    means = np.asarray(terms.posterior_mean, dtype=np.float64)
    summary = {
        "nelbo": nelbo,
        "nelbo_stderr": nelbo_stderr,
        "rec": float(np.asarray(terms.rec, dtype=np.float64).mean()),
        "kl": float(np.asarray(terms.kl, dtype=np.float64).mean()),
        "kl_per_dim": per_dimension_list(np.asarray(terms.kl_per_dim, dtype=np.float64).mean(axis=0)),
        "active_units": int(np.sum(means.var(axis=0) > ACTIVE_UNIT_THRESHOLD)),
        "num_examples": len(means),
    }
    if iwae_bounds is not None:
        summary["nll"], summary["nll_stderr"] = _mean_and_stderr(-np.asarray(iwae_bounds, dtype=np.float64))
    return summary


@functools.partial(jax.jit, static_argnames=("encoder", "decoder", "prior", "num_images", "latent_dim"))
def sample_prior(params: Params, key: jax.Array, *, encoder: nn.Module, decoder: nn.Module, num_images: int,
                 latent_dim: int, prior: nn.Module | None = None) -> jax.Array:
    """Bernoulli means sigmoid(decoder(z)) for `num_images` draws z ~ p(z) (N(0, I) when `prior` is None, else
    the learned mixture); returns `[num_images, D]`."""
    components = prior_components(params, encoder=encoder, prior=prior)
    if components is None:
        z = jax.random.normal(key, (num_images, latent_dim))
    else:
        z = sample_mixture(key, *components, num_images)
    return jax.nn.sigmoid(decoder.apply(params["decoder"], z))


@functools.partial(jax.jit, static_argnames=("encoder", "decoder"))
def reconstruct(params: Params, x: jax.Array, *, encoder: nn.Module, decoder: nn.Module) -> jax.Array:
    """Bernoulli means of p(x | z = posterior mean) for `x [N, D]` in {0, 1}; returns `[N, D]`."""
    mean, _ = encoder.apply(params["encoder"], x)
    return jax.nn.sigmoid(decoder.apply(params["decoder"], mean))


@functools.partial(jax.jit, static_argnames=("encoder", "decoder", "num_steps"))
def interpolate(params: Params, x_start: jax.Array, x_end: jax.Array, *, encoder: nn.Module, decoder: nn.Module,
                num_steps: int) -> jax.Array:
    """Bernoulli means decoded along the straight line between the posterior means of two sets of digits.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables.
        x_start, x_end: `[P, D]` pixels in {0, 1}.
        encoder, decoder: the modules.
        num_steps: points on each line, both ends included.

    Returns:
        `[P, num_steps, D]`.
    """
    start, _ = encoder.apply(params["encoder"], x_start)
    end, _ = encoder.apply(params["encoder"], x_end)
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]
    z = start[:, None, :] + t * (end - start)[:, None, :]
    return jax.nn.sigmoid(decoder.apply(params["decoder"], z))


@functools.partial(jax.jit, static_argnames=("decoder", "grid_size"))
def latent_manifold(params: Params, *, decoder: nn.Module, grid_size: int) -> jax.Array:
    """The learned manifold of a 2-D latent space (Kingma & Welling, 2013, Fig. 4).

    Decodes z = (Phi^-1(u), Phi^-1(v)) on an evenly spaced `grid_size x grid_size` grid of (u, v) in (0, 1)^2,
    so the grid covers the prior's quantiles. Rows run from high to low z_2, columns from low to high z_1.

    Returns:
        `[grid_size * grid_size, D]` Bernoulli means, row-major.
    """
    quantiles = jax.scipy.special.ndtri((jnp.arange(grid_size) + 0.5) / grid_size)
    z1, z2 = jnp.meshgrid(quantiles, quantiles[::-1])
    return jax.nn.sigmoid(decoder.apply(params["decoder"], jnp.stack([z1, z2], axis=-1).reshape(-1, 2)))


def image_grid(images: np.ndarray, columns: int, image_shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Tiles `[N, D]` images with values in [0, 1] into a `[rows * H, columns * W]` uint8 picture (1-pixel gaps)."""
    height, width = image_shape
    rows = -(-len(images) // columns)
    grid = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1), dtype=np.float64)
    for i, image in enumerate(np.asarray(images, dtype=np.float64)):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        grid[top : top + height, left : left + width] = image.reshape(height, width)
    return np.round(255 * np.clip(grid, 0.0, 1.0)).astype(np.uint8)


def save_png(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Writes a `[H, W]` uint8 picture as a greyscale PNG."""
    Image.fromarray(picture, mode="L").save(path)


def save_latent_scatter(path: str | os.PathLike, means: np.ndarray, labels: np.ndarray) -> None:
    """Writes a PNG scatter of `[N, 2]` posterior means, each point coloured by its `[N]` digit label 0..9."""
    from matplotlib.figure import Figure  # imported here: only this figure needs matplotlib

    figure = Figure(figsize=(6, 5.5), dpi=120)
    axes = figure.add_subplot()
    points = axes.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7)
    figure.colorbar(points, ax=axes, ticks=range(10), label="digit")
    axes.set(xlabel="$z_1$ (posterior mean)", ylabel="$z_2$ (posterior mean)", aspect="equal")
    figure.tight_layout()
    figure.savefig(path)
