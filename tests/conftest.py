"""Shared fixtures: strict dtype promotion, small models, and the real datasets.

The real datasets are the byte-exact original files of `../shared/data` (see its README), or of the folder named by
the environment variable VAE_JAX_DATA. Without them, the tests that need them are skipped with a line that says how
to supply them; with VAE_JAX_REQUIRE_DATA=1 (as `.ci/run` sets) they fail instead, so that CI never skips them.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import builders, configs, data, models, resolve

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "VAE_JAX_DATA"
SHARED_DATA = Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "experiments"))  # the experiment scripts' helpers are tested as modules
# The tests' compiled programs go to a cache of their own (shared by the test processes), not the user's.
os.environ.setdefault("VAE_JAX_COMPILATION_CACHE", str(Path(tempfile.gettempdir()) / "vae_jax_test_cache"))


MNIST = data.describe("binarized_mnist")  # the dataset of the presets: examples of 784 pixels


def preset_state(config: configs.Config):
    """The freshly initialized train state of a preset run of `config` (`resolve.Run.template_state`)."""
    return resolve.resolve_run(config, "unused").template_state()


@pytest.fixture(autouse=True)
def strict_promotion():
    """Strict dtype promotion in every test, so that an implicit cast in our code fails it (vae_jax runs Optax's
    update, which mixes its int32 step count with floats, under standard promotion: `train.TrainState`)."""
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(autouse=True, scope="module")
def fresh_compiled_programs():
    """Each test module's compiled programs are dropped after it (`jax.clear_caches`). XLA:CPU maps each compiled
    program's code into memory; one process that keeps every program of the whole suite crashed in the compiler
    (SIGSEGV) once the suite grew past 360 tests, near Linux's limit of 65,530 memory maps per process."""
    yield
    jax.clear_caches()


def _require_folders(*names: str) -> Path:
    """`SHARED_DATA` if it holds the folders `names`; else skips the test, or fails it under VAE_JAX_REQUIRE_DATA=1."""
    missing = [name for name in names if not (SHARED_DATA / name).is_dir()]
    if missing:
        message = (f"needs the original dataset files in {SHARED_DATA} (missing {', '.join(missing)}): set "
                   f"{DATA_ENV} to a folder holding {'/, '.join(names)}/ like ../shared/data (see its README)")
        if os.environ.get("VAE_JAX_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline copies of the original MNIST files (see ../shared/data/README.md)."""
    return _require_folders("binarized_mnist", "mnist")


@pytest.fixture(scope="session")
def frey_data() -> Path:
    """The standard copy of Frey faces, `frey_faces/freyfaces.pkl` (see ../shared/data/README.md)."""
    return _require_folders("frey_faces")


@pytest.fixture(scope="session")
def fashion_data() -> Path:
    """The offline copies of the original Fashion-MNIST files, `fashion_mnist/` (see ../shared/data/README.md)."""
    return _require_folders("fashion_mnist")


@pytest.fixture(scope="session")
def polyphonic() -> Path:
    """The four polyphonic-music datasets, `polyphonic/` (see ../shared/data/README.md)."""
    return _require_folders("polyphonic") / "polyphonic"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A TFDS data directory shared by the whole test session (datasets are prepared once)."""
    return tmp_path_factory.mktemp("tensorflow_datasets")


class Tmpfs:
    """A mounted tmpfs: `path`, and `remount("ro")` or `remount("size=64m")` to make it read-only or larger."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Tmpfs]:
    """A real 9 MB file system (tmpfs) at `tmp_path/tmpfs`, to fill or make read-only; unmounted after the test.
    Skipped where mounting is not permitted (not root, or a container without the capability)."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs (a real full or read-only disk) needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {(mounted.stderr.strip().splitlines() or ['?'])[0]}")
    try:
        yield Tmpfs(path)
    finally:
        # Lazily where still busy (a background thread's open file): the mount goes as soon as it is released.
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@pytest.fixture
def small_model():
    """A tiny `models.VAE`: 784 -> 16 -> z=3 -> 16 -> 784."""
    return builders.build_model(configs.ModelConfig(latent_dim=3, encoder_hidden=(16,), decoder_hidden=(16,)), MNIST)


@pytest.fixture
def binary_pixels() -> np.ndarray:
    """`[64, 784]` uint8 random 0/1 images."""
    return (np.random.default_rng(0).random((64, 784)) < 0.3).astype(np.uint8)


class Linear1d(nn.Module):
    """Decoder of a 1-D latent: logits = w z + b, so that every density of the model is a 1-D integral."""

    @nn.compact
    def __call__(self, z):
        return nn.Dense(784)(z)


@pytest.fixture
def one_dimensional_model():
    """A `models.VAE` with a 1-D latent and a linear decoder (its weights halved), and its parameters: log p(x),
    every ELBO and the posterior are integrals that quadrature computes exactly."""
    model = models.VAE(models.Encoder(latent_dim=1, hidden=(8,)), Linear1d())
    params = model.init(jax.random.key(2), jnp.zeros(784))
    params["decoder"] = jax.tree.map(lambda p: p * 0.5, params["decoder"])
    return model, params
