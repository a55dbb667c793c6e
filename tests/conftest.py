"""Shared fixtures: strict dtype promotion, small models, and the real datasets from ../shared/data."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vae_jax import configs, models

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "experiments"))  # the experiment scripts' helpers are tested as modules


@pytest.fixture
def strict_promotion():
    """Strict dtype promotion, so that an implicit cast in our code fails the test.

    Not global: optax's bias correction mixes its int32 step count with floats, which strict mode rejects.
    """
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline copies of the original dataset files (see ../shared/data/README.md)."""
    assert (SHARED_DATA / "binarized_mnist").is_dir(), f"expected the offline datasets in {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A TFDS data directory shared by the whole test session (datasets are prepared once)."""
    return tmp_path_factory.mktemp("tensorflow_datasets")


@pytest.fixture
def small_models() -> tuple[models.Encoder, models.Decoder]:
    """A tiny encoder/decoder pair: 784 -> 16 -> z=3 -> 16 -> 784."""
    return models.build_models(configs.ModelConfig(latent_dim=3, encoder_hidden=(16,), decoder_hidden=(16,)))


@pytest.fixture
def binary_pixels() -> np.ndarray:
    """`[64, 784]` uint8 random 0/1 images."""
    return (np.random.default_rng(0).random((64, 784)) < 0.3).astype(np.uint8)
