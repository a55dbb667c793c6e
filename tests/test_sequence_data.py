"""The polyphonic-music datasets read from the real files (../shared/data/polyphonic), padded, hashed and bucketed."""

import itertools
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from vae_jax import sequences
from vae_jax.catalogue import SPLITS
from vae_jax.errors import ConfigError, DataError

# The split sizes and frames of the README of ../shared/data (Boulanger-Lewandowski et al., 2012).
SIZES = {"jsb_chorales": ((229, 76, 77), (13_807, 4_602, 4_725)),
         "nottingham": ((694, 173, 170), (176_561, 45_513, 44_463)),
         "musedata": ((524, 135, 124), (245_202, 82_755, 64_339)),
         "piano_midi": ((87, 12, 25), (75_911, 8_540, 19_036))}


@pytest.fixture(scope="module")
def jsb(polyphonic) -> dict[str, list[np.ndarray]]:
    return sequences.read_polyphonic("jsb_chorales", polyphonic)


def _one_line_error(name: str, folder: Path) -> str:
    """The message of the `DataError` that reading `name` from `folder` raises, checked to be one line."""
    with pytest.raises(DataError) as caught:
        sequences.read_polyphonic(name, folder)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", list(SIZES))
def test_split_sizes_and_frames_are_the_published_ones(polyphonic, name):
    assert sequences.SPLIT_SIZES[name] == SIZES[name]  # what `data.describe` says without reading
    splits = sequences.read_polyphonic(name, polyphonic)
    assert list(splits) == list(SPLITS)
    sizes, frames = SIZES[name]
    assert tuple(len(rolls) for rolls in splits.values()) == sizes
    assert tuple(sequences.num_frames(sequences.pad_split(rolls).lengths) for rolls in splits.values()) == frames
    for rolls in splits.values():
        assert all(roll.dtype == np.uint8 and roll.ndim == 2 and roll.shape[1] == sequences.NUM_KEYS
                   and roll.max() <= 1 for roll in rolls)
    assert any(roll.any() for roll in splits["train"])


def test_the_mat_file_of_jsb_chorales_is_the_authors_pickle_frame_for_frame(polyphonic, jsb):
    with (polyphonic / "JSB_Chorales.pickle").open("rb") as file:
        original = pickle.load(file, encoding="latin1")
    for split, key in zip(SPLITS, ("train", "valid", "test")):
        assert len(jsb[split]) == len(original[key])
        for roll, steps in zip(jsb[split], original[key]):
            expected = np.zeros((len(steps), 88), np.uint8)
            for t, notes in enumerate(steps):
                expected[t, [note - 21 for note in notes]] = 1
            np.testing.assert_array_equal(roll, expected)


@pytest.mark.parametrize("suffix", [".pickle", ".pkl"])
def test_the_authors_pickle_is_read_where_there_is_no_mat_file(polyphonic, jsb, tmp_path, suffix):
    shutil.copy(polyphonic / "JSB_Chorales.pickle", tmp_path / f"JSB_Chorales{suffix}")
    splits = sequences.read_polyphonic("jsb_chorales", tmp_path)
    assert list(splits) == list(SPLITS)
    for split in SPLITS:
        assert sequences.split_sha256(sequences.pad_split(splits[split])) == \
            sequences.split_sha256(sequences.pad_split(jsb[split]))
        assert all(roll.dtype == np.uint8 for roll in splits[split])


def test_rolls_from_notes():
    roll = sequences.rolls_from_notes([(21, 60), (), (np.int64(108),)])
    expected = np.zeros((3, 88), np.uint8)
    expected[0, [0, 39]] = 1
    expected[2, 87] = 1
    assert roll.dtype == np.uint8
    np.testing.assert_array_equal(roll, expected)
    assert sequences.rolls_from_notes([]).shape == (0, 88)
    for note in (20, 109):
        with pytest.raises(DataError, match=rf"MIDI note {note} is outside the piano's 21..108"):
            sequences.rolls_from_notes([(60,), (note, 64)])


def test_unknown_names_and_missing_folders_are_one_line_errors(polyphonic, tmp_path):
    message = _one_line_error("jsb", polyphonic)
    assert "unknown polyphonic dataset 'jsb'" in message
    assert all(name in message for name in sequences.POLYPHONIC)
    for folder, problem in ((tmp_path / "absent", f"data folder {tmp_path / 'absent'} does not exist"),
                            (None, "no data folder was given")):
        message = _one_line_error("jsb_chorales", folder)
        assert message.startswith(f"{problem}; pass --manual-dir the folder holding the files")
    message = _one_line_error("piano_midi", tmp_path)
    assert f"{tmp_path} has neither Piano_midi.mat nor Piano_midi.pickle" in message and "--manual-dir" in message


def _save_mat(folder: Path, rolls: list[np.ndarray], **replace: object) -> None:
    """`folder/JSB_Chorales.mat` whose three splits are `rolls`, with `replace` for some of its variables."""
    cell = np.empty((1, len(rolls)), dtype=object)
    for i, roll in enumerate(rolls):
        cell[0, i] = roll
    scipy.io.savemat(folder / "JSB_Chorales.mat", {"traindata": cell, "validdata": cell, "testdata": cell, **replace})


def test_a_well_formed_mat_file_is_read(tmp_path):
    rolls = [np.eye(3, 88, dtype=np.uint8), np.ones((1, 88), np.uint8)]
    _save_mat(tmp_path, rolls)
    splits = sequences.read_polyphonic("jsb_chorales", tmp_path)
    for split in SPLITS:
        assert len(splits[split]) == 2
        for roll, expected in zip(splits[split], rolls):
            np.testing.assert_array_equal(roll, expected)


@pytest.mark.parametrize("rolls, problem", [
    ([np.ones((4, 87), np.uint8)], r"has shape \(4, 87\), expected \(T >= 1, 88\)"),
    ([np.zeros((0, 88), np.uint8)], r"has shape \(0, 88\), expected \(T >= 1, 88\)"),
    ([np.full((2, 88), 2, np.uint8)], "holds values other than 0/1"),
])
def test_malformed_piano_rolls_are_one_line_errors(tmp_path, rolls, problem):
    _save_mat(tmp_path, [np.zeros((2, 88), np.uint8), *rolls])
    message = _one_line_error("jsb_chorales", tmp_path)
    assert "sequence 1 of train" in message and "replace the file with the original" in message
    assert re.search(problem, message)


def test_malformed_mat_files_are_one_line_errors(tmp_path):
    (tmp_path / "JSB_Chorales.mat").write_bytes(b"not a MATLAB file\n" * 10)
    message = _one_line_error("jsb_chorales", tmp_path)
    assert message.startswith(f"cannot read {tmp_path / 'JSB_Chorales.mat'}") and "replace it with the original" in \
        message
    scipy.io.savemat(tmp_path / "JSB_Chorales.mat", {"traindata": np.zeros((3, 88)), "validdata": np.zeros((3, 88))})
    assert "KeyError: 'testdata'" in _one_line_error("jsb_chorales", tmp_path)
    _save_mat(tmp_path, [np.zeros((2, 88), np.uint8)], testdata=np.zeros((3, 88)))
    assert "testdata is not a cell array of piano rolls; replace it" in _one_line_error("jsb_chorales", tmp_path)


@pytest.mark.parametrize("content, problem", [
    (b"\x80\x04 garbage", "cannot read"),
    (pickle.dumps({"train": [], "valid": []}), "KeyError: 'test'"),
    (pickle.dumps({"train": [[(60,)]], "valid": [[(60,)]], "test": [[(10,)]]}), "MIDI note 10 is outside"),
    (pickle.dumps({"train": [[(60.5,)]], "valid": [], "test": []}), "not a tuple of MIDI notes"),
    (pickle.dumps({"train": [[(60,)], []], "valid": [], "test": []}), r"sequence 1 of train has shape \(0, 88\)"),
])
def test_malformed_pickles_are_one_line_errors(tmp_path, content, problem):
    (tmp_path / "Nottingham.pickle").write_bytes(content)
    message = _one_line_error("nottingham", tmp_path)
    assert re.search(problem, message) and "replace" in message and "original" in message


def test_pad_split_round_trip(jsb):
    rolls = jsb["validation"]
    split = sequences.pad_split(rolls)
    longest = max(len(roll) for roll in rolls)
    assert split.frames.shape == (len(rolls), longest, 88) and split.frames.dtype == np.uint8
    assert split.lengths.dtype == np.int32 and split.lengths.tolist() == [len(roll) for roll in rolls]
    for i, roll in enumerate(rolls):
        np.testing.assert_array_equal(split.frames[i, : split.lengths[i]], roll)
        assert not split.frames[i, split.lengths[i]:].any()
    longer = sequences.pad_split(rolls, longest + 5)
    assert longer.frames.shape[1] == longest + 5 and not longer.frames[:, longest:].any()
    np.testing.assert_array_equal(longer.frames[:, :longest], split.frames)
    with pytest.raises(DataError, match=f"pad to at least {longest}"):
        sequences.pad_split(rolls, longest - 1)
    assert sequences.num_frames(split.lengths) == sum(len(roll) for roll in rolls) == 4_602


def test_split_sha256_ignores_padding_and_sees_each_note(jsb):
    rolls = jsb["test"]
    split = sequences.pad_split(rolls)
    digest = sequences.split_sha256(split)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert sequences.split_sha256(sequences.pad_split(rolls, split.frames.shape[1] + 13)) == digest
    flipped = split.frames.copy()
    flipped[5, split.lengths[5] - 1, 40] ^= 1  # the last frame of sequence 5
    assert sequences.split_sha256(sequences.PaddedSplit(flipped, split.lengths)) != digest
    # The lengths are hashed: the same frames cut into other sequences differ.
    merged = [np.concatenate(rolls[:2]), *rolls[2:]]
    assert sequences.split_sha256(sequences.pad_split(merged)) != digest
    assert sequences.split_sha256(sequences.pad_split(rolls[::-1])) != digest
    with pytest.raises(DataError, match="make it with pad_split"):
        sequences.split_sha256(sequences.PaddedSplit(split.frames.astype(np.int32), split.lengths))


def _padded_frames(lengths: np.ndarray, buckets: tuple[int, ...]) -> int:
    return int(sequences.assign_buckets(lengths, buckets).sum())


def _brute_force_buckets(lengths: np.ndarray, max_buckets: int) -> int:
    """The fewest padded frames over every partition of the sorted distinct lengths into at most `max_buckets`
    contiguous groups, each padded to its longest (every choice of cut points)."""
    values = np.unique(lengths)
    best = None
    for cuts in range(min(max_buckets, len(values))):
        for ends in itertools.combinations(range(len(values) - 1), cuts):
            buckets = tuple(int(values[end]) for end in ends) + (int(values[-1]),)
            padded = _padded_frames(lengths, buckets)
            best = padded if best is None else min(best, padded)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_bucket_lengths_are_optimal(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=rng.integers(5, 25))
    for max_buckets in range(1, 6):
        buckets = sequences.bucket_lengths(lengths, max_buckets)
        assert len(buckets) <= max_buckets and list(buckets) == sorted(set(buckets))
        assert buckets[-1] == lengths.max() and set(buckets) <= set(lengths.tolist())
        assert _padded_frames(lengths, buckets) == _brute_force_buckets(lengths, max_buckets)


def test_bucket_lengths_small_cases(jsb):
    lengths = sequences.pad_split(jsb["train"]).lengths
    assert sequences.bucket_lengths(lengths, 1) == (129,) == (int(lengths.max()),)
    # 10 of length 1 and one of 100: two buckets pad nothing; one pads 99 frames per short sequence.
    lengths = np.array([1] * 10 + [100])
    assert sequences.bucket_lengths(lengths, 2) == sequences.bucket_lengths(lengths, 9) == (1, 100)
    assert sequences.padding_fraction(lengths, (1, 100)) == 0.0
    assert sequences.padding_fraction(lengths, (100,)) == pytest.approx(990 / 1100)
    # [3, 5, 6, 6] in two buckets: {3} {5, 6, 6} pads 1 frame, {3, 5} {6, 6} pads 2.
    assert sequences.bucket_lengths(np.array([6, 3, 6, 5]), 2) == (3, 6)
    with pytest.raises(ConfigError, match="max_buckets is 0; it must be at least 1"):
        sequences.bucket_lengths(lengths, 0)
    with pytest.raises(DataError, match="at least one sequence"):
        sequences.bucket_lengths(np.array([], np.int32), 2)


def test_assign_buckets_and_padding_fraction():
    lengths = np.array([1, 2, 3, 4, 7])
    np.testing.assert_array_equal(sequences.assign_buckets(lengths, (2, 4, 7)), [2, 2, 4, 4, 7])
    assert sequences.padding_fraction(lengths, (2, 4, 7)) == pytest.approx(1 - 17 / 19)
    assert sequences.padding_fraction(lengths, (7,)) == pytest.approx(1 - 17 / 35)
    with pytest.raises(DataError, match="longer than the longest bucket"):
        sequences.assign_buckets(lengths, (2, 4))
    with pytest.raises(DataError, match="not ascending"):
        sequences.assign_buckets(lengths, (4, 2, 7))


@pytest.mark.parametrize("name", list(SIZES))
def test_more_buckets_waste_less_padding(polyphonic, name):
    lengths = sequences.pad_split(sequences.read_polyphonic(name, polyphonic)["train"]).lengths
    fractions = [sequences.padding_fraction(lengths, sequences.bucket_lengths(lengths, k)) for k in (1, 4, 8)]
    assert 0 < fractions[2] < fractions[1] < fractions[0] < 1
    assert fractions[0] == pytest.approx(1 - lengths.sum() / (len(lengths) * lengths.max()))
