"""The feature extractors of `vae_jax.features`: the committed weights, `extract`, training and the errors."""

import gzip
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import features
from vae_jax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def mnist_extractor() -> features.Extractor:
    return features.load_extractor("mnist")


def mnist_test_images(shared_data, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of the original MNIST test file, `[count, 784]` float32 in [0, 1], and labels."""
    folder = shared_data / "mnist"
    raw = np.frombuffer(gzip.open(folder / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(folder / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return raw.reshape(-1, 784)[:count].astype(np.float32) / np.float32(255), labels[:count]


@pytest.mark.parametrize("dataset, name", [("mnist", "mnist"), ("binarized_mnist", "mnist"),
                                           ("fashion_mnist", "fashion_mnist")])
def test_committed_weights_load_and_match_their_sha256(dataset, name):
    extractor = features.load_extractor(dataset)
    path = features.weights_path(name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert extractor.dataset == name
    assert digest == features.WEIGHTS_SHA256[name] and extractor.sha256 == digest[:16]
    assert 50_000 < features.num_params(extractor.params) < 150_000 and path.stat().st_size < 1_000_000


def test_extract_shape_dtype_and_chunk_size_invariance(mnist_extractor):
    images = np.random.default_rng(0).random((37, 784)).astype(np.float32)
    whole = features.extract(mnist_extractor, images)
    assert whole.shape == (37, features.FEATURE_DIM) and whole.dtype == np.float64
    assert np.all(whole >= 0) and np.any(whole > 0)  # ReLU units, not all dead
    for chunk_size in (7, 16):
        np.testing.assert_allclose(features.extract(mnist_extractor, images, chunk_size=chunk_size), whole,
                                   rtol=1e-5, atol=1e-5)
    assert features.extract(mnist_extractor, np.zeros((0, 784), np.float32)).shape == (0, features.FEATURE_DIM)


def test_mnist_extractor_classifies_grey_and_binarized_test_images(shared_data, mnist_extractor):
    images, labels = mnist_test_images(shared_data, 500)
    grey = features.accuracy(mnist_extractor.params, images, labels)
    assert grey >= 0.98, grey
    binarized = features.binarize(images, jax.random.key(1))
    assert set(np.unique(binarized)) == {0.0, 1.0}
    accuracy = features.accuracy(mnist_extractor.params, binarized, labels)
    assert accuracy >= 0.97, accuracy


def test_train_step_lowers_the_loss_on_a_tiny_batch():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((16, 784)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    params = features.init_params(jax.random.key(0))
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    keys = features.example_keys(jax.random.key(0), 0, jnp.arange(16))
    losses = []
    for _ in range(8):
        params, opt_state, loss = features.train_step(params, opt_state, images, labels, keys, tx=tx)
        losses.append(float(loss))
    assert losses[1] < losses[0] and losses[-1] < 0.85 * losses[0], losses


def test_each_example_draws_by_its_index_not_its_batch_position():
    key = jax.random.key(3)
    alone = features.example_keys(key, 2, jnp.array([5]))
    in_batch = features.example_keys(key, 2, jnp.array([9, 5, 0]))
    assert jnp.array_equal(jax.random.key_data(alone[0]), jax.random.key_data(in_batch[1]))
    other_epoch = features.example_keys(key, 3, jnp.array([5]))
    assert not jnp.array_equal(jax.random.key_data(alone[0]), jax.random.key_data(other_epoch[0]))


def test_one_line_errors(mnist_extractor, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no feature extractor for dataset 'cifar10'.*fashion_mnist") as error:
        features.load_extractor("cifar10")
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"shape \(5, 28, 28\), expected \(N, 784\)") as error:
        features.extract(mnist_extractor, np.zeros((5, 28, 28), np.float32))
    assert "\n" not in str(error.value)
    monkeypatch.setattr(features, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(DataError, match="cannot read the mnist extractor's weights.*train_extractors"):
        features.load_extractor("binarized_mnist")
    (tmp_path / "mnist.msgpack").write_bytes(b"not weights")
    with pytest.raises(DataError, match="have sha256 .* expected .*corrupt") as error:
        features.load_extractor("mnist")
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="holds no Classifier weights"):
        features.read_params(tmp_path / "mnist.msgpack")
    params = jax.tree_util.tree_map(np.asarray, mnist_extractor.params)
    params["params"]["Dense_1"]["bias"] = np.zeros(3, np.float32)  # 3 logits instead of 10
    features.save_params(params, tmp_path / "wrong.msgpack")
    with pytest.raises(DataError, match="another shape"):
        features.read_params(tmp_path / "wrong.msgpack")
