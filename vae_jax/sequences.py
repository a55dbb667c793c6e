"""Sequences of frames of varying length, as models see them: padded to a common length, with their own length.

A sequence example is a `Sequence(frames [T, D], length [])`: the first `length` frames are the sequence, the
rest padding. A sequence model sums its terms over the first `length` frames only and draws the randomness of
frame t from `fold_in(key, t)`, so that padding changes none of its numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Sequence(NamedTuple):
    """One sequence, padded: a pytree that `jax.vmap` batches (fields then gain a leading `[B]`).

    Attributes:
        frames: `[T, D]` the frames (e.g. piano rolls: D = 88 keys, 1 where a key sounds), padded to T.
        length: `[]` int, the number of real frames, 1 <= length <= T.
    """

    frames: jax.Array
    length: jax.Array


def frame_mask(length: jax.Array, num_frames: int) -> jax.Array:
    """`[T]` float, 1 for the first `length` of `num_frames` frames and 0 for the padding."""
    return (jnp.arange(num_frames) < length).astype(jnp.result_type(float))
