"""vae_jax: variational autoencoders for binarized MNIST in JAX, Flax and Optax.

The Python API, for use with any Flax encoder/decoder pair (see `vae_jax.models` for the call signatures):

- objective: `elbo_terms`, `elbo_terms_from_noise`, `batch_elbo_terms`, `ElboTerms`;
- training: `TrainState`, `create_train_state`, `make_optimizer`, `train_epoch` (jit it, or use `train_epoch_jit`);
- checkpoints: `Checkpointer`;
- evaluation: `evaluate_elbo`, `summarize`;
- runs in a work directory: `train_and_evaluate`, `evaluate_checkpoint`.
"""

from vae_jax.checkpoint import Checkpointer
from vae_jax.configs import Config, ModelConfig, OptimConfig, get_config
from vae_jax.data import load_split
from vae_jax.evaluate import evaluate_elbo, summarize
from vae_jax.models import Decoder, Encoder
from vae_jax.objective import ElboTerms, batch_elbo_terms, elbo_terms, elbo_terms_from_noise
from vae_jax.runner import evaluate_checkpoint, train_and_evaluate
from vae_jax.train import TrainState, create_train_state, make_optimizer, run_keys, train_epoch, train_epoch_jit

__version__ = "0.1.0"

__all__ = [
    "Checkpointer", "Config", "Decoder", "ElboTerms", "Encoder", "ModelConfig", "OptimConfig", "TrainState",
    "batch_elbo_terms", "create_train_state", "elbo_terms", "elbo_terms_from_noise", "evaluate_checkpoint",
    "evaluate_elbo", "get_config", "load_split", "make_optimizer", "run_keys", "summarize", "train_and_evaluate",
    "train_epoch", "train_epoch_jit",
]
