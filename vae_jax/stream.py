"""Splits larger than the device: above a device memory budget, a split stays on the host and reaches the device a
chunk at a time, read from its cached `.npy` file (a memory map) by a Grain input pipeline that prefetches the next
chunks while the device computes the current one.

Nothing random depends on the path a split takes: a streamed epoch takes the batches of `train.epoch_batches` in
its order (computed by the same JAX function, then brought to the host) and runs the same step function as the
resident epoch (`train.scan_steps`), so it ends with the same parameters, bit for bit; a streamed evaluation keys
each example by its index in the split, as a resident one does.

A split is resident iff its bytes fit the budget (`--device-memory-budget`, default `DEFAULT_DEVICE_MEMORY_BUDGET`).
A streamed split's chunks hold at most a quarter of the budget (and `MAX_CHUNK_BYTES`; at least one batch), and at
most four are on the device at once: the host dispatches a chunk's computation once the one before the last is done
(one computing, the next queued behind it), Grain holds the next one on the device and moves the one after.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax import parallel, train
from vae_jax.errors import ConfigError
from vae_jax.train import EpochResult, ScanCarry, TrainState

# 4 GiB keeps MNIST-sized data (39 MB), CelebA at 64x64 (2.0 GB) and downsampled ImageNet at 32x32 (3.9 GB) on the
# device, and still leaves most of a 16 GB accelerator to the model; ImageNet at 64x64 (15.7 GB) streams.
DEFAULT_DEVICE_MEMORY_BUDGET = 4 * 2**30
MAX_CHUNK_BYTES = 64 * 2**20  # larger chunks gain nothing once a chunk's transfer hides behind its compute
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?")


def parse_budget(budget: int | str) -> int:
    """A device memory budget in bytes, from an int or a size such as `512M`, `2G`, `1.5G` or `1048576` (K, M, G and
    T are powers of 1024; `MB`, `MiB` and the lower case alike). `ConfigError` for anything else."""
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget
    found = _SIZE.fullmatch(budget.strip().upper()) if isinstance(budget, str) else None
    if found is None:
        raise ConfigError(f"--device-memory-budget {budget!r} is not a size; give bytes or a number with K, M, G or "
                          "T (powers of 1024), e.g. 512M or 2G")
    return int(float(found[1]) * _UNITS[found[2]])


def format_size(num_bytes: int) -> str:
    """`num_bytes` for a person: `39.2 MiB`."""
    for unit in ("T", "G", "M", "K"):
        if num_bytes >= _UNITS[unit]:
            return f"{num_bytes / _UNITS[unit]:.1f} {unit}iB"
    return f"{num_bytes} B"


@dataclasses.dataclass(frozen=True, eq=False)
class Streamed:
    """A split that stays on the host and reaches the device a chunk at a time.

    Attributes:
        pixels: `[N, D]` uint8 examples, a read-only memory map of the cached split (`data.load_split(mmap=True)`).
        chunk_bytes: the most bytes of examples in one chunk.
        mesh: the chunks are replicated over this mesh (on the default device without one), as a resident split is.
    """

    pixels: np.ndarray
    chunk_bytes: int
    mesh: Mesh | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: Any) -> np.ndarray:
        """Rows read from the host: a slice, or `[...]` int indices (NumPy's or JAX's), as NumPy indexes."""
        return np.asarray(self.pixels[index if isinstance(index, slice) else np.asarray(index)])

    def rows_per_chunk(self, row_bytes: int) -> int:
        """How many rows of `row_bytes` bytes (a batch, a step) one chunk holds: at least one."""
        return max(1, self.chunk_bytes // row_bytes)


def place(pixels: np.ndarray, budget: int, mesh: Mesh | None, name: str,
          log: Callable[[str], None]) -> jax.Array | Streamed:
    """`pixels [N, D]` on the device (replicated over `mesh`) if its bytes fit `budget`, else `Streamed`, saying so
    in one line to `log` that names the split as `name` (e.g. `binarized_mnist/train`)."""
    if pixels.nbytes <= budget:
        return parallel.replicate(pixels, mesh)
    split = Streamed(pixels, min(MAX_CHUNK_BYTES, budget // 4), mesh)
    log(f"{name} ({format_size(pixels.nbytes)}) streams from the host in chunks: it exceeds the device memory budget "
        f"of {format_size(budget)} (--device-memory-budget)")
    return split


def prefetched(split: Streamed, read: Callable[[int], Any], starts: Sequence[int]) -> Iterator[Any]:
    """`read(start)` for each of `starts` (host arrays), on the device in order: Grain reads the next chunks in a
    thread while the device computes, and a second thread moves the next one to the device."""
    import grain  # only a streamed split needs it

    host = grain.MapDataset.source(starts).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    device = grain.experimental.ThreadPrefetchIterDataset(
        host.map(lambda chunk: parallel.replicate(chunk, split.mesh)), prefetch_buffer_size=1)
    iterator = iter(device)
    try:
        yield from iterator
    finally:
        iterator.close()


@functools.partial(jax.jit, static_argnames=("objective", "dynamic_binarization", "mesh", "progress",
                                             "progress_every"))
def _train_chunk(state: TrainState, carry: ScanCarry, pixels: jax.Array, indices: jax.Array, examples_key: jax.Array,
                 first_step: jax.Array, done: jax.Array, kl_weight: jax.Array | float, *, objective: Any = train.ELBO,
                 dynamic_binarization: bool = False, mesh: Mesh | None = None,
                 progress: Callable[..., None] | None = None,
                 progress_every: int = 50) -> tuple[TrainState, EpochResult, ScanCarry]:
    """`train.scan_steps` over a chunk of a piece of an epoch: `pixels [S, B, D]` uint8 and their `indices [S, B]`."""
    return train.scan_steps(state, carry, (pixels, indices), examples_key, lambda batch: batch, first_step, done,
                            progress=progress, progress_every=progress_every, objective=objective,
                            kl_weight=kl_weight, dynamic_binarization=dynamic_binarization, mesh=mesh)


def train_epoch(
    state: TrainState,
    split: Streamed,
    epoch_key: jax.Array,
    *,
    batch_size: int,
    kl_weight: jax.Array | float = 1.0,
    first_step: jax.Array | int = 0,
    num_steps: int | None = None,
    **options: Any,
) -> tuple[TrainState, EpochResult]:
    """`train.train_epoch` on a split streamed from the host, with the same results bit for bit: the epoch's batches
    (`train.epoch_batches`) are read on the host and reach the device a chunk of steps at a time, each chunk one
    compiled `train.scan_steps`; each chunk's steps carry on from the last's.

    Args:
        state: the train state (replicated over `split.mesh`, if any).
        split: the training split, `[N, D]` uint8 on the host.
        epoch_key, batch_size, kl_weight, first_step, num_steps: as in `train.train_epoch` (`first_step` is read on
            the host here).
        **options: `objective`, `dynamic_binarization`, `mesh`, `progress` and `progress_every`, as there.

    Returns:
        The new state and the `EpochResult` of the steps run.
    """
    examples_key, batches = train.epoch_batches(epoch_key, len(split), batch_size)
    first, num_steps = int(first_step), train.piece_steps(num_steps, batches.shape[0])
    if not 0 <= first <= batches.shape[0] - num_steps:
        raise ConfigError(f"first_step={first} and num_steps={num_steps} do not fit an epoch of {batches.shape[0]} "
                          "steps")
    order = np.asarray(batches)[first:first + num_steps]  # [num_steps, B]: the resident epoch's own batches
    size = split.rows_per_chunk(batch_size * split.shape[1])

    def read(start: int) -> tuple[np.ndarray, np.ndarray]:
        return split[order[start:start + size]], order[start:start + size]

    starts, carry, parts = range(0, num_steps, size), ScanCarry.start(), []
    for done, (pixels, indices) in zip(starts, prefetched(split, read, starts), strict=True):
        previous = carry
        state, part, carry = _train_chunk(state, previous, pixels, indices, examples_key, jnp.int32(first),
                                          jnp.int32(done), kl_weight, **options)
        jax.block_until_ready(previous)  # the chunk before is done (see the module's note)
        parts.append(part)
    loss, terms = jax.tree.map(lambda *pieces: jnp.concatenate(pieces), *[(part.loss, part.terms) for part in parts])
    return state, EpochResult(loss, terms, carry.failed_step)


def chunk_input(split: jax.Array | Streamed, batch_size: int) -> jax.Array | jax.ShapeDtypeStruct:
    """What an evaluation over `split` (`over_split`) is compiled for: the resident split itself, or the shape of one
    chunk of a streamed one."""
    if not isinstance(split, Streamed):
        return split
    sharding = None if split.mesh is None else NamedSharding(split.mesh, PartitionSpec())
    rows = split.rows_per_chunk(batch_size * split.shape[1]) * batch_size
    return jax.ShapeDtypeStruct((rows, split.shape[1]), split.pixels.dtype, sharding=sharding)


def over_split(fn: Callable[..., Any], split: jax.Array | Streamed, batch_size: int) -> Callable[[Any, jax.Array], Any]:
    """`fn(params, pixels [C, D], key, first_index=)` (e.g. `evaluate.evaluate_elbo` with its model bound, or its
    compiled form), whose outputs have a leading `[C]` axis, as a function `(params, key)` of the whole split: at once
    for a resident split (`first_index` 0); else a chunk of `chunk_input`'s `C` rows at a time, `first_index` the
    index in the split of the chunk's first row, the last chunk zero-padded and its padding's outputs dropped. The
    outputs have a leading `[N]` axis (NumPy arrays for a streamed split)."""
    if not isinstance(split, Streamed):
        return lambda params, key: fn(params, split, key, first_index=jnp.int32(0))
    rows = chunk_input(split, batch_size).shape[0]
    starts = range(0, len(split), rows)

    def read(start: int) -> np.ndarray:
        chunk = split[start:start + rows]
        return np.pad(chunk, ((0, rows - len(chunk)), (0, 0)))

    def over_chunks(params: Any, key: jax.Array) -> Any:
        outputs = []
        for start, pixels in zip(starts, prefetched(split, read, starts), strict=True):
            outputs.append(fn(params, pixels, key, first_index=jnp.int32(start)))
            jax.block_until_ready(outputs[-2:-1])  # the chunk before is done (see the module's note)
        return jax.tree.map(lambda *parts: np.concatenate([np.asarray(part) for part in parts])[:len(split)], *outputs)

    return over_chunks


def piece_of(options: dict[str, Any]) -> Callable[[int, int], Any]:
    """`new_piece(part, steps)`: `train_epoch` as the trainer's piece of an epoch of `steps` steps on a streamed split
    (one part, `vae_jax.buckets.whole`), with `options` (`train_epoch`'s)."""
    def new_piece(part: int, steps: int) -> Callable[..., Any]:
        def piece(state: TrainState, whole: Any, epoch_key: jax.Array, *, epoch_offset: Any,
                  **step_options: Any) -> Any:
            return train_epoch(state, whole.examples, epoch_key, num_steps=steps, **options, **step_options)
        return piece
    return new_piece
