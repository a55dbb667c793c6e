"""Loading the real datasets offline through TFDS, caching, and the errors a user can meet."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import data
from vae_jax.errors import DataError


def test_binarized_mnist_splits(shared_data, data_dir):
    manual_dir = shared_data / "binarized_mnist"
    splits = {split: data.load_split("binarized_mnist", split, data_dir=data_dir, manual_dir=manual_dir)
              for split in data.SPLITS}
    for split, pixels in splits.items():
        assert pixels.shape == (data.SPLIT_SIZES[split], 784) and pixels.dtype == np.uint8
        assert set(np.unique(pixels)) == {0, 1}
    # About 13% of the pixels of binarized MNIST are on.
    assert 0.10 < splits["train"].mean() < 0.16
    # A second load reads the cache, in a fresh process that neither imports TensorFlow nor TFDS nor needs the
    # manual folder.
    code = ("import sys; from vae_jax import data; "
            f"pixels = data.load_split('binarized_mnist', 'test', data_dir={str(data_dir)!r}); "
            "print(pixels.sum(), [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split(maxsplit=1) == [str(splits["test"].sum()), "[]\n"]


def test_mnist_grey_levels_with_held_out_validation(shared_data, data_dir):
    manual_dir = shared_data / "mnist"
    train = data.load_split("mnist", "train", data_dir=data_dir, manual_dir=manual_dir)
    validation = data.load_split("mnist", "validation", data_dir=data_dir, manual_dir=manual_dir)
    assert train.shape == (50_000, 784) and validation.shape == (10_000, 784)
    assert train.max() == 255 and len(np.unique(train)) > 200
    # The held-out images are not among the training images.
    train_rows = {row.tobytes() for row in train}
    assert sum(row.tobytes() in train_rows for row in validation[:500]) == 0


def test_mnist_labels_are_aligned_with_the_images(shared_data, data_dir):
    manual_dir = shared_data / "mnist"
    labels = data.load_labels("test", data_dir=data_dir, manual_dir=manual_dir)
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    # The class counts of the MNIST test set (LeCun et al.).
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Each image carries the label that the original IDX files give that same image (TFDS may reorder a split).
    images = data.load_split("mnist", "test", data_dir=data_dir)
    raw = np.frombuffer(gzip.open(manual_dir / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    raw_labels = np.frombuffer(gzip.open(manual_dir / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    order = {row.tobytes(): i for i, row in enumerate(raw.reshape(-1, 784))}
    positions = np.array([order[row.tobytes()] for row in images[:200]])
    np.testing.assert_array_equal(labels[:200], raw_labels[positions])


def test_missing_manual_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass --manual-dir"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path, manual_dir=tmp_path / "nowhere")


def test_files_that_are_not_the_originals_are_refused(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    for name in ("train", "valid", "test"):
        (manual_dir / f"binarized_mnist_{name}.amat").write_text("0 1 0\n")
    with pytest.raises(DataError, match="must hold the byte-exact original files"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path / "tfds", manual_dir=manual_dir)


def test_failed_download_names_the_offline_option(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def no_network(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(DataError, match=r"cannot download binarized_mnist .* pass --manual-dir"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        data.load_split("cifar10", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_split("mnist", "dev", data_dir=tmp_path)


def test_damaged_cache_is_reported(tmp_path):
    cache = tmp_path / "vae_jax_cache" / "binarized_mnist" / "test.npy"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not an array")
    with pytest.raises(DataError, match="delete it to rebuild it"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("pixels,message", [
    (np.zeros((4, 28, 28), np.uint8), r"shape \(4, 28, 28\), expected \(N, 784\)"),
    (np.zeros((4, 784), np.float32), "dtype float32, expected uint8"),
    (np.full((4, 784), 7, np.uint8), "values up to 7, expected 0/1"),
])
def test_check_pixels(pixels, message):
    with pytest.raises(DataError, match=message):
        data.check_pixels(pixels, dynamic=False)
