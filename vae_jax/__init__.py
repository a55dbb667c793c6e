"""vae_jax: variational autoencoders for binarized MNIST in JAX, Flax and Optax.

The Python API (each name loads its module on first use, so `import vae_jax` itself is light):

- the model contract: `JointSamples`, `Model`, `FlaxModel`, `as_model` (`vae_jax.contract`);
- models: `VAE` with `Encoder`, `Decoder`, `ConvEncoder`, `ConvDecoder`, `MLP`; the priors `MixturePrior`,
  `VampPrior`; the two-layer `HierarchicalVAE`; the likelihoods `Bernoulli`, `DiscretizedLogistic`,
  `DiscretizedLogisticMixture` and `bits_per_dim` (`vae_jax.likelihoods`);
- objectives and bounds: `Elbo`, `Iwae`, `ElboTerms`, `elbo_terms`, `batch_elbo_terms`, `iwae_bound`,
  `training_loss`, `map_examples`;
- training: `TrainState`, `create_train_state`, `train_step`, `train_epoch` (jit it, or use `train_epoch_jit`),
  `run_keys`, `params_ema` (Polyak averaging);
- configs and what they build: `Config`, `ModelConfig`, `OptimConfig`, `get_config`, `build_model`,
  `build_optimizer`, `build_objective`;
- evaluation: `evaluate_elbo`, `evaluate_iwae`, `evaluate_fivo`, `summarize`; per-example inference and the
  amortization gaps: `refine_posteriors`, `amortization_gaps`;
- sample quality: features from classifiers trained here: `Classifier`, `Extractor`, `load_extractor`, `extract`,
  `train_classifier` (`vae_jax.features`); the measures `fid`, `kid`, `precision_recall`, `density_coverage`
  (`vae_jax.sample_quality`); `draw_images`, `evaluate_samples` (`vae_jax.samples`); codes beyond the prior:
  `temperature_sampler`, `fit_gaussian_mixture`, `fit_second_stage` (`vae_jax.latent_density`);
- data: `load_split`, `load_labels`, `split_hash`, `describe_dataset` (a `Dataset`); checkpoints: `Checkpointer`;
- runs in a work directory, as the CLI does them, for presets and for any model: `fit` (training; its old name
  `train_and_evaluate` stays an alias for one release), `evaluate_checkpoint`, `evaluate_gaps`,
  `write_sample_figures`; the resolved run: `Run`, `resolve_run`, `open_run`, `check_model`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.5.0"

_EXPORTS = {
    "vae_jax.contract": ("JointSamples", "Model", "FlaxModel", "as_model"),
    "vae_jax.models": ("VAE", "Encoder", "Decoder", "ConvEncoder", "ConvDecoder", "MLP"),
    "vae_jax.likelihoods": ("Bernoulli", "DiscretizedLogistic", "DiscretizedLogisticMixture", "bits_per_dim"),
    "vae_jax.priors": ("MixturePrior", "VampPrior"),
    "vae_jax.hierarchical": ("HierarchicalVAE",),
    "vae_jax.objective": ("Elbo", "Iwae", "ElboTerms", "elbo_terms", "batch_elbo_terms", "iwae_bound",
                          "training_loss", "map_examples"),
    "vae_jax.train": ("TrainState", "create_train_state", "train_step", "train_epoch", "train_epoch_jit",
                      "run_keys", "params_ema"),
    "vae_jax.configs": ("Config", "ModelConfig", "OptimConfig", "get_config"),
    "vae_jax.builders": ("build_model", "build_optimizer", "build_objective"),
    "vae_jax.evaluate": ("evaluate_elbo", "evaluate_iwae", "evaluate_fivo", "summarize"),
    "vae_jax.inference": ("refine_posteriors", "amortization_gaps"),
    "vae_jax.features": ("Classifier", "Extractor", "load_extractor", "extract", "train_classifier"),
    "vae_jax.sample_quality": ("fid", "kid", "precision_recall", "density_coverage"),
    "vae_jax.samples": ("draw_images", "evaluate_samples"),
    "vae_jax.latent_density": ("temperature_sampler", "fit_gaussian_mixture", "fit_second_stage"),
    "vae_jax.data": ("load_split", "load_labels", "split_hash", "Dataset"),
    "vae_jax.checkpoint": ("Checkpointer",),
    "vae_jax.trainer": ("fit",),
    "vae_jax.readback": ("evaluate_checkpoint", "evaluate_gaps", "write_sample_figures"),
    "vae_jax.resolve": ("Run", "resolve_run", "open_run", "check_model"),
}
# Exports under another name than in their module: `train_and_evaluate`, the old name of `fit`, kept for one
# release; `describe_dataset`, `data.describe`.
_ALIASES = {"train_and_evaluate": ("vae_jax.trainer", "fit"), "describe_dataset": ("vae_jax.data", "describe")}
_MODULE_OF = {name: (module, name) for module, names in _EXPORTS.items() for name in names} | _ALIASES
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
    module, attribute = _MODULE_OF[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
