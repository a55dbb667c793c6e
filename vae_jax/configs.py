"""Experiment configs: frozen dataclasses, named presets and `key=value` overrides.

A config is typed and hashable, so it can be a static argument of `jax.jit`; a variant is made with
`dataclasses.replace` or, from the command line, with overrides such as `model.latent_dim=20`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

from vae_jax.errors import ConfigError

ACTIVATIONS = ("elu", "relu", "gelu", "tanh", "softplus", "swish", "gated")
OPTIMIZERS = ("adam", "adamw", "sgd", "adam_normgrad")
SCHEDULES = ("constant", "cosine")
OBJECTIVES = ("elbo", "iwae")
COMPUTE_DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
ARCHITECTURES = ("mlp", "conv")
PRIORS = ("normal", "mixture", "vamp")
KERNEL_INITS = ("lecun_normal", "he_normal")
LIKELIHOODS = ("bernoulli", "logistic_mixture")
LATENT_DENSITIES = ("prior", "gmm", "two-stage")  # where sampled codes come from (`vae_jax.samples.latent_sampler`)
DATA_FORMS = ("", "binary", "dynamic", "8bit", "sequence")  # empty: the dataset's own (`vae_jax.data.describe`)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The encoder q(z|x), the decoder p(x|z) and the prior p(z).

    Attributes:
        latent_dim: size of z.
        encoder_hidden: widths of the encoder's hidden (dense) layers, input side first.
        decoder_hidden: widths of the decoder's hidden (dense) layers, latent side first.
        activation: one of `ACTIVATIONS`; `gated`: every dense layer is Dense(h) * sigmoid(Dense(h)) (T&W, 2018).
        logvar_bound: if positive, log-variances are squashed into (-bound, bound) by `bound * tanh(logvar / bound)`.
        logvar_clip: `low,high` clips every log-variance to [low, high] instead, with no gradient outside (the
            hardtanh of Tomczak & Welling's code: -6,2); empty: no clip.
        kernel_init: the initialization of every dense and convolutional kernel: `lecun_normal` (Flax's default,
            variance 1 / fan_in) or `he_normal` (variance 2 / fan_in, as in Tomczak & Welling's code).
        compute_dtype: `float32`, or `bfloat16`: layers in bfloat16, parameters, optimizer and loss in float32.
        matmul_precision: of the float32 products on accelerators: `float32` (true float32, as PyTorch's default),
            `tensorfloat32` (JAX's default on recent GPUs) or `bfloat16` (one pass; JAX's default on TPUs).
        architecture: `mlp`, or `conv`: stride-2 3x3 convolutions before the encoder's dense layers and
            transposed convolutions after the decoder's, for images of any shape, the decoder's output per pixel
            being what the likelihood reads (`models.ConvEncoder`, `models.ConvDecoder`).
        conv_channels: channels of the encoder's convolutions (`conv` only); each halves the sides, rounding up.
        prior: `normal` (N(0, I), closed-form KL), `mixture` (a learned mixture of Gaussians, the CS236 GMVAE) or
            `vamp` (the VampPrior), these two with a Monte-Carlo KL (`vae_jax.priors`); of the top layer in an HVAE.
        prior_components: number K of mixture components or pseudo-inputs.
        stochastic_layers: 1 (`models.VAE`) or 2 (`hierarchical.HierarchicalVAE`, the HVAE of Tomczak & Welling:
            z1 and z2 of `latent_dim` each, q(z2|x) with `encoder_hidden`, p(z1|z2) with `decoder_hidden`, and
            one-layer trunks of their last widths for q(z1|x, z2) and p(x|z1, z2); `mlp` only, Monte-Carlo KL).
        likelihood: p(x|z): `bernoulli` (binary data) or `logistic_mixture` (8-bit data, `data_form=8bit`: the
            discretized logistic mixture of PixelCNN++ with `likelihood_components` K per pixel), with any
            architecture, prior and number of stochastic layers; encoders and pseudo-inputs see x / 255.
    """

    latent_dim: int = 10
    encoder_hidden: tuple[int, ...] = (300, 300)
    decoder_hidden: tuple[int, ...] = (300, 300)
    activation: str = "elu"
    logvar_bound: float = 0.0
    logvar_clip: tuple[float, ...] = ()
    kernel_init: str = "lecun_normal"
    compute_dtype: str = "float32"
    matmul_precision: str = "float32"
    architecture: str = "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    prior: str = "normal"
    prior_components: int = 500
    stochastic_layers: int = 1
    likelihood: str = "bernoulli"
    likelihood_components: int = 10


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optax optimizer settings.

    Attributes:
        name: one of `OPTIMIZERS`. `adam_normgrad` is the AdamNormGrad of Tomczak & Welling's code: Adam on each
            parameter tensor's gradient divided by its L2 norm (`builders.normalize_each_tensor`).
        learning_rate: peak learning rate.
        schedule: `constant`, or `cosine` decay from `learning_rate` to
            `learning_rate * final_lr_fraction` over all `epochs` of the run.
        final_lr_fraction: end point of the cosine schedule, as a fraction of the peak.
        grad_clip_norm: clip the global gradient norm to this value; 0 disables clipping.
        weight_decay: decoupled weight decay, scaled by the scheduled learning rate (adamw and adam_normgrad, whose
            Adam step then is AdamW's; the decay is not normalized with the gradient).
        momentum: the momentum of `sgd` (heavy ball; sgd only).
        ema_decay: if positive, the parameters' exponential moving average with this decay per step (Polyak
            averaging, `train.params_ema`) is what validation, the best checkpoint, evaluation, samples and `init_from`
            use; 0 is off. 0.999 averages over about 1,000 steps.
        ema_debias: the average is debiased (no weight stays on the initial parameters); False: it starts from them,
            as in stored runs made before this field existed.
        flatten: run the optimizer on one vector of all parameters (`optax.flatten`): fewer kernel launches; the
            same update up to rounding; a checkpoint keeps the layout it was saved with.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    final_lr_fraction: float = 0.0
    grad_clip_norm: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    ema_decay: float = 0.0
    ema_debias: bool = True
    flatten: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run; data locations are not part of it.

    Attributes:
        dataset: `binarized_mnist` (static binarization), `mnist` or `fashion_mnist` (grey levels, binarized
            dynamically, a fresh Bernoulli draw per use, unless `data_form=8bit`), `frey_faces` (8-bit, 28x20) or
            any TFDS image dataset by name (8-bit; `vae_jax.data.describe`).
        model: encoder/decoder sizes.
        optim: optimizer settings.
        batch_size: examples per optimizer step (at most 50,000); an epoch drops the last incomplete batch.
        epochs: total number of epochs of the run (at most: see `patience`).
        objective: `elbo` (the VAE) or `iwae` (the importance-weighted bound with `num_samples` samples,
            Burda et al., 2016, which has no KL term: `kl_weight`, `kl_warmup_epochs` and `free_bits` stay at 1, 0, 0).
        num_samples: samples of z per example in the training objective.
        kl_weight: beta, the weight of the KL term in the training loss (1 is the ELBO; `elbo` only).
        kl_warmup_epochs: the KL weight rises linearly from 0 to `kl_weight` over this many epochs (`elbo` only).
        free_bits: minimum KL per latent dimension (its batch mean) in the training loss, in nats (Kingma et al.,
            2016); 0 disables it (`elbo` with a per-dimension KL only).
        seed: the run's seed; every random draw derives from `jax.random.key(seed)`.
        eval_batch_size: examples per chunk when evaluating a whole split.
        keep_checkpoints: number of latest checkpoints kept (the best one is kept as well).
        data_parallel: split each batch (global: a multiple of the device count) over all devices (`jax.sharding`).
        patience: early stopping: the run ends once `patience` epochs after the KL warm-up have brought no new best
            validation loss (Tomczak & Welling's rule, with 50); 0 trains all `epochs`.
        init_from: a work directory whose best checkpoint's parameters a new run starts from (optimizer state,
            schedule, key and epochs afresh), e.g. to go on with the IWAE objective. Empty: from `seed`.
        data_form: empty: the dataset's own form; `8bit`: grey levels as they are (`mnist`, `fashion_mnist`, any grey
            TFDS dataset); `dynamic`: binarized dynamically (those, and grey TFDS datasets); `binary`: 0/1 pixels.
    """

    dataset: str = "binarized_mnist"
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    batch_size: int = 100
    epochs: int = 40
    objective: str = "elbo"
    num_samples: int = 1
    kl_weight: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    seed: int = 0
    eval_batch_size: int = 1000
    keep_checkpoints: int = 3
    data_parallel: bool = False
    patience: int = 0
    init_from: str = ""
    data_form: str = ""


@dataclasses.dataclass(frozen=True)
class GapsConfig:
    """The defaults of the inference-gap measurement (`readback.evaluate_gaps`, the `gaps` command), one place for both.

    Attributes:
        steps, num_samples, learning_rate: `steps` Adam steps on each example's ELBO estimate of `num_samples`
            samples, from the encoder's posterior, the learning rate decaying from `learning_rate` to 1% (cosine).
        eval_samples: samples per example of the final ELBO estimates.
        iwae_samples: K of the log p(x) estimate.
        batch_size: examples at once (memory only).
    """

    steps: int = 500
    num_samples: int = 4
    learning_rate: float = 5e-2
    eval_samples: int = 100
    iwae_samples: int = 5000
    batch_size: int = 100


def _cs236() -> Config:
    """The Stanford CS236 VAE: z=10, 300-300 ELU MLPs, Adam 1e-3, batch 100."""
    return Config()


def _default() -> Config:
    """The best standard (Gaussian, MLP) VAE that trains well on a CPU in about an hour."""
    return Config(model=ModelConfig(latent_dim=32, encoder_hidden=(512, 512), decoder_hidden=(512, 512)),
                  optim=OptimConfig(learning_rate=1e-3, schedule="cosine", final_lr_fraction=0.01), epochs=100)


def _tomczak_welling(stochastic_layers: int, prior: str) -> Config:
    """Tomczak & Welling (2018) on static MNIST: z (each layer) of 40, gated dense layers of 300, log-variances bounded
    by 6, 500 pseudo-inputs, Adam, batch 100, KL warm-up over 100 epochs; their learning rate (5e-4, early stopping
    over up to 2000 epochs) becomes a cosine decay from 1e-3 to 1e-5 over 200 epochs, which fits a CPU."""
    return Config(
        model=ModelConfig(latent_dim=40, encoder_hidden=(300, 300), decoder_hidden=(300, 300), activation="gated",
                          logvar_bound=6.0, prior=prior, prior_components=500, stochastic_layers=stochastic_layers),
        optim=OptimConfig(learning_rate=1e-3, schedule="cosine", final_lr_fraction=0.01), epochs=200,
        kl_warmup_epochs=100)


PRESETS = {"cs236": _cs236, "default": _default, "vampprior": lambda: _tomczak_welling(1, "vamp"),
           "hvae": lambda: _tomczak_welling(2, "normal"), "hvae_vampprior": lambda: _tomczak_welling(2, "vamp")}


def get_config(name: str) -> Config:
    """Returns the preset called `name` (one of `PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown config preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def _parse_value(text: str, field_type: Any, key: str) -> Any:
    """Parses the text of one override into the field's type."""
    try:
        if field_type is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if typing.get_origin(field_type) is tuple:
            element_type = typing.get_args(field_type)[0]
            return tuple(element_type(part) for part in text.split(",") if part.strip())
        return field_type(text)
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as {field_type} for {key}; fix the override") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Returns `config` with `key=value` overrides applied.

    Examples: `model.latent_dim=20`, `optim.learning_rate=3e-4`, `model.encoder_hidden=512,512`.
    """
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form key=value (e.g. optim.learning_rate=3e-4)")
        config = _replace_path(config, key.strip().split("."), text.strip(), key)
    return validate(config)


def _replace_path(node: Any, path: list[str], text: str, key: str) -> Any:
    hints = typing.get_type_hints(type(node))
    name = path[0]
    if name not in hints:
        fields = sorted(hints)
        raise ConfigError(f"unknown config field {key!r}; {type(node).__name__} has {fields}")
    if len(path) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{key!r} is a section; override one of its fields, e.g. {key}.<field>=...")
        return dataclasses.replace(node, **{name: _parse_value(text, hints[name], key)})
    child = getattr(node, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config field {key!r}; {name} has no sub-fields")
    return dataclasses.replace(node, **{name: _replace_path(child, path[1:], text, key)})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    _require(value in choices, f"unknown {name} {value!r}; choose one of {choices}")


def _validate_model(model: ModelConfig) -> None:
    _require(model.latent_dim > 0, f"model.latent_dim must be positive, got {model.latent_dim}")
    for name in ("encoder_hidden", "decoder_hidden"):
        widths = getattr(model, name)
        _require(all(w > 0 for w in widths), f"model.{name} widths must be positive, got {widths}")
    _require_choice(model.activation, ACTIVATIONS, "activation")
    _require(model.logvar_bound >= 0, f"model.logvar_bound must be >= 0, got {model.logvar_bound}")
    _require(not model.logvar_clip or (len(model.logvar_clip) == 2 and model.logvar_clip[0] < model.logvar_clip[1]),
             f"model.logvar_clip must be two numbers low,high with low < high (e.g. -6,2), got {model.logvar_clip}")
    _require(not (model.logvar_clip and model.logvar_bound),
             "model.logvar_clip and model.logvar_bound both bound the log-variance; set model.logvar_bound=0")
    for value, choices, name in ((model.kernel_init, KERNEL_INITS, "kernel_init"),
                                 (model.compute_dtype, COMPUTE_DTYPES, "compute dtype"),
                                 (model.matmul_precision, MATMUL_PRECISIONS, "matmul precision"),
                                 (model.architecture, ARCHITECTURES, "architecture")):
        _require_choice(value, choices, name)
    _require(len(model.conv_channels) > 0 and all(c > 0 for c in model.conv_channels),
             f"model.conv_channels must be positive widths, got {model.conv_channels}")
    _require_choice(model.prior, PRIORS, "prior")
    _require(model.prior_components > 0, f"model.prior_components must be positive, got {model.prior_components}")
    _require(model.stochastic_layers in (1, 2),
             f"model.stochastic_layers must be 1 or 2, got {model.stochastic_layers}")
    _require(model.stochastic_layers == 1 or model.architecture == "mlp",
             "two stochastic layers (model.stochastic_layers=2) need model.architecture=mlp")
    _require(model.stochastic_layers == 1 or (model.encoder_hidden and model.decoder_hidden),
             "two stochastic layers (model.stochastic_layers=2) need at least one hidden layer in "
             "model.encoder_hidden and model.decoder_hidden (e.g. 300,300)")
    _require_choice(model.likelihood, LIKELIHOODS, "likelihood")
    _require(model.likelihood_components > 0, "model.likelihood_components must be positive")


def _validate_optim(optim: OptimConfig) -> None:
    _require_choice(optim.name, OPTIMIZERS, "optimizer")
    _require_choice(optim.schedule, SCHEDULES, "schedule")
    _require(optim.learning_rate > 0, f"optim.learning_rate must be positive, got {optim.learning_rate}")
    _require(0 <= optim.final_lr_fraction <= 1, "optim.final_lr_fraction must lie in [0, 1]")
    _require(optim.grad_clip_norm >= 0, f"optim.grad_clip_norm must be >= 0, got {optim.grad_clip_norm}")
    _require(0 <= optim.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {optim.ema_decay}")
    _require(optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
    _require(optim.weight_decay == 0 or optim.name in ("adamw", "adam_normgrad"),
             f"optim.name={optim.name} would ignore optim.weight_decay={optim.weight_decay}; "
             "use optim.name=adamw or adam_normgrad")
    _require(not (optim.flatten and optim.name == "adam_normgrad"),
             "optim.name=adam_normgrad normalizes each parameter tensor, which optim.flatten=true merges into one; "
             "set optim.flatten=false")
    _require(0 <= optim.momentum < 1, f"optim.momentum must lie in [0, 1), got {optim.momentum}")
    _require(optim.momentum == OptimConfig.momentum or optim.name == "sgd",
             f"optim.name={optim.name} would ignore optim.momentum={optim.momentum}; it is the momentum of sgd")


def validate(config: Config) -> Config:
    """Returns `config` unchanged, or raises `ConfigError` naming the first bad field."""
    _require(bool(config.dataset), "dataset is empty; name one (e.g. dataset=binarized_mnist)")
    _validate_model(config.model)
    _require_choice(config.data_form, DATA_FORMS, "data_form")
    _require_choice(config.objective, OBJECTIVES, "objective")
    for name in ("kl_weight", "kl_warmup_epochs", "free_bits", "patience"):
        _require(getattr(config, name) >= 0, f"{name} must be >= 0, got {getattr(config, name)}")
    ignored = [f"{name}={getattr(config, name)}" for name, default in
               (("kl_weight", 1.0), ("kl_warmup_epochs", 0), ("free_bits", 0.0)) if getattr(config, name) != default]
    _require(config.objective == "elbo" or not ignored,
             f"objective=iwae has no KL term, so it would ignore {', '.join(ignored)}; drop them or use objective=elbo")
    _require(config.free_bits == 0 or (config.model.prior == "normal" and config.model.stochastic_layers == 1),
             "free_bits needs a KL that splits by dimension (model.prior=normal, one stochastic layer); "
             "set free_bits=0")
    _validate_optim(config.optim)
    for name in ("batch_size", "epochs", "num_samples", "eval_batch_size", "keep_checkpoints"):
        value = getattr(config, name)
        _require(value > 0, f"{name} must be positive, got {value}")
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict`; unknown keys raise `ConfigError`. A stored `optim` with `ema_decay` > 0 and no
    `ema_debias` (made before it existed) gets `ema_debias=False`, the average it was run with."""
    try:
        optim = OptimConfig(**{"ema_debias": not data["optim"].get("ema_decay", 0) > 0, **data["optim"]})
        model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["model"].items()})
        return validate(Config(**{k: v for k, v in data.items() if k not in ("model", "optim")}, model=model,
                               optim=optim))
    except (TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"stored config does not match this version of vae_jax: {error}") from None


def dict_hash(config: dict[str, Any]) -> str:
    """A short hash of a JSON-ready config dict (a `to_dict`, or a run's metadata with a model's own description), to
    tell runs apart in result tables: of the entries that differ from `Config()`'s, so that a field added later, whose
    default keeps the old behaviour, changes no hash. `optim.ema_debias`, whose default does not, is compared with
    False, the old behaviour, where `optim.ema_decay` > 0 (a debiased average hashes apart from an older run's)."""
    # Through JSON, so that a tuple and the list it is stored as compare equal.
    config, defaults = (json.loads(json.dumps(tree)) for tree in (config, to_dict(Config())))
    defaults["optim"]["ema_debias"] = not (config.get("optim") or {}).get("ema_decay", 0) > 0
    changed = _changed_entries(config, defaults)
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]


def _changed_entries(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of `config` that differ from `defaults`, nested dicts compared entry by entry."""
    changed = {}
    for name, value in config.items():
        default = defaults.get(name)
        if isinstance(value, dict) and isinstance(default, dict):
            value = _changed_entries(value, default)
            if value:
                changed[name] = value
        elif value != default or name not in defaults:
            changed[name] = value
    return changed


def config_hash(config: Config) -> str:
    """`dict_hash` of the config."""
    return dict_hash(to_dict(config))
