"""Any TFDS image dataset by name, offline: TFDS's own `mock_data` stands in for the download, with the dataset's real
features (CIFAR-10's 32x32x3 images and labels) and random content."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import configs, data, readback, trainer
from vae_jax.errors import DataError

MOCK_EXAMPLES = 40  # per split, whatever its slicing (mock_data ignores it)


@pytest.fixture(scope="module")
def mock_cifar10(tmp_path_factory):
    """A data folder in which `cifar10` was prepared from TFDS's mock data: its splits decoded into the cache."""
    import tensorflow_datasets as tfds

    data_dir = tmp_path_factory.mktemp("tfds")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        description = data.describe("cifar10", data_dir=data_dir)
    return data_dir, description


def test_a_tfds_dataset_is_described_by_its_features_and_cached(mock_cifar10):
    data_dir, cifar10 = mock_cifar10
    assert (cifar10.name, cifar10.image_shape, cifar10.form, cifar10.labelled) == ("cifar10", (32, 32, 3), "8bit", True)
    assert cifar10.split_sizes == (MOCK_EXAMPLES,) * 3 and cifar10.num_pixels == 3072
    stored = json.loads((data_dir / "vae_jax_cache" / "cifar10" / "dataset.json").read_text())
    # CIFAR-10 has no validation split: the last 10% of train is held out.
    assert stored["tfds_splits"] == {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}
    pixels = data.load_split("cifar10", "test", data_dir=data_dir)
    assert pixels.shape == (MOCK_EXAMPLES, 3072) and pixels.dtype == np.uint8 and pixels.max() > 200
    assert data.load_labels("test", "cifar10", data_dir=data_dir).max() <= 9
    with pytest.raises(DataError, match=r"cifar10 has no data form 'dynamic'; it takes \['8bit'\]"):
        data.describe("cifar10", "dynamic", data_dir=data_dir)
    # Once prepared, it is described and read from the cache, in a process that imports neither TF nor TFDS.
    code = ("import sys; from vae_jax import data; "
            f"print(data.describe('cifar10', data_dir={str(data_dir)!r}).image_shape, "
            f"data.load_split('cifar10', 'train', data_dir={str(data_dir)!r}).shape, "
            "[m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"(32, 32, 3) ({MOCK_EXAMPLES}, 3072) []\n"


def test_a_conv_vae_trains_one_epoch_on_32x32x3_and_is_evaluated(mock_cifar10, tmp_path):
    """The conv VAE with the colour mixture of PixelCNN++ (channels coupled), sized by the dataset."""
    data_dir, _ = mock_cifar10
    config = configs.apply_overrides(configs.get_config("cs236"), [
        "dataset=cifar10", "model.architecture=conv", "model.conv_channels=8,16", "model.encoder_hidden=32",
        "model.decoder_hidden=32", "model.likelihood=logistic_mixture", "model.likelihood_components=2",
        "batch_size=10", "epochs=1", "eval_batch_size=20"])
    metrics = trainer.fit(config, tmp_path, data_dir=data_dir, progress=False, log=lambda line: None)
    assert (metrics["epoch"], metrics["step"]) == (1, MOCK_EXAMPLES // 10)
    result = readback.evaluate_checkpoint(tmp_path, "test", iwae_samples=4, data_dir=data_dir)
    assert (result["dataset"], result["binarization"], result["units"]) == ("cifar10", "none (8-bit)",
                                                                           "nats, bits/dim")
    assert (result["split_size"], result["num_examples"]) == (MOCK_EXAMPLES, MOCK_EXAMPLES)
    assert result["train_set"] == f"cifar10/train ({MOCK_EXAMPLES} examples)"
    assert result["nll_bpd"] == result["nll"] / (3072 * math.log(2))
    # Uniform random pixels cost 8 bits each under any model; one epoch of a small model stays near that.
    assert 7 < result["nll_bpd"] <= result["nelbo_bpd"] < 12


def test_an_unknown_tfds_name_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^unknown dataset 'cifar1000'; choose one of \[.*\] or a TFDS image "
                                        r"dataset's name \(e.g. cifar10\)$"):
        data.describe("cifar1000", data_dir=tmp_path)
