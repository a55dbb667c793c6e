"""Datasets as values, and their splits as whole uint8 arrays. With `vae_jax.catalogue`, the data layer: the only
modules that state a size or touch TFDS.

A `Dataset` (from `describe`) says what the rest of vae_jax needs: the shape of one example, the form its values take
(`binary` 0/1 pixels, `dynamic` grey levels binarized afresh per use, or `8bit` grey levels as they are), the sizes of
its splits and whether it has labels. `load_split` gives a split's pixels, flattened, in a fixed order;
`split_hash` the hash of those bytes (the order is part of the protocol: per-example keys and "the first N examples"
follow it).

Each split is decoded once and cached as `<data_dir>/vae_jax_cache/<dataset>/<split>.npy` (the labels of a labelled
dataset as `<split>_labels.npy`, the split's hash as `<split>.sha256`, and the description of a TFDS dataset that
`vae_jax.catalogue` does not name as `dataset.json`), so the cached path imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vae_jax.catalogue import ENTRIES, SPLITS, Entry, read_frey_faces, tfds_entry, tfds_splits
from vae_jax.errors import DataError, StorageError, first_line, os_cause
from vae_jax.sequences import (
    NUM_KEYS,
    POLYPHONIC,
    SPLIT_SIZES,
    PaddedSplit,
    Sequence,
    pad_split,
    read_polyphonic,
    split_sha256,
)

NAMED_DATASETS = (*ENTRIES, *POLYPHONIC)  # any other name is a TFDS image dataset
LABELED_DATASET = "mnist"  # the labels of the latent scatter figure
HASH_CHARS = 16  # hex characters kept of a split's sha256
DESCRIPTION_FILE = "dataset.json"  # a TFDS dataset's `Entry`, kept in its cache folder
# TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
DEFAULT_DATA_DIR = Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset is, for everything outside the data layer: models read the size of an example from here.

    Attributes:
        name: `binarized_mnist`, `mnist`, `fashion_mnist`, `frey_faces` or a TFDS image dataset's name.
        image_shape: `(height, width, channels)` of one image; an example reaches a model flattened, `[D]`.
        form: `binary` (0/1 pixels), `dynamic` (grey levels 0..255, binarized afresh per use, keyed per example) or
            `8bit` (grey levels 0..255 reach the model as they are, as floats).
        split_sizes: examples in train, validation and test (`SPLITS`), in that order.
        labelled: whether it has class labels (`load_labels`).
        split_frames: for a dataset of sequences (form `sequence`: binary frames, e.g. piano rolls), the frames of
            train, validation and test; its `image_shape` is that of one frame, `(1, D, 1)`, a row of the `[T, D]`
            sequence (`load_sequences`). None for images.
    """

    name: str
    image_shape: tuple[int, int, int]
    form: str
    split_sizes: tuple[int, int, int]
    labelled: bool = False
    split_frames: tuple[int, int, int] | None = None

    @property
    def sequential(self) -> bool:
        """Whether its examples are sequences of frames (`load_sequences`), not images (`load_split`)."""
        return self.form == "sequence"

    @property
    def dynamic(self) -> bool:
        """Whether its grey levels are binarized dynamically."""
        return self.form == "dynamic"

    @property
    def eight_bit(self) -> bool:
        """Whether its grey levels 0..255 reach the model as they are."""
        return self.form == "8bit"

    @property
    def scale(self) -> float:
        """The largest value of an example as the model receives it: 255 for 8-bit grey levels, 1 for 0/1 pixels."""
        return 255.0 if self.eight_bit else 1.0

    @property
    def num_pixels(self) -> int:
        """D, the size of one flattened example."""
        return math.prod(self.image_shape)

    def split_size(self, split: str) -> int:
        """The number of examples in `split`."""
        return self.split_sizes[SPLITS.index(_checked_split(split))]


def describe(dataset: str, form: str = "", *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
             manual_dir: str | os.PathLike | None = None, progress: bool = False) -> Dataset:
    """The `Dataset` called `dataset` in `form` (`configs.Config.data_form`; empty: its default form).

    A dataset that `vae_jax.catalogue` names is described without reading anything. Any other name is a TFDS image
    dataset: the first time, TFDS prepares it (downloads it, or reads `manual_dir`) and its splits are decoded into
    the cache under `data_dir`; after that its description is read from there.

    Raises:
        DataError: the dataset is unknown or cannot be prepared, or it has no such form.
    """
    if dataset in POLYPHONIC:
        if form not in ("", "sequence"):
            raise DataError(f"{dataset} has no data form {form!r}; its sequences take data_form=sequence")
        sizes, frames = SPLIT_SIZES[dataset]
        return Dataset(dataset, (1, NUM_KEYS, 1), "sequence", sizes, False, frames)
    entry = _entry(dataset, Path(data_dir).expanduser(), manual_dir, progress)
    form = form or entry.forms[0]
    if form not in entry.forms:
        raise DataError(f"{dataset} has no data form {form!r}; it takes {list(entry.forms)} (data_form=...)")
    return Dataset(dataset, entry.image_shape, form, entry.split_sizes, entry.labelled)


def example_input(dataset: Dataset) -> Any:
    """One example as a model of `dataset` receives it, zeros: `[D]` float32 for images, a one-frame
    `Sequence(frames [1, D] uint8, length 1)` for sequences (what models are initialized and checked on)."""
    if dataset.sequential:
        return Sequence(np.zeros((1, dataset.num_pixels), np.uint8), np.int32(1))
    return np.zeros(dataset.num_pixels, np.float32)


def describe_example(dataset: Dataset) -> str:
    """One example of `dataset` in words, for messages: `shape (784,), float32`, or `a Sequence of frames of 88
    values and its length`."""
    if dataset.sequential:
        return f"a Sequence of frames of {dataset.num_pixels} values and its length"
    return f"shape ({dataset.num_pixels},), float32"


def check_pixels(pixels: np.ndarray, dataset: Dataset, name: str = "data") -> np.ndarray:
    """Returns `pixels` if it is a `[N, D]` uint8 array of `dataset`'s size and values, else raises `DataError`:
    0/1 in the `binary` form, grey levels 0..255 otherwise."""
    height, width, channels = dataset.image_shape
    if pixels.ndim != 2 or pixels.shape[1] != dataset.num_pixels:
        raise DataError(f"{name} has shape {pixels.shape}, expected (N, {dataset.num_pixels}) flattened "
                        f"{height}x{width}x{channels} images of {dataset.name}")
    if pixels.dtype != np.uint8:
        raise DataError(f"{name} has dtype {pixels.dtype}, expected uint8 (0/1 or grey levels 0..255)")
    if dataset.form == "binary" and pixels.size and pixels.max() > 1:
        raise DataError(f"{name} holds values up to {pixels.max()}, expected 0/1 for a statically binarized dataset")
    return pixels


def load_split(dataset: str, split: str, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
               manual_dir: str | os.PathLike | None = None, progress: bool = False,
               mmap: bool = False) -> np.ndarray:
    """A whole split as a `[N, D]` uint8 array, prepared on first use and cached on disk.

    Args:
        dataset: a dataset's name (`describe`).
        split: `train`, `validation` or `test`.
        data_dir: where TFDS keeps prepared datasets, and where the decoded arrays are cached.
        manual_dir: a folder with the dataset's original files, for machines that cannot download (for
            `frey_faces`, which TFDS lacks, always).
        progress: show TFDS's progress bars while it prepares the dataset (the first use only).
        mmap: map the cached file read-only instead of reading it (`np.load(mmap_mode="r")`).

    Returns:
        `[N, D]` uint8 pixels, D = height * width * channels (row-major): 0/1 for `binarized_mnist`, 0..255 else.
    """
    description = describe(dataset, data_dir=data_dir, manual_dir=manual_dir, progress=progress)
    pixels = _load_cached(dataset, split, "image", data_dir, manual_dir, progress, mmap)
    return check_pixels(pixels, description, name=f"the cached {dataset}/{split} in {data_dir}")


def load_sequences(dataset: str, split: str, *, manual_dir: str | os.PathLike | None) -> PaddedSplit:
    """A split of a dataset of sequences, padded: `frames [N, T_max, D]` uint8 0/1 and `lengths [N]`, in the files'
    order (`vae_jax.sequences.read_polyphonic` reads `manual_dir`, the folder of the `.mat` files or the authors'
    pickles; TFDS has none of them)."""
    if dataset not in POLYPHONIC:
        raise DataError(f"{dataset} is not a dataset of sequences; choose one of {list(POLYPHONIC)}")
    return pad_split(read_polyphonic(dataset, manual_dir)[_checked_split(split)])


def load_labels(split: str, dataset: str = LABELED_DATASET, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
                manual_dir: str | os.PathLike | None = None, progress: bool = False) -> np.ndarray:
    """The class labels of a split, `[N]` uint8 (int32 where there are more than 256 classes), aligned with
    `load_split(dataset, split)`.

    `binarized_mnist` and `frey_faces` have no labels; figures that need them encode `mnist` digits instead.

    Args:
        split: `train`, `validation` or `test`.
        dataset: a labelled dataset: `mnist` (digits), `fashion_mnist` (the 10 garment classes of Xiao et al.,
            2017), or a TFDS dataset with a `label` feature.
        data_dir, manual_dir, progress: as in `load_split` (`manual_dir` holds the dataset's original files).
    """
    if not describe(dataset, data_dir=data_dir, manual_dir=manual_dir, progress=progress).labelled:
        labelled = [name for name, entry in ENTRIES.items() if entry.labelled]
        raise DataError(f"{dataset} has no labels; choose a labelled dataset such as {labelled}")
    return _load_cached(dataset, split, "label", data_dir, manual_dir, progress)


def split_hash(dataset: str, split: str, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
               manual_dir: str | os.PathLike | None = None, progress: bool = False) -> str:
    """The content hash of a split: sha256 of the bytes of `load_split(dataset, split)` (`[N, D]` uint8, row
    by row in the order used), its first 16 hex characters.

    Computed once and kept beside the cached split as `<split>.sha256` (rebuilt with the split; where that file
    cannot be written, the hash is computed again on each call). Two results share data iff they share this hash.

    Args:
        dataset, split, data_dir, manual_dir, progress: as in `load_split`.
    """
    if dataset in POLYPHONIC:  # read from its files, not cached: hashed anew
        return split_sha256(load_sequences(dataset, split, manual_dir=manual_dir))[:HASH_CHARS]
    paths = _cache_paths(dataset, _checked_split(split), data_dir)
    path = paths["hash"]
    with contextlib.suppress(OSError, UnicodeDecodeError):  # valid while the split it hashes is cached
        stored = path.read_text().strip() if paths["image"].exists() else ""
        if len(stored) == HASH_CHARS and all(c in "0123456789abcdef" for c in stored):
            return stored
    pixels = load_split(dataset, split, data_dir=data_dir, manual_dir=manual_dir, progress=progress)
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:HASH_CHARS]
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with contextlib.suppress(OSError):  # the hash is a convenience: a read-only cache still evaluates
        partial.write_text(digest + "\n")
        partial.replace(path)
    return digest


def _checked_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return split


def _cache_dir(dataset: str, data_dir: str | os.PathLike) -> Path:
    """`<data_dir>/vae_jax_cache/<dataset>`, where a dataset's decoded splits are kept."""
    return Path(data_dir).expanduser() / "vae_jax_cache" / dataset


def _cache_paths(dataset: str, split: str, data_dir: str | os.PathLike) -> dict[str, Path]:
    """A split's cached files: its `image` and `label` arrays, and the `hash` of its images (`split_hash`)."""
    cache_dir = _cache_dir(dataset, data_dir)
    return {"image": cache_dir / f"{split}.npy", "label": cache_dir / f"{split}_labels.npy",
            "hash": cache_dir / f"{split}.sha256"}


def _entry(dataset: str, data_dir: Path, manual_dir: str | os.PathLike | None, progress: bool) -> Entry:
    """The catalogue's entry of `dataset`, or that of a TFDS image dataset: read from its cache, else prepared."""
    if dataset in ENTRIES:
        return ENTRIES[dataset]
    if not re.fullmatch(r"[\w/:.]+", dataset):  # TFDS names: cifar10, downsampled_imagenet/32x32, mnist:3.0.1
        raise DataError(f"unknown dataset {dataset!r}; choose one of {list(ENTRIES)} or a TFDS image dataset's name")
    path = _cache_dir(dataset, data_dir) / DESCRIPTION_FILE
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        stored = json.loads(path.read_text())
        return tfds_entry(dataset, tuple(stored["image_shape"]), stored["labelled"], tuple(stored["split_sizes"]),
                          stored["tfds_splits"])
    entry = _prepare_tfds_dataset(dataset, data_dir, manual_dir, progress)
    description = {"image_shape": entry.image_shape, "labelled": entry.labelled, "split_sizes": entry.split_sizes,
                   "tfds_splits": entry.tfds_splits}
    _write_atomically(path, lambda partial: partial.write_text(json.dumps(description) + "\n"))
    return entry


def _prepare_tfds_dataset(dataset: str, data_dir: Path, manual_dir: str | os.PathLike | None,
                          progress: bool) -> Entry:
    """Prepares a TFDS image dataset and decodes its three splits into the cache; its `Entry`."""
    builder = _prepared_builder(dataset, data_dir, manual_dir, progress)
    features = builder.info.features
    if "image" not in features:
        raise DataError(f"the TFDS dataset {dataset} has no `image` feature; choose an image dataset")
    splits = tfds_splits(list(builder.info.splits) or ["train", "test"])
    sizes = []
    for split in SPLITS:
        decoded = _decode_split(builder, splits[split])
        _write_cache(decoded, _cache_paths(dataset, split, data_dir))
        sizes.append(len(decoded["image"]))
    return tfds_entry(dataset, tuple(features["image"].shape), "label" in features, tuple(sizes), splits)


def _load_cached(dataset: str, split: str, feature: str, data_dir: str | os.PathLike,
                 manual_dir: str | os.PathLike | None, progress: bool, mmap: bool = False) -> np.ndarray:
    """One feature (`image` or `label`) of a split, from its `.npy` cache (memory-mapped with `mmap`), decoding the
    split first if the cache is missing."""
    paths = _cache_paths(dataset, _checked_split(split), data_dir)
    if not paths[feature].exists():
        data_dir = Path(data_dir).expanduser()
        tfds_splits = _entry(dataset, data_dir, manual_dir, progress).tfds_splits
        if not tfds_splits:  # a dataset that TFDS lacks: all its splits come from its file at once (Frey faces)
            for name, pixels in read_frey_faces(manual_dir).items():
                _write_cache({"image": pixels}, _cache_paths(dataset, name, data_dir))
        else:
            _write_cache(_decode_split(_prepared_builder(dataset, data_dir, manual_dir, progress),
                                       tfds_splits[split]), paths)
    try:
        return np.load(paths[feature], mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read cached split {paths[feature]} ({error}); delete it to rebuild it") from None


def _write_atomically(path: Path, write: Callable[[Path], object], size: int = 0) -> None:
    """`write(partial)` to a partial file beside `path`, renamed to `path` when complete (`size`: the bytes it
    writes); on an I/O fault, raises `StorageError` and leaves no partial file."""
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial{path.suffix}")  # two first preparations may race
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        partial.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        cause = os_cause(error)
        # numpy's short write has no errno ("10192000 requested and 9437056 written"): the free space tells why.
        with contextlib.suppress(OSError):
            if error.errno is None and shutil.disk_usage(partial.parent).free < size:
                cause = f"No space left on device: {cause}"
        raise StorageError(f"cannot write the cache {path} ({cause}); no partial file was left and the split is "
                           "decoded again next time; free space, or pass a writable --data-dir") from None


def _write_cache(features: dict[str, np.ndarray], paths: dict[str, Path]) -> None:
    """Writes each feature to its `.npy` path (`_write_atomically`), first dropping the hash of the images it
    replaces, if any (`split_hash` computes it anew)."""
    with contextlib.suppress(OSError):
        paths["hash"].unlink(missing_ok=True)
    for name, array in features.items():
        _write_atomically(paths[name], lambda partial, array=array: np.save(partial, array), array.nbytes)


def _prepared_builder(dataset: str, data_dir: Path, manual_dir: str | os.PathLike | None, progress: bool) -> object:
    """The TFDS builder of `dataset`, prepared (offline from `manual_dir` if given)."""
    import tensorflow_datasets as tfds  # slow import, only needed the first time a split is used

    if manual_dir is not None and not Path(manual_dir).expanduser().is_dir():
        raise DataError(f"data folder {manual_dir} does not exist; pass --manual-dir a folder with the original "
                        f"{dataset} files (e.g. ../shared/data/{dataset})")
    tfds.display_progress_bar(progress)  # TFDS's own switch, global to the process
    # TFDS extracts a manual file to downloads/extracted/GZIP.<file name>, shared by datasets: mnist and fashion_mnist
    # have the same file names, so the second prepared would read the first's files. One folder per dataset.
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(Path(manual_dir).expanduser()),
        extract_dir=str(data_dir / "downloads" / "extracted" / dataset))
    try:
        builder = tfds.builder(dataset, data_dir=str(data_dir))
        # TFDS reports on stdout, which is for results: to stderr with progress, else nowhere.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(sys.stderr if progress else quiet):
            builder.download_and_prepare(download_config=config)
    except Exception as error:  # TFDS raises many kinds (network, checksum, missing file); all end the same way
        reason = first_line(error)
        if type(error).__name__ == "DatasetNotFoundError":
            raise DataError(f"unknown dataset {dataset!r}; choose one of {list(ENTRIES)} or a TFDS image "
                            "dataset's name (e.g. cifar10)") from None
        if manual_dir is None:
            raise DataError(f"cannot download {dataset} ({reason}); without internet, pass --manual-dir "
                            f"a folder with the original files (e.g. ../shared/data/{dataset})") from None
        raise DataError(f"cannot prepare {dataset} from {manual_dir} ({type(error).__name__}: {reason}); "
                        f"it must hold the byte-exact original files (see README)") from None
    return builder


def _decode_split(builder: object, tfds_split: str, batch_size: int = 10_000) -> dict[str, np.ndarray]:
    """One split of a prepared builder, read in batches in its order: `image`, `[N, D]` uint8 (each image flattened
    row-major), and for a labelled dataset `label`, `[N]` uint8 (int32 past 256 classes)."""
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=batch_size, shuffle_files=False)))
    images = np.concatenate([np.asarray(batch["image"], dtype=np.uint8) for batch in batches])
    features = {"image": images.reshape(len(images), -1)}
    if batches and "label" in batches[0]:
        labels = np.concatenate([batch["label"] for batch in batches])
        features["label"] = labels.astype(np.uint8 if labels.size == 0 or labels.max() < 256 else np.int32)
    return features
