"""The datasets vae_jax knows by name, and how each is read from its source. Part of the data layer (`vae_jax.data`
is the rest): the only modules that state a size or touch TFDS.

Named here: `binarized_mnist` (the static binarization of Larochelle & Murray, 2011), `mnist` and `fashion_mnist`
(Xiao et al., 2017; grey levels, the last 10,000 training images held out as validation) and `frey_faces` (1,965
grey-level faces of 28x20 that TFDS lacks, read from `freyfaces.pkl`, split by a fixed seeded permutation). Any other
name is a TFDS image dataset (`cifar10`, `svhn_cropped`, ...): its shape and labels come from its TFDS features, its
splits from `tfds_splits`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np

from vae_jax.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Entry:
    """How one named dataset is read.

    Attributes:
        image_shape: `(height, width, channels)` of one image.
        forms: the forms it can take, its default first: `binary` (0/1 pixels), `dynamic` (grey levels binarized
            afresh per use) or `8bit` (grey levels as they are); `configs.DATA_FORMS` names them.
        split_sizes: examples in train, validation and test.
        labelled: whether it has class labels.
        tfds_splits: the TFDS split (with slicing) behind each of `SPLITS`; empty: read from files (`read_frey_faces`).
    """

    image_shape: tuple[int, int, int]
    forms: tuple[str, ...]
    split_sizes: tuple[int, int, int]
    labelled: bool
    tfds_splits: dict[str, str] = dataclasses.field(default_factory=dict)


_MNIST_SPLITS = {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"}  # validation: the last 10,000
ENTRIES = {
    "binarized_mnist": Entry((28, 28, 1), ("binary",), (50_000, 10_000, 10_000), False,
                             {"train": "train", "validation": "validation", "test": "test"}),
    "mnist": Entry((28, 28, 1), ("dynamic", "8bit"), (50_000, 10_000, 10_000), True, _MNIST_SPLITS),
    "fashion_mnist": Entry((28, 28, 1), ("dynamic", "8bit"), (50_000, 10_000, 10_000), True, _MNIST_SPLITS),
    "frey_faces": Entry((28, 20, 1), ("8bit",), (1565, 200, 200), False),
}

# Frey faces: the `freyfaces.pkl` that Kingma & Welling (2013) and Tomczak & Welling (2018) read, checked by its
# sha256 before it is unpickled. Its 1,965 faces are permuted by `np.random.default_rng(FREY_SEED)` (PCG64) and cut
# into 1,565 / 200 / 200 in that order: the sizes of Tomczak & Welling, whose shuffle was unseeded.
FREY_FILE = "freyfaces.pkl"
FREY_SHA256 = "3b69410c6a5fd6e03f09012905168be3712373a094a776f7e58fcd0670d2138a"
FREY_SEED = 0


def frey_order() -> np.ndarray:
    """`[1965]` int: the faces of the file in the order of the splits (train, then validation, then test)."""
    return np.random.default_rng(FREY_SEED).permutation(sum(ENTRIES["frey_faces"].split_sizes))


def read_frey_faces(manual_dir: str | Path | None) -> dict[str, np.ndarray]:
    """The three splits of Frey faces, `[N, 560]` uint8 each, from `manual_dir/freyfaces.pkl`."""
    if manual_dir is None:
        raise DataError("frey_faces is not in TFDS; pass --manual-dir a folder with freyfaces.pkl (e.g. "
                        "../shared/data/frey_faces)")
    path = Path(manual_dir).expanduser() / FREY_FILE
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}); pass --manual-dir a folder with freyfaces.pkl "
                        "(e.g. ../shared/data/frey_faces)") from None
    if hashlib.sha256(content).hexdigest() != FREY_SHA256:
        raise DataError(f"{path} is not the standard freyfaces.pkl (its sha256 differs from {FREY_SHA256[:16]}...); "
                        "replace it with the original file")
    faces = np.asarray(pickle.loads(content, encoding="latin1")[0], dtype=np.uint8)[frey_order()]
    bounds = np.cumsum(ENTRIES["frey_faces"].split_sizes)[:-1]
    return dict(zip(SPLITS, np.split(faces, bounds)))


def tfds_splits(names: set[str] | list[str]) -> dict[str, str]:
    """The TFDS splits (with slicing) behind train, validation and test for a dataset whose TFDS splits are `names`:
    its own `validation` and `test` where it has both; a dataset without `test` is tested on its `validation`; where
    no validation is left, the last 10% of `train` is held out as validation."""
    names = set(names)
    if "train" not in names:
        raise DataError(f"the TFDS dataset has no train split (only {sorted(names)}); choose another dataset")
    test = "test" if "test" in names else "validation" if "validation" in names else None
    if test is None:
        raise DataError(f"the TFDS dataset has neither a test nor a validation split (only {sorted(names)})")
    if "validation" in names and test != "validation":
        return {"train": "train", "validation": "validation", "test": test}
    return {"train": "train[:90%]", "validation": "train[90%:]", "test": test}


def tfds_entry(name: str, image_shape: tuple[int | None, ...], labelled: bool, split_sizes: tuple[int, int, int],
               splits: dict[str, str]) -> Entry:
    """The `Entry` of a TFDS image dataset from its features (`image_shape` `(H, W, C)`, whether it has a `label`),
    the sizes of its decoded splits and the TFDS splits behind them (`tfds_splits`). Grey (C = 1) images can also be
    binarized dynamically; any image is 8-bit by default."""
    if len(image_shape) != 3 or None in image_shape:
        raise DataError(f"{name} has images of shape {image_shape}, expected a fixed (height, width, channels); "
                        "choose a dataset of one image size")
    shape = tuple(int(side) for side in image_shape)
    forms = ("8bit", "dynamic") if shape[-1] == 1 else ("8bit",)
    return Entry(shape, forms, tuple(split_sizes), labelled, dict(splits))
