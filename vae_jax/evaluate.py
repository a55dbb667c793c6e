"""Evaluation on whole splits, prior samples, reconstructions and PNG grids."""

from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vae_jax.objective import ElboTerms, Params, batch_elbo_terms


@functools.partial(jax.jit, static_argnames=("encoder", "decoder", "batch_size", "dynamic_binarization", "num_samples"))
def evaluate_elbo(
    params: Params,
    pixels: jax.Array,
    key: jax.Array,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    batch_size: int,
    dynamic_binarization: bool = False,
    num_samples: int = 1,
) -> ElboTerms:
    """Per-example negative-ELBO terms of a whole split, computed `batch_size` examples at a time.

    Example `i` uses the key `fold_in(key, i)`, so the result does not depend on `batch_size`.

    Args:
        params: `{"encoder": ..., "decoder": ...}` variables.
        pixels: `[N, D]` uint8 split.
        key: the evaluation key.
        encoder, decoder: the modules.
        batch_size: examples per chunk (bounds memory).
        dynamic_binarization: binarize grey levels with a Bernoulli draw keyed by the example.
        num_samples: Monte-Carlo samples of z per example.

    Returns:
        `ElboTerms`, each `[N]`.
    """
    num_examples = pixels.shape[0]
    num_chunks = -(-num_examples // batch_size)
    padded = jnp.pad(pixels, ((0, num_chunks * batch_size - num_examples), (0, 0)))
    indices = jnp.arange(num_chunks * batch_size)

    def chunk_terms(chunk: tuple[jax.Array, jax.Array]) -> ElboTerms:
        chunk_pixels, chunk_indices = chunk
        return batch_elbo_terms(
            params,
            chunk_pixels,
            chunk_indices,
            key,
            encoder=encoder,
            decoder=decoder,
            num_samples=num_samples,
            dynamic_binarization=dynamic_binarization,
        )

    chunks = (padded.reshape(num_chunks, batch_size, -1), indices.reshape(num_chunks, batch_size))
    terms = jax.lax.map(chunk_terms, chunks)
    return jax.tree.map(lambda t: t.reshape(-1)[:num_examples], terms)


def summarize(terms: ElboTerms) -> dict[str, float]:
    """Means over examples of `[N]` terms, with the standard error of the mean of `nelbo`."""
    nelbo, rec, kl = (np.asarray(t, dtype=np.float64) for t in terms)
    return {
        "nelbo": float(nelbo.mean()),
        "nelbo_stderr": float(nelbo.std(ddof=1) / math.sqrt(len(nelbo))) if len(nelbo) > 1 else 0.0,
        "rec": float(rec.mean()),
        "kl": float(kl.mean()),
        "num_examples": len(nelbo),
    }


@functools.partial(jax.jit, static_argnames=("decoder", "num_images", "latent_dim"))
def sample_prior(params: Params, key: jax.Array, *, decoder: nn.Module, num_images: int, latent_dim: int) -> jax.Array:
    """Bernoulli means sigmoid(decoder(z)) for `num_images` draws z ~ N(0, I); returns `[num_images, D]`."""
    z = jax.random.normal(key, (num_images, latent_dim))
    return jax.nn.sigmoid(decoder.apply(params["decoder"], z))


@functools.partial(jax.jit, static_argnames=("encoder", "decoder"))
def reconstruct(params: Params, x: jax.Array, *, encoder: nn.Module, decoder: nn.Module) -> jax.Array:
    """Bernoulli means of p(x | z = posterior mean) for `x [N, D]` in {0, 1}; returns `[N, D]`."""
    mean, _ = encoder.apply(params["encoder"], x)
    return jax.nn.sigmoid(decoder.apply(params["decoder"], mean))


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
