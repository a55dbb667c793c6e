"""Feature extractors for sample quality (FID, KID, precision and recall) without Inception's weights.

A small convolutional `Classifier`, trained in this repository on MNIST and on Fashion-MNIST
(`experiments/train_extractors.py`), whose penultimate layer (`FEATURE_DIM` ReLU units) gives the features. Its
weights ship with the package as `vae_jax/extractors/<name>.msgpack` (`flax.serialization`), each checked against the
sha256 recorded here when loaded.

The VAEs of vae_jax model binarized pixels, so the classifiers are trained on a mix: each example of each epoch is shown
either as its grey levels or as a Bernoulli draw of them, then shifted by a few pixels. The draws follow the project's
rule: `train_classifier`'s key is split into an init, a shuffle and a draw key, and example `i` of epoch `e` draws with
`fold_in(fold_in(draw_key, e), i)` (`example_keys`), `i` its index in the split, whatever its batch.

    extractor = load_extractor("binarized_mnist")          # the MNIST extractor
    features = extract(extractor, images)                   # [N, 784] in [0, 1] -> [N, FEATURE_DIM] float64
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from vae_jax import catalogue
from vae_jax.errors import ConfigError, DataError, first_line

FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = catalogue.ENTRIES["mnist"].image_shape  # MNIST's and Fashion-MNIST's (H, W, C)
IMAGE_SIZE = math.prod(IMAGE_SHAPE)  # D of one flattened image
CHUNK_SIZE = 1000
HASH_CHARS = 16  # `Extractor.sha256`: the first 16 hex characters of the weights file's sha256
WEIGHTS_DIR = Path(__file__).resolve().parent / "extractors"
# The sha256 of each committed weights file (written by experiments/train_extractors.py).
WEIGHTS_SHA256 = {
    "mnist": "4b45fc84ff0219990992a18dcd870f9afc1aa9910a3917087dba38db8e40ed3f",
    "fashion_mnist": "84f5f6f26e477685e448b66a310228ad6f3e6145fdcd13c07a8cbe8ec106f036",
}
# The extractor of each dataset that has one.
EXTRACTOR_OF = {"mnist": "mnist", "binarized_mnist": "mnist", "fashion_mnist": "fashion_mnist"}

Params = Any


class Classifier(nn.Module):
    """Three 3x3 convolutions (ReLU, each followed by 2x2 max pooling), a dense layer of `feature_dim` ReLU units
    (the features) and `num_classes` logits; about 98k parameters with the defaults.

    Attributes:
        channels: the convolutions' output channels.
        feature_dim: units of the penultimate layer.
        num_classes: logits.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = FEATURE_DIM
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`[N, 784]` float images in [0, 1] -> (features `[N, feature_dim]`, logits `[N, num_classes]`)."""
        x = images.reshape(-1, *IMAGE_SHAPE)
        for channels in self.channels:
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1)))
        return features, nn.Dense(self.num_classes)(features)

    def features(self, images: jax.Array) -> jax.Array:
        """`[N, 784]` float images in [0, 1] -> the penultimate features `[N, feature_dim]`."""
        return self(images)[0]


CLASSIFIER = Classifier()


class Extractor(NamedTuple):
    """A trained classifier to extract features with.

    Attributes:
        dataset: the extractor's name, `mnist` or `fashion_mnist` (the data it was trained on).
        params: the `Classifier`'s variables.
        sha256: the first 16 hex characters of the sha256 of its weights file.
    """

    dataset: str
    params: Params
    sha256: str


def weights_path(name: str) -> Path:
    """The weights file of the extractor `name` (`mnist` or `fashion_mnist`)."""
    return WEIGHTS_DIR / f"{name}.msgpack"


def file_sha256(path: Path) -> str:
    """The full sha256 (64 hex characters) of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def init_params(key: jax.Array) -> Params:
    """Fresh `Classifier` variables (the template that weights files are read into)."""
    return CLASSIFIER.init(key, jnp.zeros((1, IMAGE_SIZE), jnp.float32))


def num_params(params: Params) -> int:
    """How many numbers `params` holds."""
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def save_params(params: Params, path: Path) -> str:
    """Writes `params` to `path` (`flax.serialization.to_bytes`) and returns the file's full sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.to_bytes(jax.device_get(params)))
    return file_sha256(path)


def load_extractor(dataset: str) -> Extractor:
    """The extractor for a dataset's images: `mnist` and `binarized_mnist` -> the MNIST extractor, `fashion_mnist`
    -> the Fashion-MNIST one.

    Raises:
        ConfigError: a dataset without an extractor.
        DataError: a weights file that is missing or whose sha256 is not the one recorded in `WEIGHTS_SHA256`.
    """
    if dataset not in EXTRACTOR_OF:
        raise ConfigError(f"no feature extractor for dataset {dataset!r}; there is one for {sorted(EXTRACTOR_OF)}: "
                          f"measure sample quality on one of those")
    name = EXTRACTOR_OF[dataset]
    path = weights_path(name)
    fix = "reinstall vae_jax or run `python experiments/train_extractors.py`"
    try:
        digest = file_sha256(path)
    except OSError as error:
        raise DataError(f"cannot read the {name} extractor's weights {path}: {error.strerror or first_line(error)}; "
                        f"{fix}") from error
    if digest != WEIGHTS_SHA256[name]:
        raise DataError(f"the {name} extractor's weights {path} have sha256 {digest[:HASH_CHARS]}, expected "
                        f"{WEIGHTS_SHA256[name][:HASH_CHARS]} (a corrupt or changed file); {fix}")
    return Extractor(name, read_params(path), digest[:HASH_CHARS])


def read_params(path: Path) -> Params:
    """The `Classifier` variables in a weights file (`save_params`); `DataError` if they do not fit the module."""
    template = jax.eval_shape(init_params, jax.random.key(0))
    try:
        params = serialization.from_bytes(template, path.read_bytes())
    except (ValueError, TypeError, KeyError) as error:
        raise DataError(f"{path} holds no Classifier weights: {first_line(error)}") from error
    if jax.tree_util.tree_map(np.shape, params) != jax.tree_util.tree_map(lambda leaf: leaf.shape, template):
        raise DataError(f"{path} holds weights of another shape than vae_jax.features.Classifier's")
    return params


def check_images(images: np.ndarray | jax.Array, name: str = "images") -> None:
    """Raises `DataError` unless `images` is `[N, 784]` (flattened 28x28x1 images)."""
    if images.ndim != 2 or images.shape[1] != IMAGE_SIZE:
        height, width, channels = IMAGE_SHAPE
        raise DataError(f"{name} have shape {tuple(images.shape)}, expected (N, {IMAGE_SIZE}): flattened "
                        f"{height}x{width}x{channels} images with values in [0, 1]")


@jax.jit
def _apply(params: Params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return CLASSIFIER.apply(params, images)


def _chunked(params: Params, images: np.ndarray, chunk_size: int, output: int) -> np.ndarray:
    """`_apply(params, images)[output]` a chunk at a time; the last chunk is padded to `chunk_size` (one compile)."""
    check_images(images)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size}; use a positive chunk size")
    parts = []
    for start in range(0, images.shape[0], chunk_size):
        chunk = np.asarray(images[start:start + chunk_size], np.float32)
        rows = chunk.shape[0]
        if rows < chunk_size and images.shape[0] > chunk_size:
            chunk = np.concatenate([chunk, np.zeros((chunk_size - rows, IMAGE_SIZE), np.float32)])
        parts.append(np.asarray(_apply(params, chunk)[output])[:rows])
    if not parts:
        return np.zeros((0, FEATURE_DIM if output == 0 else NUM_CLASSES), np.float32)
    return np.concatenate(parts)


def extract(extractor: Extractor, images: np.ndarray, *, chunk_size: int = CHUNK_SIZE) -> np.ndarray:
    """The penultimate features of images, `chunk_size` at a time (compiled once per chunk size).

    Args:
        extractor: from `load_extractor`.
        images: `[N, 784]` float (or 0/1) images in [0, 1].
        chunk_size: images per compiled call.

    Returns:
        `[N, FEATURE_DIM]` float64 features (non-negative: ReLU units).
    """
    return _chunked(extractor.params, images, chunk_size, 0).astype(np.float64)


def predict(params: Params, images: np.ndarray, *, chunk_size: int = CHUNK_SIZE) -> np.ndarray:
    """`[N, 784]` float images in [0, 1] -> `[N]` int predicted classes (`Extractor.params` or trained params)."""
    return _chunked(params, images, chunk_size, 1).argmax(axis=1)


def accuracy(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of `[N, 784]` images in [0, 1] whose predicted class is their `[N]` label."""
    return float(np.mean(predict(params, images) == np.asarray(labels)))


@jax.jit
def example_keys(key: jax.Array, epoch: int | jax.Array, indices: jax.Array) -> jax.Array:
    """`[B]` keys `fold_in(fold_in(key, epoch), i)` of the examples with `[B]` indices `i` in their split."""
    epoch_key = jax.random.fold_in(key, epoch)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(epoch_key, indices)


def binarize(images: np.ndarray | jax.Array, key: jax.Array) -> np.ndarray:
    """`[N, 784]` grey levels in [0, 1] -> `[N, 784]` float32 0/1, pixel ~ Bernoulli(grey level), example `i` drawn
    with `fold_in(key, i)`."""
    check_images(images)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(images.shape[0]))
    draw = jax.jit(jax.vmap(lambda k, x: jax.random.bernoulli(k, x).astype(jnp.float32)))
    return np.asarray(draw(keys, jnp.asarray(images, jnp.float32)))


def _shown(key: jax.Array, image: jax.Array, binary_fraction: float, max_shift: int) -> jax.Array:
    """One `[784]` training image as shown: a Bernoulli draw of it with probability `binary_fraction` (else its grey
    levels), shifted by up to `max_shift` pixels each way (zeros come in)."""
    choice_key, draw_key, shift_key = jax.random.split(key, 3)
    binary = jax.random.bernoulli(draw_key, image).astype(image.dtype)
    image = jnp.where(jax.random.bernoulli(choice_key, binary_fraction), binary, image).reshape(IMAGE_SHAPE[:2])
    if max_shift:
        shift = jax.random.randint(shift_key, (2,), 0, 2 * max_shift + 1)
        padded = jnp.pad(image, max_shift)
        image = jax.lax.dynamic_slice(padded, (shift[0], shift[1]), IMAGE_SHAPE[:2])
    return image.reshape(IMAGE_SIZE)


def cross_entropy(params: Params, images: jax.Array, labels: jax.Array) -> jax.Array:
    """The mean softmax cross-entropy of `[B, 784]` images against their `[B]` int labels."""
    logits = CLASSIFIER.apply(params, images)[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("tx", "binary_fraction", "max_shift"))
def train_step(params: Params, opt_state: optax.OptState, images: jax.Array, labels: jax.Array,
               keys: jax.Array, *, tx: optax.GradientTransformation, binary_fraction: float = 0.5,
               max_shift: int = 2) -> tuple[Params, optax.OptState, jax.Array]:
    """One Adam step on a batch, each example shown as `_shown` draws it with its own key (pure).

    Args:
        params, opt_state: the classifier's variables and `tx`'s state of them.
        images: `[B, 784]` float32 grey levels in [0, 1].
        labels: `[B]` int labels.
        keys: `[B]` per-example keys (`example_keys`).
        tx: the Optax optimizer (static: keep one object for a run).
        binary_fraction: the probability that an example is shown binarized.
        max_shift: the largest shift, in pixels, of the augmentation (0: none).

    Returns:
        The new variables, the new optimizer state and the batch's `[]` loss before the step.
    """
    shown = jax.vmap(_shown, in_axes=(0, 0, None, None))(keys, images, binary_fraction, max_shift)
    loss, grads = jax.value_and_grad(cross_entropy)(params, shown, labels)
    with jax.numpy_dtype_promotion("standard"):  # Optax mixes its int32 step count with floats
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params, opt_state, loss


def train_classifier(images: np.ndarray, labels: np.ndarray, key: jax.Array, *, epochs: int, batch_size: int = 128,
                     learning_rate: float = 1e-3, binary_fraction: float = 0.5, max_shift: int = 2,
                     on_epoch: Callable[[int, Params, float], None] | None = None) -> Params:
    """Trains a `Classifier` with Adam and a cosine-decayed learning rate; deterministic given `key`.

    `key` is split into an init, a shuffle and a draw key: epoch `e` is shuffled by `fold_in(shuffle_key, e)` (its
    last `N mod batch_size` examples dropped) and example `i` drawn with `example_keys(draw_key, e, i)`.

    Args:
        images: `[N, 784]` float grey levels in [0, 1].
        labels: `[N]` int labels in 0..9.
        key: the run's key, e.g. `jax.random.key(0)`.
        epochs, batch_size, learning_rate: the schedule (the rate decays to 0 over `epochs`).
        binary_fraction, max_shift: the augmentation (`train_step`).
        on_epoch: called after each epoch `e` (from 0) as `on_epoch(e, params, mean_loss)`, e.g. to validate.

    Returns:
        The variables after the last epoch.
    """
    check_images(images)
    if not 0 < batch_size <= images.shape[0]:
        raise ConfigError(f"batch_size={batch_size} does not fit the {images.shape[0]} training examples")
    images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    init_key, shuffle_key, draw_key = jax.random.split(key, 3)
    steps = images.shape[0] // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps))
    params = init_params(init_key)
    opt_state = tx.init(params)
    for epoch in range(epochs):
        order = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), images.shape[0])
        losses = []
        for batch in np.asarray(order[:steps * batch_size]).reshape(steps, batch_size):
            keys = example_keys(draw_key, epoch, jnp.asarray(batch))
            params, opt_state, loss = train_step(params, opt_state, images[batch], labels[batch], keys, tx=tx,
                                                 binary_fraction=binary_fraction, max_shift=max_shift)
            losses.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, params, float(jnp.mean(jnp.stack(losses))))
    return params

