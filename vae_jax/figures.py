"""All figures of a trained model: prior samples, reconstructions, latent interpolations, the manifold and the
labelled scatter of a 2-D code, as PNG files (Pillow; matplotlib for the scatter).

Each figure uses one of the model's optional methods (`vae_jax.contract`): `generate`, `reconstruct`, `encode` and
`decode`; a model without one simply has no such figure.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.contract import Model, Params


@functools.partial(jax.jit, static_argnames=("model", "num_images"))
def generate(model: Model, params: Params, key: jax.Array, num_images: int) -> jax.Array:
    """`model.generate`: data means at `num_images` draws from the prior; `[N, D]`."""
    return model.generate(params, key, num_images)


@functools.partial(jax.jit, static_argnames="model")
def reconstruct(model: Model, params: Params, x: jax.Array) -> jax.Array:
    """`model.reconstruct`: data means at the posterior means of `x [N, D]`; `[N, D]`."""
    return model.reconstruct(params, x)


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def interpolate(model: Model, params: Params, x_start: jax.Array, x_end: jax.Array, num_steps: int) -> jax.Array:
    """Data means decoded along the straight line between the codes (`model.encode`) of two sets of digits.

    Args:
        model, params: the model and its variables.
        x_start, x_end: `[P, D]` pixels in {0, 1}.
        num_steps: points on each line, both ends included.

    Returns:
        `[P, num_steps, D]`.
    """
    start, end = model.encode(params, x_start), model.encode(params, x_end)
    t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]
    return model.decode(params, start[:, None, :] + t * (end - start)[:, None, :])


@functools.partial(jax.jit, static_argnames=("model", "grid_size"))
def latent_manifold(model: Model, params: Params, grid_size: int) -> jax.Array:
    """The learned manifold of a 2-D code (Kingma & Welling, 2013, Fig. 4).

    Decodes z = (Phi^-1(u), Phi^-1(v)) on an evenly spaced `grid_size x grid_size` grid of (u, v) in (0, 1)^2,
    so the grid covers the quantiles of N(0, I). Rows run from high to low z_2, columns from low to high z_1.

    Returns:
        `[grid_size * grid_size, D]` data means, row-major.
    """
    quantiles = jax.scipy.special.ndtri((jnp.arange(grid_size, dtype=jnp.float32) + 0.5) / grid_size)
    z1, z2 = jnp.meshgrid(quantiles, quantiles[::-1])
    return model.decode(params, jnp.stack([z1, z2], axis=-1).reshape(-1, 2))


def image_grid(images: np.ndarray, columns: int, image_shape: tuple[int, int]) -> np.ndarray:
    """Tiles `[N, D]` greyscale images of `image_shape` `(H, W)` with values in [0, 1] into a
    `[rows * H, columns * W]` uint8 picture (1-pixel gaps)."""
    height, width = image_shape
    rows = -(-len(images) // columns)
    grid = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1), dtype=np.float64)
    for i, image in enumerate(np.asarray(images, dtype=np.float64)):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        grid[top : top + height, left : left + width] = image.reshape(height, width)
    return np.round(255 * np.clip(grid, 0.0, 1.0)).astype(np.uint8)


def save_png(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Writes a `[H, W]` uint8 picture as a greyscale PNG."""
    from PIL import Image

    Image.fromarray(picture, mode="L").save(path)


def save_latent_scatter(path: str | os.PathLike, codes: np.ndarray, labels: np.ndarray) -> None:
    """Writes a PNG scatter of `[N, 2]` codes (posterior means), each point coloured by its `[N]` digit label."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5.5), dpi=120)
    axes = figure.add_subplot()
    points = axes.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7)
    figure.colorbar(points, ax=axes, ticks=range(10), label="digit")
    axes.set(xlabel="$z_1$ (posterior mean)", ylabel="$z_2$ (posterior mean)", aspect="equal")
    figure.tight_layout()
    figure.savefig(path)


def save_piano_rolls(path: str | os.PathLike, rolls: dict[str, np.ndarray], lowest_note: int = 21) -> None:
    """Writes a PNG of piano rolls, one panel per `[T, K]` roll of `rolls` (titled by its key): time to the right,
    keys upwards (MIDI notes `lowest_note` ..), a sounding key (or its probability) dark."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 1.6 * len(rolls) + 0.4), dpi=110)
    for index, (title, roll) in enumerate(rolls.items(), start=1):
        axes = figure.add_subplot(len(rolls), 1, index)
        roll = np.asarray(roll, dtype=np.float64)
        axes.imshow(roll.T, origin="lower", aspect="auto", cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest",
                    extent=(0, roll.shape[0], lowest_note, lowest_note + roll.shape[1]))
        axes.set_title(title, fontsize=9, loc="left")
        axes.set_ylabel("MIDI note", fontsize=8)
        axes.tick_params(labelsize=7)
    axes.set_xlabel("time step")
    figure.tight_layout()
    figure.savefig(path)


def sample_figures(model: Model, params: Params, out: str | os.PathLike, test_inputs: jax.Array, key: jax.Array,
                   num_images: int, labelled: tuple[np.ndarray, np.ndarray] | None,
                   image_shape: tuple[int, int], pixel_max: float = 1.0) -> dict[str, Path]:
    """Writes the figures that the model's methods allow and returns their paths: prior samples to `out`, and
    beside it (`<out stem>_<name>.png`) test digits next to their reconstructions, interpolations between pairs of
    test digits (10 steps each), and for a 2-D code the decoded manifold and the scatter of `labelled` digits.

    Args:
        model, params: the model and its variables.
        out: path of the prior-samples PNG.
        test_inputs: `[2 * num_images, D]` binarized test digits.
        key: the key of the prior samples.
        num_images: images per grid.
        labelled: `(inputs [N, D] binarized, labels [N])` for the scatter of a 2-D code, or None.
        image_shape: `(H, W)` of an image (`data.Dataset.image_shape`).
        pixel_max: the largest value of `test_inputs` (255 for 8-bit grey levels), shown as white; the model's
            means are in [0, 1] already.
    """
    columns = int(np.ceil(np.sqrt(num_images)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}

    def write(name: str, images: np.ndarray, grid_columns: int) -> None:
        figures[name] = out if name == "samples" else out.with_name(f"{out.stem}_{name}.png")
        save_png(figures[name], image_grid(images, grid_columns, image_shape))

    if _has(model, "generate"):
        write("samples", np.asarray(generate(model, params, key, num_images)), columns)
    inputs = test_inputs[:num_images]
    if _has(model, "reconstruct"):
        pairs = np.stack([np.asarray(inputs) / pixel_max, np.asarray(reconstruct(model, params, inputs))], axis=1)
        write("reconstructions", pairs.reshape(-1, inputs.shape[-1]), 2 * columns)
    if not (_has(model, "encode") and _has(model, "decode")):
        return figures
    rows = min(columns, len(test_inputs) // 2)
    lines = interpolate(model, params, test_inputs[:rows], test_inputs[rows:2 * rows], 10)
    write("interpolations", np.asarray(lines).reshape(rows * 10, -1), 10)
    if code_size(model, params, test_inputs) == 2:
        write("manifold", np.asarray(latent_manifold(model, params, 20)), 20)
        if labelled is not None:
            figures["scatter"] = out.with_name(f"{out.stem}_scatter.png")
            codes = np.asarray(jax.jit(model.encode)(params, labelled[0]))
            save_latent_scatter(figures["scatter"], codes, labelled[1])
    return figures


def code_size(model: Model, params: Params, inputs: jax.Array) -> int | None:
    """The size of the model's code (`encode`'s last axis), or None for a model without `encode`."""
    if not _has(model, "encode"):
        return None
    return jax.eval_shape(model.encode, params, inputs[:1]).shape[-1]


def _has(model: Any, method: str) -> bool:
    try:
        return callable(getattr(model, method))
    except AttributeError:
        return False
