"""Datasets as whole-split uint8 arrays. The only module that touches TFDS.

`binarized_mnist` holds the static binarization of Larochelle & Murray (2011): pixels already in {0, 1},
splits train 50,000 / validation 10,000 / test 10,000. `mnist` and `fashion_mnist` (Xiao et al., 2017) hold grey
levels 0..255; they are binarized dynamically (a fresh Bernoulli draw per use), or in the form `8bit` reach the
model as they are, and their last 10,000 training images are held out as validation, so their splits have the same
sizes.

Each split is decoded once and cached as `<data_dir>/vae_jax_cache/<dataset>/<split>.npy` (the labels of a labelled
dataset as `<split>_labels.npy`, and the split's content hash, `split_hash`, as `<split>.sha256`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from vae_jax.configs import DATA_FORMS, DATASETS, SPLIT_SIZES
from vae_jax.errors import DataError, StorageError, first_line, os_cause

IMAGE_SHAPE = (28, 28, 1)  # (height, width, channels) of every dataset here
NUM_PIXELS = math.prod(IMAGE_SHAPE)
SPLITS = tuple(SPLIT_SIZES)
DYNAMIC_DATASETS = ("mnist", "fashion_mnist")
_HELD_OUT = {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"}  # validation: the last 10,000
_TFDS_SPLITS = {
    "binarized_mnist": {"train": "train", "validation": "validation", "test": "test"},
    "mnist": _HELD_OUT,
    "fashion_mnist": _HELD_OUT,
}
assert tuple(_TFDS_SPLITS) == DATASETS
LABELED_DATASETS = ("mnist", "fashion_mnist")
LABELED_DATASET = "mnist"  # the labels of the latent scatter figure
HASH_CHARS = 16  # hex characters kept of a split's sha256
# TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
DEFAULT_DATA_DIR = Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset is, for everything outside the data layer: models read the size of an example from here.

    Attributes:
        name: the TFDS name.
        image_shape: `(height, width, channels)` of one image; an example reaches a model flattened, `[D]`.
        dynamic: whether it holds grey levels that are binarized dynamically (else 0/1 pixels, or 8-bit ones).
        eight_bit: whether its grey levels 0..255 reach the model as they are (as floats; `data_form=8bit`).
    """

    name: str
    image_shape: tuple[int, int, int]
    dynamic: bool
    eight_bit: bool = False

    @property
    def form(self) -> str:
        """`binary` (static 0/1), `dynamic` (grey levels binarized dynamically) or `8bit` (grey levels as they are)."""
        return "8bit" if self.eight_bit else "dynamic" if self.dynamic else "binary"

    @property
    def num_pixels(self) -> int:
        """D, the size of one flattened example."""
        return math.prod(self.image_shape)


def describe(dataset: str, form: str = "") -> Dataset:
    """The `Dataset` called `dataset` in `form` (`configs.Config.data_form`: empty, its own form; `8bit`, the grey
    levels of a dynamic dataset as they are), or a `DataError` naming the known ones."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if form not in DATA_FORMS or (form == "8bit" and dataset not in DYNAMIC_DATASETS):
        raise DataError(f"{dataset} has no data form {form!r}; 8bit is for {list(DYNAMIC_DATASETS)}")
    eight_bit = form == "8bit"
    return Dataset(dataset, IMAGE_SHAPE, dataset in DYNAMIC_DATASETS and not eight_bit, eight_bit)


def is_dynamic(dataset: str) -> bool:
    """Whether `dataset` holds grey levels that are binarized dynamically."""
    return describe(dataset).dynamic


def check_pixels(pixels: np.ndarray, dynamic: bool, name: str = "data") -> np.ndarray:
    """Returns `pixels` if it is a `[N, 784]` uint8 array of the right range, else raises `DataError`; `dynamic`:
    grey levels 0..255 are allowed (a dataset binarized dynamically, or 8-bit: `Dataset.dynamic or eight_bit`)."""
    if pixels.ndim != 2 or pixels.shape[1] != NUM_PIXELS:
        raise DataError(f"{name} has shape {pixels.shape}, expected (N, {NUM_PIXELS}) flattened 28x28 images")
    if pixels.dtype != np.uint8:
        raise DataError(f"{name} has dtype {pixels.dtype}, expected uint8 (0/1 or grey levels 0..255)")
    if not dynamic and pixels.size and pixels.max() > 1:
        raise DataError(f"{name} holds values up to {pixels.max()}, expected 0/1 for a statically binarized dataset")
    return pixels


def load_split(dataset: str, split: str, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
               manual_dir: str | os.PathLike | None = None, progress: bool = False, mmap: bool = False) -> np.ndarray:
    """A whole split as a `[N, 784]` uint8 array, prepared by TFDS on first use and cached on disk.

    Args:
        dataset: `binarized_mnist`, `mnist` or `fashion_mnist`.
        split: `train`, `validation` or `test`.
        data_dir: where TFDS keeps prepared datasets, and where the decoded arrays are cached.
        manual_dir: a folder with the dataset's original files, for machines that cannot download.
        progress: show TFDS's progress bars while it prepares the dataset (the first use only).
        mmap: map the cached file read-only instead of reading it (`np.load(mmap_mode="r")`).

    Returns:
        `[N, 784]` uint8 pixels: 0/1 for `binarized_mnist`, 0..255 for `mnist` and `fashion_mnist`.
    """
    describe(dataset)
    pixels = _load_cached(dataset, split, "image", data_dir, manual_dir, progress, mmap)
    return check_pixels(pixels, is_dynamic(dataset), name=f"the cached {dataset}/{split} in {data_dir}")


def load_labels(split: str, dataset: str = LABELED_DATASET, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
                manual_dir: str | os.PathLike | None = None, progress: bool = False) -> np.ndarray:
    """The class labels of a split, `[N]` uint8 in 0..9, aligned with `load_split(dataset, split)`.

    `binarized_mnist` has no labels; figures that need them encode `mnist` digits instead.

    Args:
        split: `train`, `validation` or `test`.
        dataset: `mnist` (digits) or `fashion_mnist` (the 10 garment classes of Xiao et al., 2017).
        data_dir, manual_dir, progress: as in `load_split` (`manual_dir` holds the dataset's original files).
    """
    describe(dataset)
    if dataset not in LABELED_DATASETS:
        raise DataError(f"{dataset} has no labels; choose one of {list(LABELED_DATASETS)}")
    return _load_cached(dataset, split, "label", data_dir, manual_dir, progress)


def split_hash(dataset: str, split: str, *, data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
               manual_dir: str | os.PathLike | None = None, progress: bool = False) -> str:
    """The content hash of a split: sha256 of the bytes of `load_split(dataset, split)` (`[N, 784]` uint8, row
    by row in the order used), its first 16 hex characters.

    Computed once and kept beside the cached split as `<split>.sha256` (rebuilt with the split; where that file
    cannot be written, the hash is computed again on each call). Two results share data iff they share this hash.

    Args:
        dataset, split, data_dir, manual_dir, progress: as in `load_split`.
    """
    pixels = load_split(dataset, split, data_dir=data_dir, manual_dir=manual_dir, progress=progress)
    path = _cache_dir(dataset, data_dir) / f"{split}.sha256"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        stored = path.read_text().strip()
        if len(stored) == HASH_CHARS and all(c in "0123456789abcdef" for c in stored):
            return stored
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:HASH_CHARS]
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with contextlib.suppress(OSError):  # the hash is a convenience: a read-only cache still evaluates
        partial.write_text(digest + "\n")
        partial.replace(path)
    return digest


def _cache_dir(dataset: str, data_dir: str | os.PathLike) -> Path:
    """`<data_dir>/vae_jax_cache/<dataset>`, where a dataset's decoded splits are kept."""
    return Path(data_dir).expanduser() / "vae_jax_cache" / dataset


def _load_cached(dataset: str, split: str, feature: str, data_dir: str | os.PathLike,
                 manual_dir: str | os.PathLike | None, progress: bool, mmap: bool = False) -> np.ndarray:
    """One feature (`image` or `label`) of a split, from its `.npy` cache, decoding the split with TFDS first if
    the cache is missing."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    cache_dir = _cache_dir(dataset, data_dir)
    paths = {"image": cache_dir / f"{split}.npy", "label": cache_dir / f"{split}_labels.npy"}
    if not paths[feature].exists():
        features = _decode_with_tfds(dataset, _TFDS_SPLITS[dataset][split], Path(data_dir).expanduser(), manual_dir,
                                     progress)
        with contextlib.suppress(OSError):  # the hash of the split decoded before, if any, is recomputed
            (cache_dir / f"{split}.sha256").unlink(missing_ok=True)
        _write_cache(features, paths)
    try:
        return np.load(paths[feature], mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read cached split {paths[feature]} ({error}); delete it to rebuild it") from None


def _write_cache(features: dict[str, np.ndarray], paths: dict[str, Path]) -> None:
    """Writes each feature to its `.npy` path (through a partial file, renamed when complete); on an I/O fault, raises
    `StorageError` and leaves no partial file."""
    for name, array in features.items():
        partial = paths[name].with_suffix(f".{os.getpid()}.partial.npy")  # two first preparations may race
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            np.save(partial, array)
            partial.replace(paths[name])
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            cause = os_cause(error)
            # numpy's short write has no errno ("10192000 requested and 9437056 written"): the free space tells why.
            with contextlib.suppress(OSError):
                if error.errno is None and shutil.disk_usage(partial.parent).free < array.nbytes:
                    cause = f"No space left on device: {cause}"
            raise StorageError(f"cannot write the cache {paths[name]} ({cause}); no partial file was left "
                               "and the split is decoded again next time; free space, or pass a writable "
                               "--data-dir") from None


def _decode_with_tfds(dataset: str, tfds_split: str, data_dir: Path, manual_dir: str | os.PathLike | None,
                      progress: bool) -> dict[str, np.ndarray]:
    """Prepares `dataset` with TFDS (offline from `manual_dir` if given) and returns one split: `image`, `[N, 784]`
    uint8, and for a labelled dataset `label`, `[N]` uint8."""
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
        if manual_dir is None:
            raise DataError(f"cannot download {dataset} ({reason}); without internet, pass --manual-dir "
                            f"a folder with the original files (e.g. ../shared/data/{dataset})") from None
        raise DataError(f"cannot prepare {dataset} from {manual_dir} ({type(error).__name__}: {reason}); "
                        f"it must hold the byte-exact original files (see README)") from None
    split = tfds.as_numpy(builder.as_dataset(split=tfds_split, batch_size=-1, shuffle_files=False))
    features = {"image": np.asarray(split["image"], dtype=np.uint8).reshape(len(split["image"]), NUM_PIXELS)}
    if "label" in split:
        features["label"] = np.asarray(split["label"], dtype=np.uint8)
    return features
