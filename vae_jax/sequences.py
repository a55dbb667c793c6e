"""Sequences of frames of varying length, as models see them: padded to a common length, with their own length; and
the polyphonic-music datasets that are such sequences, read, padded, hashed and bucketed by length.

A sequence example is a `Sequence(frames [T, D], length [])`: the first `length` frames are the sequence, the
rest padding (a pytree: `jax.vmap` batches it). A sequence model sums its terms over the first `length` frames
only and draws the randomness of frame t from `fold_in(key, t)`, so that padding changes none of its numbers.
"""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
from collections.abc import Iterable
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vae_jax.catalogue import SPLITS
from vae_jax.errors import ConfigError, DataError, first_line


class Sequence(NamedTuple):
    """One sequence, padded: a pytree that `jax.vmap` batches (fields then gain a leading `[B]`).

    Attributes:
        frames: `[T, D]` the frames (e.g. piano rolls: D = 88 keys, 1 where a key sounds), padded to T.
        length: `[]` int, the number of real frames, 1 <= length <= T.
    """

    frames: np.ndarray  # or a jax.Array: this module imports no JAX (`vae_jax compare` reads the data layer)
    length: np.ndarray


# The polyphonic-music datasets of Boulanger-Lewandowski, Bengio & Vincent (2012): piano rolls of 88 keys (MIDI notes
# 21..108), one row per time step. Each is read from `<stem>.mat` (MATLAB cells `traindata`, `validdata`, `testdata`
# of `[T_i, 88]` 0/1 matrices), else from the authors' `<stem>.pickle` or `<stem>.pkl` (a dict `train`, `valid`,
# `test` of lists of sequences, each time step a tuple of the MIDI notes sounding).
POLYPHONIC: dict[str, str] = {"jsb_chorales": "JSB_Chorales", "nottingham": "Nottingham", "musedata": "MuseData",
                              "piano_midi": "Piano_midi"}
NUM_KEYS = 88
# (sequences, frames) of train, validation and test: the numbers of ../shared/data/README.md, tested on the files.
SPLIT_SIZES = {
    "jsb_chorales": ((229, 76, 77), (13_807, 4_602, 4_725)),
    "nottingham": ((694, 173, 170), (176_561, 45_513, 44_463)),
    "musedata": ((524, 135, 124), (245_202, 82_755, 64_339)),
    "piano_midi": ((87, 12, 25), (75_911, 8_540, 19_036)),
}
LOWEST_NOTE = 21  # MIDI note of the first key (A0); the last, 108, is C8
_MAT_KEYS = dict(zip(SPLITS, ("traindata", "validdata", "testdata")))
_PICKLE_KEYS = dict(zip(SPLITS, ("train", "valid", "test")))
_FIX = "pass --manual-dir the folder holding the files (e.g. ../shared/data/polyphonic)"


class PaddedSplit(NamedTuple):
    """A split's sequences padded to a common length.

    Attributes:
        frames: `[N, T_max, 88]` uint8 piano rolls, zeros after each sequence's end.
        lengths: `[N]` int32, the number of real frames of each sequence.
    """

    frames: np.ndarray
    lengths: np.ndarray


def read_polyphonic(name: str, folder: str | os.PathLike | None) -> dict[str, list[np.ndarray]]:
    """The three splits of a polyphonic-music dataset, each a list of `[T_i, 88]` uint8 0/1 piano rolls in file order.

    Reads `<folder>/<stem>.mat`; where there is none, the authors' `<stem>.pickle` (or `.pkl`), which is unpickled
    unchecked (no hash is known for the other three pickles): put there only a file you trust.

    Args:
        name: a key of `POLYPHONIC`.
        folder: the folder holding the files (`--manual-dir`).

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}` (`SPLITS`).

    Raises:
        DataError: an unknown name, a missing folder or file, or a malformed file.
    """
    if name not in POLYPHONIC:
        raise DataError(f"unknown polyphonic dataset {name!r}; choose one of {list(POLYPHONIC)}")
    if folder is None or not Path(folder).expanduser().is_dir():
        problem = "no data folder was given" if folder is None else f"data folder {folder} does not exist"
        raise DataError(f"{problem}; {_FIX}")
    folder, stem = Path(folder).expanduser(), POLYPHONIC[name]
    if (folder / f"{stem}.mat").is_file():
        return _read_mat(folder / f"{stem}.mat")
    for suffix in (".pickle", ".pkl"):
        if (folder / f"{stem}{suffix}").is_file():
            return _read_pickle(folder / f"{stem}{suffix}")
    raise DataError(f"{folder} has neither {stem}.mat nor {stem}.pickle; {_FIX}")


def _read_mat(path: Path) -> dict[str, list[np.ndarray]]:
    """The splits of a `.mat` file (`read_polyphonic`)."""
    import scipy.io  # only where a file is read

    try:
        content = scipy.io.loadmat(path)
        cells = {split: content[key] for split, key in _MAT_KEYS.items()}
    except Exception as error:  # scipy raises many kinds for a file that is not MATLAB (ValueError, TypeError, ...)
        raise DataError(f"cannot read {path} ({type(error).__name__}: {first_line(error)}); replace it with the "
                        f"original .mat file with cells {list(_MAT_KEYS.values())}") from None
    for split, cell in cells.items():
        if not isinstance(cell, np.ndarray) or cell.dtype != object:
            raise DataError(f"{path}: {_MAT_KEYS[split]} is not a cell array of piano rolls; replace it with the "
                            "original .mat file")
    return {split: [_checked_roll(roll, path, split, i) for i, roll in enumerate(cell.ravel())]
            for split, cell in cells.items()}


def _read_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    """The splits of the authors' pickle (`read_polyphonic`), each sequence converted by `rolls_from_notes`."""
    try:
        with path.open("rb") as file:
            content = pickle.load(file, encoding="latin1")
        splits = {split: list(content[key]) for split, key in _PICKLE_KEYS.items()}
    except Exception as error:  # unpickling raises many kinds (UnpicklingError, EOFError, KeyError, ...)
        raise DataError(f"cannot read {path} ({type(error).__name__}: {first_line(error)}); replace it with the "
                        f"authors' original pickle (a dict {list(_PICKLE_KEYS.values())})") from None
    try:
        return {split: [_checked_roll(rolls_from_notes(steps), path, split, i) for i, steps in enumerate(sequences)]
                for split, sequences in splits.items()}
    except (TypeError, ValueError) as error:  # a step that is not a collection of integers
        raise DataError(f"{path} holds a step that is not a tuple of MIDI notes ({first_line(error)}); replace it "
                        "with the authors' original pickle") from None


def rolls_from_notes(steps: SequenceOf[Iterable[int]]) -> np.ndarray:
    """One sequence of the authors' pickle as a piano roll.

    Args:
        steps: T time steps, each a collection (a tuple) of the MIDI notes sounding, 21..108.

    Returns:
        `[T, 88]` uint8, 1 at `[t, note - 21]` for each note of step t.

    Raises:
        DataError: a note outside 21..108.
    """
    notes = [[operator.index(note) for note in step] for step in steps]
    times = np.repeat(np.arange(len(notes)), [len(step) for step in notes])
    keys = np.array([note for step in notes for note in step], dtype=np.int64) - LOWEST_NOTE
    if keys.size and (keys.min() < 0 or keys.max() >= NUM_KEYS):
        bad = int((keys[(keys < 0) | (keys >= NUM_KEYS)] + LOWEST_NOTE)[0])
        raise DataError(f"MIDI note {bad} is outside the piano's {LOWEST_NOTE}..{LOWEST_NOTE + NUM_KEYS - 1}; "
                        "replace the file with the authors' original")
    roll = np.zeros((len(notes), NUM_KEYS), np.uint8)
    roll[times, keys] = 1
    return roll


def _checked_roll(roll: object, path: Path, split: str, index: int) -> np.ndarray:
    """`roll` as a `[T, 88]` uint8 array if it is a 0/1 piano roll of at least one frame, else a `DataError`."""
    roll = np.asarray(roll)
    where = f"{path}: sequence {index} of {split}"
    if roll.ndim != 2 or roll.shape[1] != NUM_KEYS or roll.shape[0] < 1:
        raise DataError(f"{where} has shape {roll.shape}, expected (T >= 1, {NUM_KEYS}); replace the file with the "
                        "original")
    if roll.dtype == object or not np.isin(roll, (0, 1)).all():
        raise DataError(f"{where} holds values other than 0/1; replace the file with the original")
    return roll.astype(np.uint8)


def pad_split(rolls: SequenceOf[np.ndarray], num_steps: int | None = None) -> PaddedSplit:
    """Sequences padded with zeros to a common length.

    Args:
        rolls: N piano rolls `[T_i, 88]`.
        num_steps: T, the padded length; default: the longest sequence's (at least as long as it).

    Returns:
        `PaddedSplit(frames [N, T, 88] uint8, lengths [N] int32)`.
    """
    lengths = np.array([len(roll) for roll in rolls], dtype=np.int32)
    longest = int(lengths.max(initial=0))
    num_steps = longest if num_steps is None else num_steps
    if num_steps < longest:
        raise DataError(f"cannot pad sequences of up to {longest} frames to {num_steps}; pad to at least {longest}")
    frames = np.zeros((len(rolls), num_steps, NUM_KEYS), np.uint8)
    for i, roll in enumerate(rolls):
        frames[i, : len(roll)] = roll
    return PaddedSplit(frames, lengths)


def num_frames(lengths: np.ndarray) -> int:
    """The number of real frames of sequences of `lengths` `[N]` (the denominator of nats per time step)."""
    return int(np.sum(lengths, dtype=np.int64))


def split_sha256(split: PaddedSplit) -> str:
    """The sha256 hex digest of a split's content, independent of its padding.

    The bytes hashed are the lengths (int32, little-endian), then each sequence's real frames `[length_i, 88]`
    (uint8, row-major) in order: two splits share the hash iff they hold the same sequences in the same order.
    """
    frames, lengths = np.asarray(split.frames), np.asarray(split.lengths)
    if (frames.dtype != np.uint8 or frames.ndim != 3 or lengths.shape != frames.shape[:1]
            or (lengths > frames.shape[1]).any()):
        raise DataError(f"a split of frames {frames.dtype}{list(frames.shape)} and lengths {list(lengths.shape)}, "
                        "expected uint8 [N, T, 88] and [N]; make it with pad_split")
    real = np.arange(frames.shape[1]) < lengths[:, None]  # [N, T]; boolean indexing keeps sequence order
    digest = hashlib.sha256(lengths.astype("<i4").tobytes())
    digest.update(np.ascontiguousarray(frames[real]).tobytes())
    return digest.hexdigest()


# Length buckets: sequences are padded to their bucket's length, not the longest's, so that little of a batch is
# padding and a model compiles once per bucket.
def bucket_lengths(lengths: np.ndarray, max_buckets: int) -> tuple[int, ...]:
    """The padded lengths, at most `max_buckets`, that waste the fewest frames on padding.

    Each sequence is padded to the smallest bucket length at least its own (`assign_buckets`); the buckets minimize
    the total padded frames. Exact: a dynamic program over the sorted distinct lengths, each group of consecutive
    ones padded to its longest, in O(max_buckets * distinct^2).

    Args:
        lengths: `[N]` int, the sequences' lengths (N >= 1).
        max_buckets: the most buckets, >= 1.

    Returns:
        The bucket lengths, ascending; the last is the longest sequence's length.
    """
    if max_buckets < 1:
        raise ConfigError(f"max_buckets is {max_buckets}; it must be at least 1")
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    if values.size == 0 or values[0] < 1:
        raise DataError("bucket_lengths needs at least one sequence, each of at least one frame")
    below = np.concatenate([[0], np.cumsum(counts)])  # [m + 1]: sequences shorter than values[j] at j
    groups = min(max_buckets, values.size)
    # cost[k, j]: the fewest padded frames of the sequences of the j shortest lengths in k groups; start[k, j] the
    # first length of the last of those groups.
    cost = np.full((groups + 1, values.size + 1), np.inf)
    cost[0, 0] = 0
    start = np.zeros((groups + 1, values.size + 1), np.int64)
    for k in range(1, groups + 1):
        for j in range(k, values.size + 1):
            options = cost[k - 1, :j] + values[j - 1] * (below[j] - below[:j])
            start[k, j] = np.argmin(options)
            cost[k, j] = options[start[k, j]]
    buckets, j = [], values.size
    for k in range(groups, 0, -1):
        buckets.append(int(values[j - 1]))
        j = start[k, j]
    return tuple(reversed(buckets))


def assign_buckets(lengths: np.ndarray, bucket_lengths: SequenceOf[int]) -> np.ndarray:
    """`[N]` int64: the padded length of each sequence, the smallest of `bucket_lengths` (ascending) at least its
    length `[N]`."""
    lengths, buckets = np.asarray(lengths), np.asarray(bucket_lengths, dtype=np.int64)
    if buckets.ndim != 1 or buckets.size == 0 or (np.diff(buckets) <= 0).any():
        raise DataError(f"bucket lengths {list(buckets)} are not ascending; make them with bucket_lengths")
    if lengths.size and lengths.max() > buckets[-1]:
        raise DataError(f"a sequence of {lengths.max()} frames is longer than the longest bucket ({buckets[-1]}); "
                        "make the buckets with bucket_lengths of these lengths")
    return buckets[np.searchsorted(buckets, lengths, side="left")]


def padding_fraction(lengths: np.ndarray, bucket_lengths: SequenceOf[int]) -> float:
    """The share of the padded frames that are padding: 1 - sum(lengths) / sum(each sequence's bucket length),
    for sequences of `lengths` `[N]` padded by `assign_buckets`; 0 where no frame is padding."""
    padded = int(np.sum(assign_buckets(lengths, bucket_lengths), dtype=np.int64))
    return 1.0 - num_frames(lengths) / padded if padded else 0.0
