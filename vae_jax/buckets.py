"""A split in parts that one compiled function each runs on: an image split is one part; a split of sequences is cut
into length buckets, each padded only to its own longest sequence (`sequences.bucket_lengths`), so that little of a
batch is padding and a model compiles once per bucket's shape.

A `Part` holds its examples and their indices in the split, which key their randomness (`objective.map_examples`):
whatever the parts, example i draws from `fold_in(examples_key, i)`.

An epoch on parts: `fold_in(train_key, epoch)` is split into a shuffle key and the base of the per-example keys, as
for a whole split (`train.epoch_batches`). The parts are taken in an order drawn from the shuffle key
(`epoch_schedule`); part p's examples are permuted by `fold_in(shuffle_key, p)` and cut into batches
(`part_batches`). Training parts are batch-aligned (`sequence_parts` with a `batch_size`): each bucket but the
longest holds a whole number of batches, its longest sequences moved up into the next bucket, so an epoch leaves out
fewer than one batch, as on a whole split.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vae_jax import parallel, train
from vae_jax.errors import ConfigError
from vae_jax.sequences import PaddedSplit, Sequence, bucket_lengths
from vae_jax.train import EpochResult, ScanCarry, TrainState

MAX_BUCKETS = 4  # buckets of a split of sequences (`sequences.padding_fraction` tells what they leave padded)


class Part(NamedTuple):
    """Examples that one compiled function runs on.

    Attributes:
        examples: a pytree of arrays with a leading `[N_p]` axis: `[N_p, D]` uint8 images, or
            `Sequence(frames [N_p, T_p, D] uint8, length [N_p])`.
        indices: `[N_p]` int32 the examples' positions in their split.
    """

    examples: Any
    indices: np.ndarray


def whole(pixels: Any) -> list[Part]:
    """An image split (`[N, D]`) as one part."""
    return [Part(pixels, np.arange(len(pixels), dtype=np.int32))]


def sequence_parts(split: PaddedSplit, max_buckets: int = MAX_BUCKETS, batch_size: int = 1) -> list[Part]:
    """The length buckets of a split of sequences (`sequences.bucket_lengths`), each padded to its longest; with
    `batch_size` > 1, batch-aligned: in ascending order, the `N_b mod batch_size` longest sequences of each bucket but
    the last move up into the next. Buckets left empty are dropped."""
    lengths = np.asarray(split.lengths)
    order = np.argsort(lengths, kind="stable")  # by length, ties by position
    ends = np.searchsorted(lengths[order], bucket_lengths(lengths, max_buckets), side="right")
    if batch_size > 1:
        ends = np.array([end - end % batch_size for end in ends[:-1]] + [len(lengths)])
    parts = []
    for start, end in zip([0, *ends[:-1]], ends):
        indices = np.sort(order[start:end]).astype(np.int32)
        if indices.size:
            num_frames = int(lengths[indices].max())
            parts.append(Part(Sequence(split.frames[indices, :num_frames], lengths[indices]), indices))
    return parts


def on_device(parts: list[Part], mesh: Mesh | None) -> list[Part]:
    """`parts` with their examples on the device, replicated over `mesh` (`parallel.replicate`)."""
    return [part._replace(examples=parallel.replicate(part.examples, mesh)) for part in parts]


def part_steps(parts: list[Part], batch_size: int) -> list[int]:
    """The optimizer steps of each part in an epoch: `N_p // batch_size` (a part smaller than a batch: none)."""
    return [len(part.indices) // batch_size for part in parts]


def check_batch_size(parts: list[Part], batch_size: int) -> None:
    """Raises `ConfigError` where an epoch on `parts` would take no step."""
    if sum(part_steps(parts, batch_size)) == 0:
        raise ConfigError(f"batch_size={batch_size} exceeds every part of the training split (the largest holds "
                          f"{max(len(part.indices) for part in parts)} examples), so an epoch would take no step")


def epoch_schedule(epoch_key: jax.Array, steps: list[int]) -> list[tuple[int, int]]:
    """`(part, steps of the epoch before it)` for each part, in the order the epoch takes them: drawn from the
    shuffle key for several parts (`fold_in(shuffle_key, P)`, which no part's permutation uses), one part alone."""
    order = [0]
    if len(steps) > 1:
        shuffle_key, _ = jax.random.split(epoch_key)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, len(steps)), len(steps))).tolist()
    offsets = np.concatenate([[0], np.cumsum([steps[part] for part in order])])
    return [(part, int(offset)) for part, offset in zip(order, offsets)]


def locate(schedule: list[tuple[int, int]], steps: list[int], step: int) -> tuple[int, int, int]:
    """`(part, its steps before in the epoch, the step within it)` of the epoch's step `step`."""
    for part, offset in schedule:
        if offset <= step < offset + steps[part]:
            return part, offset, step - offset
    raise ValueError(f"step {step} is past the epoch's {sum(steps)} steps")


def over_parts(fn: Any, parts: list[Part]) -> Any:
    """`fn(params, examples, key, indices=)` (e.g. `evaluate.evaluate_elbo` with its model bound), whose outputs
    have a leading axis over the examples, as a function `(params, key)` of the whole split: part by part, the
    outputs put back in the split's order (NumPy arrays)."""
    order = np.argsort(np.concatenate([part.indices for part in parts]))

    def over_all(params: Any, key: jax.Array) -> Any:
        outputs = [fn(params, part.examples, key, indices=part.indices) for part in parts]
        return jax.tree.map(lambda *each: np.concatenate([np.asarray(out) for out in each])[order], *outputs)

    return over_all


def part_batches(epoch_key: jax.Array, part_number: int | None, num_examples: int,
                 batch_size: int) -> tuple[jax.Array, jax.Array]:
    """The epoch's per-example key base and the `[steps, batch_size]` positions in part `part_number` of its
    batches: a permutation by `fold_in(shuffle_key, part_number)` less its last `num_examples mod batch_size`. For a
    whole split (`part_number` None): `train.epoch_batches`, whose permutation's key is the shuffle key itself."""
    if part_number is None:
        return train.epoch_batches(epoch_key, num_examples, batch_size)
    shuffle_key, examples_key = jax.random.split(epoch_key)
    num_steps = num_examples // batch_size
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, part_number), num_examples)
    return examples_key, order[: num_steps * batch_size].reshape(num_steps, batch_size)


def train_part(
    state: TrainState,
    part: Part,
    epoch_key: jax.Array,
    *,
    part_number: int | None,
    batch_size: int,
    first_step: jax.Array | int = 0,
    epoch_offset: jax.Array | int = 0,
    num_steps: int,
    **step_options: Any,
) -> tuple[TrainState, EpochResult]:
    """The steps `first_step .. first_step + num_steps - 1` of part `part_number` (None: a whole split, one part) in
    an epoch, one `lax.scan` of `train.scan_steps` (jit this; `part_number`, `batch_size`, `num_steps` static): the
    examples of each batch gathered from `part`, keyed by their indices in the split. `epoch_offset` is the epoch's
    steps before the part's (`EpochResult.failed_step` counts within the epoch). `step_options` as in
    `train.train_epoch`."""
    examples_key, batches = part_batches(epoch_key, part_number, len(part.indices), batch_size)
    batches = jax.lax.dynamic_slice_in_dim(batches, first_step, num_steps)

    def batch_of(positions: jax.Array) -> tuple[Any, jax.Array]:
        return jax.tree.map(lambda a: a[positions], part.examples), jnp.asarray(part.indices)[positions]

    return train.scan_steps(state, ScanCarry.start(), batches, examples_key, batch_of, epoch_offset + first_step,
                            **step_options)[:2]


train_part_jit = jax.jit(train_part, static_argnames=(
    "part_number", "batch_size", "num_steps", "objective", "dynamic_binarization", "mesh", "progress",
    "progress_every"))
