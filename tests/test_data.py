"""Loading the real datasets offline through TFDS, caching, and the errors a user can meet."""

import errno
import gzip
import hashlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import catalogue, data
from vae_jax.errors import DataError, StorageError

# The hashes of frey_faces' train, validation and test: a change of numpy's permutation would change the split.
FREY_HASHES = ["401554fd64067954", "64995ff30424d6c2", "5fd5590e09aaca26"]


def test_binarized_mnist_splits(shared_data, data_dir):
    manual_dir = shared_data / "binarized_mnist"
    splits = {split: data.load_split("binarized_mnist", split, data_dir=data_dir, manual_dir=manual_dir)
              for split in data.SPLITS}
    for split, pixels in splits.items():
        assert pixels.shape == (data.describe("binarized_mnist").split_size(split), 784) and pixels.dtype == np.uint8
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


def test_fashion_mnist_grey_levels_held_out_validation_and_labels(fashion_data, shared_data, data_dir):
    manual_dir = fashion_data / "fashion_mnist"
    splits = {split: data.load_split("fashion_mnist", split, data_dir=data_dir, manual_dir=manual_dir)
              for split in data.SPLITS}
    for split, pixels in splits.items():
        assert pixels.shape == ({"train": 50_000}.get(split, 10_000), 784) and pixels.dtype == np.uint8
    assert data.describe("fashion_mnist").dynamic and splits["train"].max() == 255
    assert len(np.unique(splits["train"])) == 256
    # The mean grey level of Fashion-MNIST's training images is 0.286 (MNIST's is 0.131).
    assert 0.28 < splits["train"].mean() / 255 < 0.30
    # Validation is the last 10,000 images of TFDS's full training split, train its first 50,000.
    import tensorflow_datasets as tfds

    full = tfds.as_numpy(tfds.builder("fashion_mnist", data_dir=str(data_dir)).as_dataset(split="train",
                                                                                          batch_size=-1))
    full_images = full["image"].reshape(60_000, 784)
    np.testing.assert_array_equal(splits["validation"], full_images[50_000:])
    np.testing.assert_array_equal(splits["train"], full_images[:50_000])
    train_labels = data.load_labels("train", "fashion_mnist", data_dir=data_dir)
    np.testing.assert_array_equal(train_labels, full["label"][:50_000])
    # The test labels: 10 classes of 1,000 images, each the label the original IDX files give that image.
    labels = data.load_labels("test", "fashion_mnist", data_dir=data_dir)
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    raw = np.frombuffer(gzip.open(manual_dir / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    raw_labels = np.frombuffer(gzip.open(manual_dir / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    order = {row.tobytes(): i for i, row in enumerate(raw.reshape(-1, 784))}
    positions = np.array([order[row.tobytes()] for row in splits["test"][:200]])
    np.testing.assert_array_equal(labels[:200], raw_labels[positions])
    # Not MNIST's files: no test image of MNIST is among them.
    mnist = np.frombuffer(gzip.open(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    assert not any(row.tobytes() in order for row in mnist.reshape(-1, 784)[:1000])
    # Each split's content hash is the sha256 of its bytes, one per split.
    hashes = {split: data.split_hash("fashion_mnist", split, data_dir=data_dir) for split in data.SPLITS}
    for split, pixels in splits.items():
        assert hashes[split] == hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
    assert len(set(hashes.values())) == 3


def test_binarized_mnist_has_no_labels(tmp_path):
    for dataset in ("binarized_mnist", "frey_faces"):
        with pytest.raises(DataError, match=rf"{dataset} has no labels; choose a labelled dataset such as \['mnist', "
                                            r"'fashion_mnist'\]"):
            data.load_labels("test", dataset, data_dir=tmp_path)


def test_split_hash_is_the_sha256_of_the_split_computed_once(tmp_path, monkeypatch):
    """Fake splits, one per dataset and split: the hash of each, its cache, and its renewal with the split."""
    rng = np.random.default_rng(0)
    tfds_datasets = ("binarized_mnist", "mnist", "fashion_mnist")
    fakes = {(dataset, split): rng.integers(0, 2, (20, 784), dtype=np.uint8)
             for dataset in tfds_datasets for split in data.SPLITS}
    monkeypatch.setattr(data, "_prepared_builder", lambda dataset, *args: dataset)
    monkeypatch.setattr(data, "_decode_split", lambda dataset, tfds_split: {"image": fakes[dataset, next(
        s for s, t in catalogue.ENTRIES[dataset].tfds_splits.items() if t == tfds_split)]})
    hashes = {key: data.split_hash(*key, data_dir=tmp_path) for key in fakes}
    for key, pixels in fakes.items():
        assert hashes[key] == hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
    assert len(set(hashes.values())) == len(fakes)  # different across splits and datasets
    assert data.split_hash("fashion_mnist", "test", data_dir=tmp_path) == hashes["fashion_mnist", "test"]
    cached = tmp_path / "vae_jax_cache" / "fashion_mnist" / "test.sha256"
    assert cached.read_text() == hashes["fashion_mnist", "test"] + "\n"
    cached.write_text("0123456789abcdef\n")  # read back, not recomputed
    assert data.split_hash("fashion_mnist", "test", data_dir=tmp_path) == "0123456789abcdef"
    # A split decoded again gets its hash anew.
    (tmp_path / "vae_jax_cache" / "fashion_mnist" / "test.npy").unlink()
    fakes["fashion_mnist", "test"] = 1 - fakes["fashion_mnist", "test"]
    assert (data.split_hash("fashion_mnist", "test", data_dir=tmp_path)
            == hashlib.sha256(fakes["fashion_mnist", "test"].tobytes()).hexdigest()[:16])


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
    with pytest.raises(DataError, match=r"unknown dataset 'no_such_dataset'; choose one of \['binarized_mnist', "
                                        r"'mnist', 'fashion_mnist', 'frey_faces'\] or a TFDS image dataset's name"):
        data.load_split("no_such_dataset", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'two words'"):
        data.describe("two words")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load_split("mnist", "dev", data_dir=tmp_path)


def test_damaged_cache_is_reported(tmp_path):
    cache = tmp_path / "vae_jax_cache" / "binarized_mnist" / "test.npy"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not an array")
    with pytest.raises(DataError, match="delete it to rebuild it"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("pixels,dataset,message", [
    (np.zeros((4, 28, 28), np.uint8), "binarized_mnist",
     r"shape \(4, 28, 28\), expected \(N, 784\) flattened 28x28x1 images of binarized_mnist"),
    (np.zeros((4, 784), np.uint8), "frey_faces", r"shape \(4, 784\), expected \(N, 560\) flattened 28x20x1 images"),
    (np.zeros((4, 784), np.float32), "binarized_mnist", "dtype float32, expected uint8"),
    (np.full((4, 784), 7, np.uint8), "binarized_mnist", "values up to 7, expected 0/1"),
])
def test_check_pixels(pixels, dataset, message):
    with pytest.raises(DataError, match=message):
        data.check_pixels(pixels, data.describe(dataset))
    data.check_pixels(np.full((4, 784), 7, np.uint8), data.describe("mnist"))  # grey levels are no error there


def _fake_split(monkeypatch, rows):
    """TFDS replaced by a split of `rows` random 0/1 images; returns them."""
    pixels = (np.random.default_rng(0).random((rows, 784)) < 0.5).astype(np.uint8)
    monkeypatch.setattr(data, "_prepared_builder", lambda *args: None)
    monkeypatch.setattr(data, "_decode_split", lambda *args: {"image": pixels})
    return pixels


def test_a_full_disk_fails_the_cache_in_one_line_without_a_partial_file(tmpfs, monkeypatch):
    pixels = _fake_split(monkeypatch, 13_000)  # 10.2 MB, more than the 9 MiB disk holds
    cache = tmpfs.path / "vae_jax_cache" / "binarized_mnist"
    with pytest.raises(StorageError) as raised:
        data.load_split("binarized_mnist", "test", data_dir=tmpfs.path)
    # numpy's short write carries no errno; the free space shows why.
    assert re.fullmatch(rf"cannot write the cache {re.escape(str(cache / 'test.npy'))} \(No space left on device: "
                        r"10192000 requested and \d+ written\); no partial file was left and the split is decoded "
                        r"again next time; free space, or pass a writable --data-dir", str(raised.value))
    assert list(cache.iterdir()) == []
    tmpfs.remount("size=64m")
    np.testing.assert_array_equal(data.load_split("binarized_mnist", "test", data_dir=tmpfs.path), pixels)
    assert [path.name for path in cache.iterdir()] == ["test.npy"]


def test_a_read_only_data_dir_fails_the_cache_in_one_line(tmpfs, monkeypatch):
    _fake_split(monkeypatch, 10)
    tmpfs.remount("ro")
    with pytest.raises(StorageError, match=r"^cannot write the cache .*/vae_jax_cache/binarized_mnist/test.npy "
                                           r"\(Read-only file system\); no partial file was left"):
        data.load_split("binarized_mnist", "test", data_dir=tmpfs.path)
    assert list(tmpfs.path.iterdir()) == []


def test_an_injected_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    """Where a real full disk cannot be mounted: the disk fills halfway through the write."""
    _fake_split(monkeypatch, 10)

    def half_written(path, array):
        Path(path).write_bytes(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data.np, "save", half_written)
    with pytest.raises(StorageError, match=r"test.npy \(No space left on device\); no partial file was left"):
        data.load_split("binarized_mnist", "test", data_dir=tmp_path)
    assert list((tmp_path / "vae_jax_cache" / "binarized_mnist").iterdir()) == []


@pytest.mark.parametrize("progress", [False, True])
def test_tfds_progress_bars_follow_progress(progress, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def no_builder(*args, **kwargs):
        raise RuntimeError("no builder here")  # what matters is what was switched before it

    shown = []
    monkeypatch.setattr(tfds, "display_progress_bar", shown.append)
    monkeypatch.setattr(tfds, "builder", no_builder)
    with pytest.raises(DataError, match="cannot prepare binarized_mnist"):
        data._prepared_builder("binarized_mnist", tmp_path / "tfds", tmp_path, progress)
    assert shown == [progress]


def test_each_dataset_extracts_its_files_into_its_own_folder(tmp_path, monkeypatch):
    """mnist and fashion_mnist have the same file names: in TFDS's shared downloads/extracted/ the second dataset
    prepared in a data folder read the first's images and labels."""
    import tensorflow_datasets as tfds

    seen = {}

    class Builder:
        def __init__(self, dataset):
            self.dataset = dataset

        def download_and_prepare(self, download_config):
            seen[self.dataset] = download_config.extract_dir
            raise RuntimeError("stop here")

    monkeypatch.setattr(tfds, "builder", lambda dataset, data_dir: Builder(dataset))
    for dataset in ("mnist", "fashion_mnist"):
        with pytest.raises(DataError, match=f"cannot prepare {dataset}"):
            data._prepared_builder(dataset, tmp_path / "tfds", tmp_path, False)
    assert seen == {name: str(tmp_path / "tfds" / "downloads" / "extracted" / name) for name in seen}
    assert len(set(seen.values())) == 2


def test_8bit_mnist_is_not_binarized_and_reaches_the_model_as_grey_levels(shared_data, data_dir):
    import jax

    from vae_jax.objective import map_examples

    assert (data.describe("mnist").form, data.describe("binarized_mnist").form) == ("dynamic", "binary")
    eight_bit = data.describe("mnist", "8bit")
    assert (eight_bit.dynamic, eight_bit.eight_bit, eight_bit.form, eight_bit.num_pixels) == (False, True, "8bit", 784)
    with pytest.raises(DataError, match=r"binarized_mnist has no data form '8bit'; it takes \['binary'\]"):
        data.describe("binarized_mnist", "8bit")
    pixels = data.load_split("mnist", "validation", manual_dir=shared_data / "mnist", data_dir=data_dir)[:64]
    assert pixels.max() == 255 and len(np.unique(pixels)) > 2
    data.check_pixels(pixels, eight_bit)
    seen = map_examples(lambda x, _: x, pixels, np.arange(len(pixels)), jax.random.key(0), eight_bit.dynamic)
    assert seen.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(seen), pixels.astype(np.float32))


def test_frey_faces_take_a_written_down_seeded_split(frey_data, tmp_path):
    manual_dir = frey_data / "frey_faces"
    splits = {split: data.load_split("frey_faces", split, data_dir=tmp_path, manual_dir=manual_dir)
              for split in data.SPLITS}
    assert {split: pixels.shape for split, pixels in splits.items()} == {
        "train": (1565, 560), "validation": (200, 560), "test": (200, 560)}
    frey = data.describe("frey_faces")
    assert (frey.image_shape, frey.form, frey.split_sizes, frey.labelled) == ((28, 20, 1), "8bit", (1565, 200, 200),
                                                                             False)
    # The file's faces in the order of numpy's PCG64 permutation of seed 0, cut 1,565 / 200 / 200 (catalogue.py).
    with open(manual_dir / "freyfaces.pkl", "rb") as file:
        faces = pickle.load(file, encoding="latin1")[0]
    order = np.random.default_rng(0).permutation(1965)
    np.testing.assert_array_equal(np.concatenate([splits[split] for split in data.SPLITS]), faces[order])
    assert splits["train"].min() == 8 and splits["train"].max() == 238
    # The split is part of the protocol: its hashes are pinned.
    assert [data.split_hash("frey_faces", split, data_dir=tmp_path) for split in data.SPLITS] == FREY_HASHES


def test_frey_faces_need_the_standard_file(tmp_path):
    with pytest.raises(DataError, match=r"^frey_faces is not in TFDS; pass --manual-dir a folder with freyfaces.pkl"):
        data.load_split("frey_faces", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"cannot read .*freyfaces.pkl \(No such file or directory\); pass"):
        data.load_split("frey_faces", "test", data_dir=tmp_path, manual_dir=tmp_path)
    (tmp_path / "freyfaces.pkl").write_bytes(pickle.dumps([np.zeros((1965, 560), np.uint8)]))
    with pytest.raises(DataError, match=r"freyfaces.pkl is not the standard freyfaces.pkl \(its sha256 differs"):
        data.load_split("frey_faces", "test", data_dir=tmp_path, manual_dir=tmp_path)
    assert not (tmp_path / "vae_jax_cache").exists()


@pytest.mark.parametrize("names,expected", [
    ({"train", "validation", "test"}, ("train", "validation", "test")),  # celeb_a
    ({"train", "test"}, ("train[:90%]", "train[90%:]", "test")),  # cifar10, svhn_cropped (and its `extra`)
    ({"train", "validation"}, ("train[:90%]", "train[90%:]", "validation")),  # downsampled_imagenet
])
def test_tfds_splits_hold_out_validation_where_a_dataset_has_none(names, expected):
    assert tuple(catalogue.tfds_splits(names).values()) == expected
    with pytest.raises(DataError, match="has no train split"):
        catalogue.tfds_splits(names - {"train"})
