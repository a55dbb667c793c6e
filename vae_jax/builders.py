"""From a config to objects: the model, the Optax optimizer, the objective and the initial train state.

The one place that reads `vae_jax.configs`' model and optimizer sections; models, objectives and training take the
objects, so a model or optimizer written by hand goes through the same code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vae_jax import configs, data, likelihoods, models, priors
from vae_jax.contract import FlaxModel, Model
from vae_jax.errors import ConfigError
from vae_jax.hierarchical import HierarchicalVAE
from vae_jax.objective import Elbo, Iwae, Objective
from vae_jax.train import TrainState, create_train_state, params_ema, run_keys, steps_per_epoch


def build_prior(config: configs.ModelConfig, dataset: data.Dataset) -> Any:
    """The prior that `config.prior` names: None for `normal` (N(0, I)), else a module of `vae_jax.priors` (the
    VampPrior's pseudo-inputs on the data's scale, `data.Dataset.scale`, so that they reach the encoder as data
    does)."""
    if config.prior == "mixture":
        return priors.MixturePrior(config.prior_components, config.latent_dim)
    if config.prior == "vamp":
        return priors.VampPrior(config.prior_components, dataset.num_pixels, dataset.scale)
    return None


def build_likelihood(config: configs.ModelConfig, dataset: data.Dataset) -> Any:
    """The likelihood p(x|z) that `config.likelihood` names (`vae_jax.likelihoods`), for images of `dataset`."""
    if config.likelihood == "logistic_mixture":
        return likelihoods.DiscretizedLogisticMixture(dataset.image_shape, config.likelihood_components)
    return likelihoods.Bernoulli()


def check_likelihood(config: configs.ModelConfig, dataset: data.Dataset) -> None:
    """Raises `ConfigError` unless `config.likelihood` models `dataset`'s values: `bernoulli` 0/1 pixels (`binary`
    or `dynamic` form), `logistic_mixture` 8-bit grey levels (`8bit`)."""
    if dataset.eight_bit and config.likelihood == "bernoulli":
        raise ConfigError(f"{dataset.name} reaches the model as 8-bit grey levels (data_form=8bit), which "
                          "model.likelihood=bernoulli cannot score; set model.likelihood=logistic_mixture")
    if not dataset.eight_bit and config.likelihood != "bernoulli":
        raise ConfigError(f"model.likelihood={config.likelihood} models 8-bit grey levels, and {dataset.name} is "
                          f"{dataset.form}; set data_form=8bit (on grey levels) or model.likelihood=bernoulli")


def build_model(config: configs.ModelConfig, dataset: data.Dataset) -> Model:
    """The model that `config` describes for examples of `dataset` (`data.describe`): `models.VAE` with MLP or
    convolutional networks, or, with two stochastic layers, `hierarchical.HierarchicalVAE`; with `kernel_init`
    `he_normal`, inside `HeNormalInit`. On 8-bit data (`dataset.eight_bit`) the encoder sees x / 255, in [0, 1]
    (`models.ScaledEncoder`), and the decoder's output parameterizes `build_likelihood`'s 8-bit likelihood."""
    check_likelihood(config, dataset)
    model = _build_network(config, dataset)
    return HeNormalInit(model) if config.kernel_init == "he_normal" else model


def _build_network(config: configs.ModelConfig, dataset: data.Dataset) -> Model:
    dtype = None if config.compute_dtype == "float32" else config.compute_dtype
    precision = config.matmul_precision if dtype is None else None  # bfloat16 compute: products are bfloat16 anyway
    logvar_bound = tuple(config.logvar_clip) or config.logvar_bound
    prior, likelihood = build_prior(config, dataset), build_likelihood(config, dataset)
    if config.stochastic_layers == 2:
        return FlaxModel(HierarchicalVAE(dataset.num_pixels, config.latent_dim, tuple(config.encoder_hidden),
                                         tuple(config.decoder_hidden), config.activation, logvar_bound, prior, dtype,
                                         precision, likelihood, 1.0 / dataset.scale))
    encoder, decoder = _build_networks(config, dataset, likelihood, logvar_bound, dtype, precision)
    if dataset.eight_bit:
        encoder = models.ScaledEncoder(encoder, 1.0 / dataset.scale)
    return models.VAE(encoder, decoder, prior, likelihood, num_pixels=dataset.num_pixels)


def _build_networks(config: configs.ModelConfig, dataset: data.Dataset, likelihood: Any,
                    logvar_bound: models.LogvarBound, dtype: str | None,
                    precision: str | None) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder of `config.architecture` for images of `dataset`, the decoder's output sized for
    `likelihood` (`likelihoods.num_params`, and per pixel `likelihoods.params_per_pixel`)."""
    encoder_hidden, decoder_hidden = tuple(config.encoder_hidden), tuple(config.decoder_hidden)
    image_shape = dataset.image_shape
    if config.architecture == "conv":
        conv, per_pixel = tuple(config.conv_channels), likelihoods.params_per_pixel(likelihood, image_shape[-1])
        return (models.ConvEncoder(image_shape, config.latent_dim, conv, encoder_hidden, config.activation,
                                   logvar_bound, dtype, precision),
                models.ConvDecoder(image_shape, conv, decoder_hidden, config.activation, dtype, precision, per_pixel))
    output_dim = likelihoods.num_params(likelihood, dataset.num_pixels)
    return (models.Encoder(config.latent_dim, encoder_hidden, config.activation, logvar_bound, dtype, precision),
            models.Decoder(output_dim, decoder_hidden, config.activation, dtype, precision))


def build_optimizer(config: configs.OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The Optax optimizer that `config` describes; `total_steps` sets the length of a cosine schedule.

    With `config.ema_decay` > 0, `train.params_ema` keeps the moving average of the parameters (debiased where
    `config.ema_debias`), chained last.

    The state's structure depends only on `config.name`, `config.flatten`, whether `ema_decay` (and, for
    `adam_normgrad`, `weight_decay`) is 0 and, with an average, `ema_debias` (a step count): clipping and schedule
    are always present (as `identity` and a constant schedule when off), so a run can resume with another learning
    rate, schedule or clipping norm.
    """
    if config.schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(config.learning_rate, total_steps, config.final_lr_fraction)
    else:
        learning_rate = optax.constant_schedule(config.learning_rate)
    if config.name == "sgd":
        optimizer = optax.sgd(learning_rate, momentum=config.momentum)
    else:
        decoupled = config.name == "adamw" or config.weight_decay > 0
        adam = (optax.adamw(learning_rate, weight_decay=config.weight_decay) if decoupled
                else optax.adam(learning_rate))
        optimizer = optax.chain(normalize_each_tensor(), adam) if config.name == "adam_normgrad" else adam
    clip = optax.clip_by_global_norm(config.grad_clip_norm) if config.grad_clip_norm > 0 else optax.identity()
    chain = optax.chain(clip, optimizer)
    chain = optax.flatten(chain) if config.flatten else chain
    return optax.chain(chain, params_ema(config.ema_decay, config.ema_debias)) if config.ema_decay > 0 else chain


def normalize_each_tensor(eps: float = 1e-7) -> optax.GradientTransformation:
    """Divides each gradient tensor by its L2 norm (over all its elements) plus `eps`: the first half of the
    AdamNormGrad optimizer of Tomczak & Welling's VampPrior code, which then takes an Adam step. Stateless."""
    return optax.stateless_with_tree_map(lambda g, _: g / (jnp.sqrt(jnp.sum(jnp.square(g))) + eps))


def build_objective(config: configs.Config) -> Objective:
    """`objective.Elbo(num_samples, free_bits)` or `objective.Iwae(num_samples)`, as `config.objective` says."""
    if config.objective == "iwae":
        return Iwae(config.num_samples)
    return Elbo(config.num_samples, config.free_bits)


def template_state(config: configs.Config, model: Any, example: Any, train_size: int) -> TrainState:
    """The freshly initialized train state of a run of `model` (a preset's `build_model`, or yours) on examples like
    `example` (a shape `(D,)` or an example: `train.create_train_state`): its parameters from the run's `init` key,
    and the optimizer that `config.optim` describes (a schedule over `config.epochs` epochs of `train_size`
    examples)."""
    total_steps = steps_per_epoch(train_size, min(config.batch_size, train_size)) * config.epochs
    tx = build_optimizer(config.optim, total_steps=total_steps)
    return create_train_state(run_keys(jax.random.key(config.seed)).init, model, tx, example)


@dataclasses.dataclass(frozen=True)
class HeNormalInit:
    """A model whose initial kernels are `he_normal_kernels` of its own; otherwise the model itself.

    Attributes:
        model: the model (`vae_jax.contract`).
    """

    model: Model

    def init(self, key: jax.Array, x: jax.Array) -> Any:
        """`he_normal_kernels(model.init(key, x))`."""
        return he_normal_kernels(self.model.init(key, x))

    def joint_samples(self, params: Any, x: jax.Array, key: jax.Array, num_samples: int) -> Any:
        """`model.joint_samples`."""
        return self.model.joint_samples(params, x, key, num_samples)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)


def he_normal_kernels(params: Any) -> Any:
    """`params` initialized by Flax's defaults (kernels `lecun_normal`: a truncated normal of variance 1 / fan_in)
    with every `kernel` times sqrt 2: the `he_normal` draw (variance 2 / fan_in) of the same keys, up to rounding."""
    def scale(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
        return leaf * jnp.sqrt(jnp.asarray(2.0, leaf.dtype)) if getattr(path[-1], "key", None) == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(scale, params)


def abstract_state(config: configs.Config, model: Any, example: Any, train_size: int) -> TrainState:
    """The shapes and dtypes of `template_state` (`jax.ShapeDtypeStruct` leaves), traced without initializing or
    compiling anything: what a checkpoint restores into."""
    return jax.eval_shape(lambda: template_state(config, model, example, train_size))
