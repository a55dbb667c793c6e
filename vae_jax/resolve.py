"""A run resolved once: its config, its model (a preset's or yours), the description of its dataset and the metadata
stored with its checkpoints, in one value that every command hands down; and the model contract checked at the
door, on real examples, before anything compiles, and on the batch of a step that went non-finite (`failing_terms`).

After resolution a preset's model and a model that vae_jax does not define take the same path: nothing downstream
asks which it is.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vae_jax import builders, configs, contract, data, workdir
from vae_jax.checkpoint import Checkpointer, Restored
from vae_jax.contract import JointSamples, Model
from vae_jax.errors import CheckpointError, ConfigError, first_line
from vae_jax.objective import Objective, map_examples
from vae_jax.train import TrainState

CHECK_SAMPLES = 2  # samples per example of the check at the door: [S] then tells S apart from other sizes
CHECK_EXAMPLES = 100  # examples of the first batch whose log-densities must be finite
LOG_TERMS = {"log_likelihood": "log p(x|z)", "log_prior": "log p(z)", "log_posterior": "log q(z|x)"}


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A run, resolved once.

    Attributes:
        workdir: its work directory.
        config: its config (for a model of your own, every section but `model`, which then holds the unused defaults).
        model: the model (`vae_jax.contract`): the one `config.model` describes, or yours.
        dataset: the description of its dataset (`data.describe`), from which the model's input shape comes.
        metadata: what its checkpoints store and its protocol cards carry (`configs.to_dict(config)`, the `model`
            section replaced by your model's own description).
    """

    workdir: Path
    config: configs.Config
    model: Model
    dataset: data.Dataset
    metadata: dict[str, Any]

    @property
    def example(self) -> Any:
        """One example as the model receives it, zeros (`data.example_input`): `[D]` float32, or a `Sequence`."""
        return data.example_input(self.dataset)

    @property
    def is_preset(self) -> bool:
        """Whether the model is the one `config.model` describes (its advice may then name config fields)."""
        return workdir.is_preset_model(self.metadata)

    def template_state(self) -> TrainState:
        """The freshly initialized train state (`builders.template_state`)."""
        return builders.template_state(self.config, self.model, self.example, self.dataset.split_size("train"))

    def abstract_state(self) -> TrainState:
        """The shapes of `template_state`, what a checkpoint restores into."""
        return builders.abstract_state(self.config, self.model, self.example, self.dataset.split_size("train"))


def as_model(model: Any) -> Model:
    """`contract.as_model(model)`, its refusal as a one-line `ConfigError`."""
    try:
        return contract.as_model(model)
    except TypeError as error:
        raise ConfigError(str(error)) from None


def resolve_run(config: configs.Config, workdir_path: str | Path, model: Any = None, *,
                data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
                manual_dir: str | os.PathLike | None = None) -> Run:
    """The run that `config` (validated here) describes in `workdir_path`, with `model` or, if None, the model of
    `config.model`; `data_dir`, `manual_dir`: where its dataset is (`data.describe`: a TFDS dataset that
    `vae_jax.catalogue` does not name is prepared there on first use)."""
    configs.validate(config)
    dataset = data.describe(config.dataset, config.data_form, data_dir=data_dir, manual_dir=manual_dir)
    train_size = dataset.split_size("train")
    if config.batch_size > train_size:
        raise ConfigError(f"batch_size={config.batch_size} exceeds the {train_size} training examples of "
                          f"{dataset.name}, so an epoch would take no step; use at most {train_size}")
    metadata = configs.to_dict(config)
    if model is None:
        model = builders.build_model(config.model, dataset)
    else:
        model = as_model(model)
        metadata["model"] = contract.describe(model)
    return Run(Path(workdir_path), config, model, dataset, metadata)


def resolve_stored(metadata: dict[str, Any], workdir_path: str | Path, model: Any = None, *,
                   data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
                   manual_dir: str | os.PathLike | None = None) -> Run:
    """The run whose checkpoints store `metadata`, to read back: with the preset's model, or with `model`, which a
    run of a model of your own needs and which must be the one it was trained with; `data_dir`, `manual_dir`: as in
    `resolve_run`."""
    workdir_path = Path(workdir_path)
    config = workdir.config_of(metadata)
    dataset = data.describe(config.dataset, config.data_form, data_dir=data_dir, manual_dir=manual_dir)
    if model is not None:
        model = as_model(model)
        workdir.check_same_model(metadata, {**metadata, "model": contract.describe(model)}, workdir_path)
    elif workdir.is_preset_model(metadata):
        model = builders.build_model(config.model, dataset)
    else:
        raise _needs_model(metadata, workdir_path)
    return Run(workdir_path, config, model, dataset, metadata)


def open_run(workdir_path: str | Path, model: Any = None, epoch: int | None = None, *,
             data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
             manual_dir: str | os.PathLike | None = None) -> tuple[Run, Restored]:
    """The run in `workdir_path` and its best checkpoint (by validation loss), or that of `epoch`: the opening that
    `eval`, `gaps` and `sample` share; `data_dir`, `manual_dir`: as in `resolve_run`."""
    workdir_path = Path(workdir_path)
    no_checkpoints = CheckpointError(f"work directory {workdir_path} has no checkpoints; run `train --workdir "
                                     f"{workdir_path}` first")
    if not (workdir_path / workdir.CHECKPOINTS_DIR).is_dir():
        raise no_checkpoints
    with Checkpointer(workdir_path) as checkpointer:
        epochs = checkpointer.epochs()
        if not epochs:
            raise no_checkpoints
        chosen = checkpointer.best_epoch() if epoch is None else epoch
        run = resolve_stored(checkpointer.read_metadata(chosen if chosen in epochs else epochs[-1]), workdir_path,
                             model, data_dir=data_dir, manual_dir=manual_dir)
        return run, checkpointer.restore(run.abstract_state(), jax.random.key(0), epoch=chosen)


def stored_config(workdir_path: str | Path, model: Any = None) -> configs.Config | None:
    """The config of the run in `workdir_path` (from its newest readable checkpoint), or None if it holds none; a run
    of a model of your own needs `model` (only to say so: its config does not depend on it)."""
    if not (Path(workdir_path) / workdir.CHECKPOINTS_DIR).is_dir():
        return None
    with Checkpointer(workdir_path) as checkpointer:
        metadata = checkpointer.latest_metadata()
    if metadata is None:
        return None
    if model is None and not workdir.is_preset_model(metadata):
        raise _needs_model(metadata, Path(workdir_path))
    return workdir.config_of(metadata)


def _needs_model(metadata: dict[str, Any], workdir_path: Path) -> ConfigError:
    return ConfigError(f"{workdir_path} holds a run of a model that vae_jax does not define "
                       f"({metadata['model']['class']}); pass that model: --model MODULE:NAME on the command line, "
                       "model= in Python")


def load_model(spec: str) -> Any:
    """The model that `spec` names, `MODULE:NAME` or `path/to/file.py:NAME`: a model object, or a callable that
    returns one when called without arguments (a class, a factory)."""
    location, _, name = spec.rpartition(":")
    if not location or not name:
        raise ConfigError(f"--model {spec!r} is not MODULE:NAME or FILE.py:NAME (e.g. my_models:PlanarFlowVAE)")
    try:
        if location.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(location).stem, location)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(location)
        found = getattr(module, name)
    except (ImportError, AttributeError, OSError, SyntaxError) as error:
        raise ConfigError(f"--model {spec}: cannot load it ({type(error).__name__}: {first_line(error)})") from None
    return found() if callable(found) and not _is_model(found) else found


def _is_model(value: Any) -> bool:
    try:
        contract.as_model(value)
    except TypeError:
        return False
    return not isinstance(value, type)


def check_model(run: Run, params: Any, pixels: np.ndarray, key: jax.Array) -> None:
    """Checks the contract at the door: the model's joint samples of one example are `JointSamples` with `[S]`
    log-densities (and the optional fields of their shapes), finite on the first `CHECK_EXAMPLES` examples of
    `pixels [N, D]` (binarized as the run does, keyed by `key`). Raises a one-line `ConfigError` naming the field."""
    model, first = run.model, jax.tree.map(lambda a: np.asarray(a[:CHECK_EXAMPLES]), pixels)
    example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), run.example)
    try:
        shapes = jax.eval_shape(lambda p, x: model.joint_samples(p, x, key, CHECK_SAMPLES), params, example)
    except Exception as error:  # whatever the model's own code raises on an example of the dataset's shape
        raise ConfigError(f"the model fails on one example of {run.dataset.name} ({data.describe_example(run.dataset)})"
                          f": {type(error).__name__}: {first_line(error)}") from None
    _check_shapes(shapes)

    def log_terms(x: jax.Array, noise_key: jax.Array) -> tuple[jax.Array, ...]:
        samples = model.joint_samples(params, x, noise_key, CHECK_SAMPLES)
        return tuple(getattr(samples, field) for field in LOG_TERMS)

    values = jax.jit(lambda x, indices: map_examples(log_terms, x, indices, key, run.dataset.dynamic))(
        first, np.arange(len(jax.tree.leaves(first)[0])))
    for (field, name), value in zip(LOG_TERMS.items(), values):
        bad = np.flatnonzero(~np.isfinite(np.asarray(value)).all(axis=1))
        if bad.size:
            raise ConfigError(f"the model's {field} ({name}) is not finite for example {bad[0]} of the first batch "
                              f"({bad.size} of {len(first)} examples); a model must give finite log-densities")


def _check_shapes(shapes: Any) -> None:
    """Raises `ConfigError` unless `shapes` (of `joint_samples` with `CHECK_SAMPLES` samples) keep the contract."""
    if not isinstance(shapes, JointSamples):
        raise ConfigError(f"the model's joint samples are a {type(shapes).__name__}, expected "
                          "vae_jax.JointSamples(log_likelihood, log_prior, log_posterior, ...)")
    expected = (CHECK_SAMPLES,)
    for field in LOG_TERMS:
        shape = getattr(shapes, field).shape
        if shape != expected:
            raise ConfigError(f"the model's {field} has shape {shape} for {CHECK_SAMPLES} samples, expected "
                              f"{expected}: one number per sample, summed over the example's dimensions")
    per_sample = shapes.kl is not None and shapes.kl.shape == expected
    if shapes.kl is not None and shapes.kl.shape not in ((), expected):
        raise ConfigError(f"the model's kl has shape {shapes.kl.shape}, expected () (one number per example) or "
                          f"{expected} (one per sample)")
    for field, ndim, shape in (("kl_per_dim", 1 + per_sample, "(S, J)" if per_sample else "(J,)"),
                               ("posterior_mean", 1, "(J,)")):
        value = getattr(shapes, field)
        if value is not None and value.ndim != ndim:
            raise ConfigError(f"the model's {field} has shape {value.shape}, expected {shape} (one per latent "
                              "dimension)")


def failing_terms(model: Any, objective: Objective, params: Any, pixels: jax.Array, indices: jax.Array,
                  key: jax.Array, dynamic: bool) -> list[str]:
    """The log-densities (`log p(x|z)`, `log p(z)`, `log q(z|x)`) that are non-finite for some example of a batch
    (`pixels [B, D]` at `indices [B]` of the split, keyed as the step keyed them: `objective.samples` where the
    objective has it); empty where all are finite (then the gradient was not)."""
    def samples(x: jax.Array, noise_key: jax.Array) -> Any:
        draw = getattr(objective, "samples", None)
        return draw(model, params, x, noise_key) if draw is not None else model.joint_samples(params, x, noise_key, 1)

    drawn = jax.jit(lambda x, i: map_examples(samples, x, i, key, dynamic))(pixels, indices)
    return [name for field, name in LOG_TERMS.items() if not np.isfinite(np.asarray(getattr(drawn, field))).all()]


def divergence_advice(run: Run, term_non_finite: bool) -> str:
    """What to try after a divergence, only what applies to the run's model: config fields of the preset's networks
    for a preset, the model's own code otherwise."""
    common = "resume with a lower optim.learning_rate or with optim.grad_clip_norm=100"
    if not term_non_finite:
        return common
    if run.is_preset and run.config.model.stochastic_layers == 1:
        return f"{common}, or with the encoder's log-variance bounded by model.logvar_bound=10"
    if run.is_preset:
        return f"{common}, or with the log-variances clipped by model.logvar_clip=-6,2"
    return f"{common}, or bound the log-variances (or scales) of your model's distributions"
