"""vae_jax: variational autoencoders for binarized MNIST in JAX, Flax and Optax.

The Python API, for use with any Flax encoder/decoder pair (see `vae_jax.models` for the call signatures):

- objective: `elbo_terms`, `elbo_terms_from_noise`, `batch_elbo_terms`, `iwae_bound`, `map_examples`, `ElboTerms`;
- models and priors: `Encoder`, `Decoder`, `ConvEncoder`, `ConvDecoder`, `MixturePrior`, `VampPrior` (pass a prior
  as `prior=` to `create_train_state` and to the objective and evaluation functions; None is N(0, I));
- training: `TrainState`, `create_train_state`, `make_optimizer`, `training_loss`, `train_epoch` (jit it, or use
  `train_epoch_jit`), `run_keys`;
- checkpoints: `Checkpointer`;
- evaluation: `evaluate_elbo`, `evaluate_iwae`, `summarize`;
- data: `load_split`, `load_labels`;
- runs in a work directory, as the CLI does them: `train_and_evaluate`, `evaluate_checkpoint`.
"""

from vae_jax.checkpoint import Checkpointer
from vae_jax.configs import Config, ModelConfig, OptimConfig, get_config
from vae_jax.data import load_labels, load_split
from vae_jax.evaluate import evaluate_elbo, evaluate_iwae, summarize
from vae_jax.models import ConvDecoder, ConvEncoder, Decoder, Encoder
from vae_jax.objective import ElboTerms, batch_elbo_terms, elbo_terms, elbo_terms_from_noise, iwae_bound, map_examples
from vae_jax.priors import MixturePrior, VampPrior
from vae_jax.runner import evaluate_checkpoint, train_and_evaluate
from vae_jax.train import (
    TrainState,
    create_train_state,
    make_optimizer,
    run_keys,
    train_epoch,
    train_epoch_jit,
    training_loss,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpointer", "Config", "ConvDecoder", "ConvEncoder", "Decoder", "ElboTerms", "Encoder", "MixturePrior",
    "ModelConfig", "OptimConfig", "TrainState", "VampPrior",
    "batch_elbo_terms", "create_train_state", "elbo_terms", "elbo_terms_from_noise", "evaluate_checkpoint",
    "evaluate_elbo", "evaluate_iwae", "get_config", "iwae_bound", "load_labels", "load_split", "make_optimizer",
    "map_examples",
    "run_keys", "summarize", "train_and_evaluate", "train_epoch", "train_epoch_jit", "training_loss",
]
