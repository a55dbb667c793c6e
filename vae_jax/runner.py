"""A training run in a work directory, for a preset or for any model: resume, epochs, validation, checkpoints,
metrics; and its evaluation and figures.

A work directory holds `checkpoints/` (Orbax), `metrics.jsonl` (one line per epoch), `eval.jsonl` (one line per
`evaluate_checkpoint` call) and, with `tensorboard=True`, `tensorboard/` (the metrics as TensorBoard scalars).

Each entry point turns JAX's persistent compilation cache on first (`vae_jax.compilation_cache`: set
`VAE_JAX_COMPILATION_CACHE=off` to keep it off). Every run stores its metadata with each checkpoint: the config,
whose `model` section is the preset's model config or, for a model passed as an object, the model's own description
(`contract.describe`). The description is what resume compares, and what the protocol card of each evaluation
carries and hashes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vae_jax import builders, compilation_cache, configs, contract, data, evaluate, inference, parallel, protocol, train
from vae_jax.checkpoint import AnotherModelError, Checkpointer, Restored, first_differences, layout, layout_differences
from vae_jax.errors import CheckpointError, ConfigError, DivergenceError
from vae_jax.objective import map_examples

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"
DIVERGENCE_HINT = ("resume with a lower optim.learning_rate, with optim.grad_clip_norm=100, or with the encoder's "
                   "log-variance bounded by model.logvar_bound=10")
# Fields a resumed run may change: they leave the shapes of the train state alone.
RESUMABLE_FIELDS = ("epochs", "eval_batch_size", "keep_checkpoints", "optim.learning_rate", "optim.schedule",
                    "optim.final_lr_fraction", "optim.grad_clip_norm", "model.logvar_bound", "model.logvar_clip",
                    "model.matmul_precision", "free_bits", "data_parallel", "patience")


def run_metadata(config: configs.Config, model: Any = None) -> dict[str, Any]:
    """The JSON metadata of a run: `configs.to_dict(config)`, its `model` section replaced by the model's own
    description (`contract.describe`) when the run trains a model object."""
    metadata = configs.to_dict(config)
    if model is not None:
        metadata["model"] = contract.describe(contract.as_model(model))
    return metadata


def _is_preset_model(metadata: dict[str, Any]) -> bool:
    return "class" not in metadata.get("model", {})


def run_config(metadata: dict[str, Any]) -> configs.Config:
    """The `Config` of a run from its metadata; for a model object, everything but the model section (which then
    holds the defaults)."""
    return configs.from_dict(metadata if _is_preset_model(metadata) else {**metadata, "model": {}})


def _custom_model_error(metadata: dict[str, Any], workdir: Path) -> ConfigError:
    return ConfigError(f"{workdir} holds a run of a model that vae_jax does not define ({metadata['model']['class']}); "
                       "continue or evaluate it from Python, passing model= to train_and_evaluate or "
                       "evaluate_checkpoint")


def stored_config(workdir: str | os.PathLike) -> configs.Config | None:
    """The config of the preset run in `workdir`, or None if it holds no checkpoint."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return None
    checkpointer = Checkpointer(workdir)
    metadata = checkpointer.latest_metadata()
    checkpointer.close()
    if metadata is not None and not _is_preset_model(metadata):
        raise _custom_model_error(metadata, Path(workdir))
    return None if metadata is None else configs.from_dict(metadata)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _normalized(metadata: dict[str, Any]) -> dict[str, Any]:
    """Flattened metadata, with this version's defaults for fields that an older preset run's metadata lacks."""
    if _is_preset_model(metadata):
        return _flatten(configs.to_dict(configs.from_dict(metadata)))
    return _flatten({**configs.to_dict(run_config(metadata)), "model": metadata["model"]})


def _resume_or_start(checkpointer: Checkpointer, metadata: dict[str, Any],
                     abstract_state: Callable[[], train.TrainState]) -> Restored | None:
    """The latest good checkpoint, restored into `abstract_state()` (traced only when there is one), or None for a
    new run; a resumed run may change only `RESUMABLE_FIELDS`."""
    stored = checkpointer.latest_metadata()
    if stored is None and checkpointer.epochs():
        raise CheckpointError(f"no checkpoint in {checkpointer.workdir} is readable; start in a fresh --workdir")
    if stored is None:
        return None
    stored, given = _normalized(stored), _normalized(metadata)
    differing = sorted(name for name in set(given) | set(stored)
                       if name not in RESUMABLE_FIELDS and given.get(name) != stored.get(name))
    if differing:
        raise ConfigError(f"{checkpointer.workdir} holds a run whose {', '.join(differing)} differ from this one; "
                          f"a resumed run may change only {', '.join(RESUMABLE_FIELDS)}; use a fresh --workdir")
    return checkpointer.restore(abstract_state(), jax.random.key(0))


def _mesh(config: configs.Config, **batch_sizes: int) -> Mesh | None:
    """The data-parallel mesh over all devices if `config.data_parallel`, after checking the batch sizes."""
    if not config.data_parallel:
        return None
    mesh = parallel.data_mesh()
    parallel.check_divisible(mesh, **batch_sizes)
    return mesh


def kl_weight(config: configs.Config, epoch: int) -> float:
    """The KL weight of 1-based `epoch`: `config.kl_weight`, reached linearly over `kl_warmup_epochs`."""
    if config.kl_warmup_epochs == 0:
        return config.kl_weight
    return config.kl_weight * min(1.0, epoch / config.kl_warmup_epochs)


def stops_early(config: configs.Config, epoch: int, best_epoch: int | None) -> bool:
    """Whether a run ends after `epoch` by early stopping: `config.patience` epochs have passed since both the end of
    the KL warm-up and `best_epoch`, the checkpoint of the lowest validation loss (`Checkpointer.best_epoch`)."""
    return (config.patience > 0 and best_epoch is not None
            and epoch - max(best_epoch, config.kl_warmup_epochs) >= config.patience)


def _early_stop_notice(config: configs.Config, epoch: int, best_epoch: int | None) -> str:
    return (f"stopped early after epoch {epoch}: no lower validation loss since epoch {best_epoch} "
            f"(patience={config.patience})")


class MetricsLog:
    """Per-epoch metrics of a run: one JSON line each in `metrics.jsonl` (on the first process only, in a multi-host
    run), and, if asked, TensorBoard scalars under `tensorboard/` (tensorboardX's `SummaryWriter`)."""

    def __init__(self, workdir: Path, tensorboard: bool = False) -> None:
        self.path = workdir / METRICS_FILE
        self._writer = None
        if tensorboard and jax.process_index() == 0:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs tensorboardX (pip install -r requirements.txt); run without "
                                  "it, metrics.jsonl holds the same numbers") from None
            self._writer = SummaryWriter(str(workdir / TENSORBOARD_DIR))

    def truncate(self, last_epoch: int) -> None:
        """Drops the lines of epochs after `last_epoch` (work after the last checkpoint, which a resume redoes), and a
        line cut short by a kill mid-write."""
        if self.path.exists() and jax.process_index() == 0:
            lines = [line for line in self.path.read_text().splitlines() if _epoch_of(line) <= last_epoch]
            self.path.write_text("".join(line + "\n" for line in lines))

    def write(self, record: dict[str, Any]) -> None:
        """Appends `record`, and writes its numbers to TensorBoard at its `step`."""
        _append_json(self.path, record)
        if self._writer is not None and "step" in record:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name not in ("epoch", "step"):
                    self._writer.add_scalar(name, value, record["step"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _epoch_of(line: str) -> float:
    """The epoch of one line of `metrics.jsonl`; infinity for a line that is not whole JSON (cut short)."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _append_json(path: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line (on the first process only, in a multi-host run)."""
    if jax.process_index() != 0:
        return
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def train_and_evaluate(
    config: configs.Config,
    workdir: str | os.PathLike,
    *,
    model: Any = None,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains in `workdir` up to `config.epochs` epochs, resuming from its latest good checkpoint.

    Each epoch is one compiled call; after it the validation split is evaluated, a line is appended to
    `metrics.jsonl` and a checkpoint is saved (in the background). The best checkpoint is the one of the lowest
    validation loss: the NELBO, or for `objective=iwae` the run's own importance-weighted bound (K =
    `num_samples`, the metrics' `val_nll_bound`). A run whose loss or gradient turns non-finite
    stops with `DivergenceError`, keeping every good checkpoint and writing the failing epoch and step to the metrics.

    Args:
        config: the run's config (validated here); its `model` section is not used when `model` is given.
        workdir: the run's work directory.
        model: a model object (`vae_jax.contract`: a Flax module or a bundle such as `models.VAE`) to train instead
            of the one `config.model` describes. It describes itself for the checkpoints' metadata, the resume check
            and the protocol cards; pass the same model to resume or evaluate the run.
        data_dir, manual_dir: where TFDS keeps prepared datasets (and vae_jax its cache), and the original files.
        progress: show a progress bar.
        tensorboard: also write the metrics as TensorBoard scalars under `workdir/tensorboard`.
        log: where one-line notices go (resuming, skipped checkpoints).

    Returns:
        The last epoch's metrics line (or `{"epoch": E}` when nothing was left to train).
    """
    configs.validate(config)
    compilation_cache.enable()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    metadata = run_metadata(config, model)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, clean_unfinished=True)
    try:
        restored = _resume_or_start(checkpointer, metadata, lambda: builders.abstract_state(config, model))
        ranked_by_nelbo = checkpointer.ranked_by_nelbo() if config.objective == "iwae" else []
        if ranked_by_nelbo:
            raise ConfigError(f"{workdir} holds IWAE checkpoints that an older vae_jax ranked by validation NELBO "
                              f"(epochs {ranked_by_nelbo}), not by the run's bound; go on in a fresh --workdir with "
                              f"init_from={workdir}")
    except BaseException:
        checkpointer.close()
        raise
    for epoch, reason in restored.skipped if restored else []:
        log(f"warning: checkpoint of epoch {epoch} is unreadable ({reason}); moved aside, resuming before it")
    state, root_key, done = ((restored.state, restored.key, restored.epoch) if restored
                             else (initial_state(config, model, log), jax.random.key(config.seed), 0))
    metrics = MetricsLog(workdir, tensorboard)
    metrics.truncate(done)
    best = checkpointer.best_epoch()
    if done >= config.epochs or stops_early(config, done, best):
        reason = (f"already holds {done} epochs (>= --epochs {config.epochs})" if done >= config.epochs
                  else _early_stop_notice(config, done, best))
        log(f"{workdir} {reason}; nothing to train")
        checkpointer.close()
        metrics.close()
        return {"epoch": done}
    try:
        return _train_epochs(config, workdir, state, root_key, done, checkpointer, metrics, metadata, data_dir,
                             manual_dir, progress, log)
    finally:
        checkpointer.close()
        metrics.close()


def initial_state(config: configs.Config, model: Any = None, log: Callable[[str], None] = print) -> train.TrainState:
    """The train state a new run starts from: `builders.template_state`, with the parameters of the best checkpoint
    of the run in `config.init_from` where it names one (which must be a run of the same model)."""
    state = builders.template_state(config, model)
    if not config.init_from:
        return state
    try:
        parent = load_checkpoint(config.init_from, model=model)
    except AnotherModelError as error:  # a model object's checkpoint is restored into this run's model
        differences = error.differences
    except CheckpointError as error:
        raise ConfigError(f"init_from={config.init_from}: {error}") from None
    else:  # a preset run's checkpoint is restored into its own preset's model
        differences = layout_differences(layout(state.params), layout(parent.state.params))
    if differences:
        raise ConfigError(f"init_from={config.init_from} holds a run of another model "
                          f"({first_differences(differences)}); start from a run of this model, or drop init_from")
    log(f"starting from the parameters of {config.init_from}, epoch {parent.epoch} (its best validation loss)")
    params = parent.state.eval_params
    return state.replace(params=params, opt_state=state.tx.init(params))


def _train_epochs(config: configs.Config, workdir: Path, state: train.TrainState, root_key: jax.Array, done: int,
                  checkpointer: Checkpointer, metrics: MetricsLog, metadata: dict[str, Any],
                  data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None, progress: bool,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """The epochs `done + 1 .. config.epochs` of `train_and_evaluate`."""
    from tqdm import tqdm

    dynamic = data.is_dynamic(config.dataset)
    mesh = _mesh(config, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    train_pixels, val_pixels, state = parallel.replicate(
        (*(data.load_split(config.dataset, split, data_dir=data_dir, manual_dir=manual_dir)
           for split in ("train", "validation")), state), mesh)
    keys = train.run_keys(root_key)
    objective = builders.build_objective(config)
    if done:
        log(f"resuming {workdir} from epoch {done}")

    record: dict[str, Any] = {}
    steps_per_epoch = train_pixels.shape[0] // config.batch_size
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=done * steps_per_epoch, desc="train", unit="step",
               disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
    epoch_start = {"step": done * steps_per_epoch}

    def report(steps_done: jax.Array, running_loss: jax.Array) -> None:
        bar.update(epoch_start["step"] + int(steps_done) - bar.n)
        bar.set_postfix(epoch=epoch_start["epoch"], loss=f"{float(running_loss):.2f}", refresh=False)

    # The epoch and the validation compile side by side, before the first epoch. A run trained on the IWAE bound is
    # also validated on it, and its best checkpoint is the one of the lowest validation NLL bound: the ELBO, which
    # such a run trades for the bound, would pick its first epochs.
    lowerings = [
        lambda: train.train_epoch_jit.lower(
            state, train_pixels, keys.train, batch_size=config.batch_size, objective=objective,
            kl_weight=jnp.float32(1.0), dynamic_binarization=dynamic, mesh=mesh,
            progress=report if not bar.disable else None),  # off the CPU the bar moves once per epoch
        lambda: evaluate.evaluate_elbo.lower(state.model, state.params, val_pixels, keys.eval,
                                             batch_size=config.eval_batch_size, dynamic_binarization=dynamic,
                                             mesh=mesh)]
    if config.objective == "iwae":
        lowerings.append(lambda: evaluate.evaluate_iwae.lower(
            state.model, state.params, val_pixels, keys.eval, num_samples=config.num_samples,
            batch_size=config.eval_batch_size, dynamic_binarization=dynamic, mesh=mesh))
    run_epoch, validate, *validate_bound = compile_in_parallel(*lowerings)
    for epoch in range(done + 1, config.epochs + 1):
        start = time.perf_counter()
        epoch_start.update(step=(epoch - 1) * steps_per_epoch, epoch=epoch)
        weight = kl_weight(config, epoch)
        state, result = run_epoch(state, train_pixels, jax.random.fold_in(keys.train, epoch),
                                  kl_weight=jnp.float32(weight))
        failed_step = int(result.failed_step)
        if failed_step >= 0:
            metrics.write({"epoch": epoch, "status": "diverged", "failed_step_in_epoch": failed_step,
                           "failed_global_step": int(state.step)})
            bar.close()
            raise DivergenceError(
                f"loss or gradient became non-finite (NaN, Inf or past float32) at epoch {epoch}, step {failed_step} "
                f"of the epoch (global step {int(state.step)}); checkpoints up to epoch {epoch - 1} are kept; "
                f"{DIVERGENCE_HINT}")
        bounds = validate_bound[0](state.eval_params, val_pixels, keys.eval) if validate_bound else None
        val = evaluate.summarize(validate(state.eval_params, val_pixels, keys.eval), bounds)
        record = {
            "epoch": epoch, "step": int(state.step), "kl_weight": weight,
            "train_loss": float(np.mean(result.loss)), "train_nelbo": float(np.mean(result.nelbo)),
            "train_rec": float(np.mean(result.rec)), "train_kl": float(np.mean(result.kl)),
            "train_kl_per_dim": evaluate.per_dimension_list(result.kl_per_dim),
            "val_nelbo": val["nelbo"], "val_rec": val["rec"], "val_kl": val["kl"],
            "val_kl_per_dim": val["kl_per_dim"], "val_active_units": val["active_units"],
            **({"val_nll_bound": val["nll"]} if bounds is not None else {}),
            "seconds": round(time.perf_counter() - start, 3),
        }
        metrics.write(record)
        checkpointer.save(epoch, state, root_key, val_loss=val.get("nll", val["nelbo"]), metadata=metadata)
        bar.update(epoch * steps_per_epoch - bar.n)
        bar.set_postfix(epoch=epoch, train_nelbo=f"{record['train_nelbo']:.2f}", val_nelbo=f"{val['nelbo']:.2f}")
        best = checkpointer.best_epoch()
        if stops_early(config, epoch, best):
            log(_early_stop_notice(config, epoch, best))
            break
    bar.close()
    return record


def compile_in_parallel(*lowerings: Callable[[], Any]) -> list[Any]:
    """Traces and compiles each `lowering()` (a function returning a `jax.stages.Lowered`) in a thread of its own, so
    that XLA compiles them side by side; returns the compiled functions in order."""
    with concurrent.futures.ThreadPoolExecutor(len(lowerings)) as pool:
        return list(pool.map(lambda lowering: lowering().compile(), lowerings))


def load_checkpoint(workdir: str | os.PathLike, epoch: int | None = None, model: Any = None) -> Restored:
    """The best checkpoint of `workdir` (`Checkpointer.best_epoch`), or that of `epoch`, restored into the run's
    model (the preset's, or `model`, which a run of a model object needs)."""
    compilation_cache.enable()
    workdir = Path(workdir)
    no_checkpoints = CheckpointError(f"work directory {workdir} has no checkpoints; run `train --workdir {workdir}` "
                                     "first")
    if not (workdir / "checkpoints").is_dir():
        raise no_checkpoints
    checkpointer = Checkpointer(workdir)
    try:
        epochs = checkpointer.epochs()
        if not epochs:
            raise no_checkpoints
        chosen = checkpointer.best_epoch() if epoch is None else epoch
        metadata = checkpointer.read_metadata(chosen if chosen in epochs else epochs[-1])
        if model is None and not _is_preset_model(metadata):
            raise _custom_model_error(metadata, workdir)
        return checkpointer.restore(builders.abstract_state(run_config(metadata), model), jax.random.key(0),
                                    epoch=chosen)
    finally:
        checkpointer.close()


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
    model: Any = None,
    epoch: int | None = None,
    batch_size: int | None = None,
    iwae_samples: int = 0,
    iwae_chunk: int = 500,
    eval_seed: int = 0,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Negative ELBO (and, with `iwae_samples` K > 0, the NLL estimate -log (1/K) sum_k w_k) of the best or a
    given checkpoint on a whole split, with its protocol card; appends the result to `eval.jsonl`.

    Args:
        workdir: the run's work directory.
        split: `train`, `validation` or `test`.
        model: the model object of a run that trained one (see `train_and_evaluate`); None for a preset run.
        epoch: the checkpoint; None takes the best by validation loss.
        batch_size: examples evaluated at once (memory only; default `eval_batch_size`, or 100 with K > 0).
        iwae_samples: K importance samples per example; 0 skips the importance-weighted estimate.
        iwae_chunk: importance samples evaluated at once (memory only).
        eval_seed: seed of the evaluation's noise and dynamic binarization.

    Returns:
        A JSON-ready dict: `nelbo`, `nelbo_stderr`, `rec`, `kl`, `kl_per_dim`, `active_units`, (`nll`,
        `nll_stderr`,) the protocol card of `protocol.protocol_card`, `run`, `epoch` and `step`.
    """
    workdir = Path(workdir)
    if iwae_samples < 0 or iwae_chunk <= 0 or (batch_size is not None and batch_size <= 0):
        raise ConfigError("--iwae-samples must be >= 0, and --iwae-chunk and --batch-size positive")
    restored = load_checkpoint(workdir, epoch, model)
    config, state = run_config(restored.metadata), restored.state
    elbo_batch, iwae_batch = batch_size or config.eval_batch_size, batch_size or 100
    mesh = _mesh(config, batch_size=elbo_batch, **({"iwae_batch_size": iwae_batch} if iwae_samples else {}))
    pixels, params = parallel.replicate(
        (data.load_split(config.dataset, split, data_dir=data_dir, manual_dir=manual_dir), state.eval_params), mesh)
    key = jax.random.key(eval_seed)
    dynamic = data.is_dynamic(config.dataset)
    terms = evaluate.evaluate_elbo(state.model, params, pixels, key, batch_size=elbo_batch,
                                   dynamic_binarization=dynamic, mesh=mesh)
    bounds = None
    if iwae_samples:
        bounds = evaluate.evaluate_iwae(state.model, params, pixels, key, num_samples=iwae_samples,
                                        batch_size=iwae_batch, chunk_size=iwae_chunk, dynamic_binarization=dynamic,
                                        mesh=mesh)
    summary = evaluate.summarize(terms, bounds)
    result = {
        **summary, "run": workdir.name, "epoch": restored.epoch, "step": int(state.step),
        **protocol.protocol_card(config.dataset, split, summary["num_examples"], iwae_samples or None, eval_seed,
                                 restored.metadata),
    }
    _append_json(workdir / EVAL_FILE, result)
    return result


def evaluate_gaps(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
    model: Any = None,
    num_examples: int | None = None,
    steps: int = configs.GapsConfig.steps,
    num_samples: int = configs.GapsConfig.num_samples,
    learning_rate: float = configs.GapsConfig.learning_rate,
    eval_samples: int = configs.GapsConfig.eval_samples,
    iwae_samples: int = configs.GapsConfig.iwae_samples,
    batch_size: int = configs.GapsConfig.batch_size,
    eval_seed: int = 0,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], inference.Gaps]:
    """The inference gaps of the best checkpoint on the first `num_examples` examples of a split (all by default):
    log p(x), L[q*] and L[q] per example (`inference.amortization_gaps`), summarized with standard errors. Appends two
    eval lines to `eval.jsonl`, whose protocol cards tell the inference apart: the amortized one (NELBO with
    `eval_samples` samples, and the NLL with K = `iwae_samples`) and the per-example one (NELBO of q*).

    Args:
        workdir: the run's work directory.
        split: `train`, `validation` or `test`.
        model: the model object of a run that trained one; None for a preset run.
        num_examples: evaluate the split's first this many examples; None for all.
        steps, num_samples, learning_rate, eval_samples, iwae_samples, batch_size: see `configs.GapsConfig`.
        eval_seed: seed of the evaluation's randomness.

    Returns:
        The summary (means and standard errors of the three numbers, the two gaps and their sum, wall times per
        example, the protocol card) and the per-example `inference.Gaps`.
    """
    workdir = Path(workdir)
    for name, value in (("--steps", steps), ("--samples", num_samples), ("--eval-samples", eval_samples),
                        ("--iwae-samples", iwae_samples), ("--batch-size", batch_size)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if learning_rate <= 0 or (num_examples is not None and num_examples <= 0):
        raise ConfigError("--learning-rate and --num-examples must be positive")
    restored = load_checkpoint(workdir, None, model)
    config, state = run_config(restored.metadata), restored.state
    for method in ("posterior", "joint_samples_given_posterior"):
        if not callable(getattr(state.model, method, None)):
            raise ConfigError(f"per-example inference needs the model's {method}() (vae_jax.contract); "
                              f"{contract.describe(state.model)['class']} has none")
    pixels = data.load_split(config.dataset, split, data_dir=data_dir, manual_dir=manual_dir)[:num_examples]
    gaps = inference.amortization_gaps(
        state.model, state.eval_params, jax.device_put(pixels), jax.random.key(eval_seed), steps=steps,
        num_samples=num_samples, learning_rate=learning_rate, eval_samples=eval_samples, iwae_samples=iwae_samples,
        batch_size=batch_size, dynamic_binarization=data.is_dynamic(config.dataset))
    refined = (f"per-example: Adam (learning rate {learning_rate}) on each example's Gaussian, {steps} steps of "
               f"{num_samples} samples, from the encoder's output")
    card = functools.partial(protocol.protocol_card, config.dataset, split, len(pixels), eval_seed=eval_seed,
                             config=restored.metadata, elbo_samples=eval_samples)
    provenance = {"run": workdir.name, "epoch": restored.epoch, "step": int(state.step)}
    lines = [
        {**_means(nelbo=-gaps.elbo_amortized, nll=-gaps.log_px), **provenance, **card(iwae_samples)},
        {**_means(nelbo=-gaps.elbo_refined), **provenance, **card(None, inference=refined)},
    ]
    for line in lines:
        _append_json(workdir / EVAL_FILE, line)
    summary = {
        **_means(log_px=gaps.log_px, elbo_refined=gaps.elbo_refined, elbo_amortized=gaps.elbo_amortized,
                 approximation_gap=gaps.log_px - gaps.elbo_refined,
                 amortization_gap=gaps.elbo_refined - gaps.elbo_amortized,
                 inference_gap=gaps.log_px - gaps.elbo_amortized),
        "encoder_seconds_per_example": gaps.encoder_seconds, "refine_seconds_per_example": gaps.refine_seconds,
        **provenance, **card(iwae_samples, inference=refined),
    }
    return summary, gaps


def write_gaps_csv(path: str | os.PathLike, gaps: inference.Gaps) -> None:
    """One row per example: its index in the split, log p(x), L[q*], L[q] and the two gaps."""
    columns = {"log_px": gaps.log_px, "elbo_refined": gaps.elbo_refined, "elbo_amortized": gaps.elbo_amortized,
               "approximation_gap": gaps.log_px - gaps.elbo_refined,
               "amortization_gap": gaps.elbo_refined - gaps.elbo_amortized}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rows = ["index," + ",".join(columns)]
    rows += [f"{i}," + ",".join(f"{values[i]:.4f}" for values in columns.values()) for i in range(len(gaps.log_px))]
    Path(path).write_text("\n".join(rows) + "\n")


def _means(**values: np.ndarray) -> dict[str, float]:
    """`{name: mean, name_stderr: standard error of the mean}` of each `[N]` array."""
    summary = {}
    for name, array in values.items():
        summary[name], summary[f"{name}_stderr"] = evaluate.mean_and_stderr(np.asarray(array, np.float64))
    return summary


def write_sample_figures(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: Any = None,
    epoch: int | None = None,
    num_images: int = 100,
    seed: int = 0,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
    mnist_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """The figures of `figures.sample_figures` from the best (or a given) checkpoint: prior samples in `out`, and
    beside it reconstructions, interpolations, and for a 2-D code the manifold and the scatter of the posterior means
    of the 10,000 `mnist` test digits (binarized with the evaluation's per-example keys) coloured by their labels.

    Args:
        workdir: the run's work directory.
        out: path of the prior-samples PNG.
        model: the model object of a run that trained one; None for a preset run.
        epoch: the checkpoint; None takes the best by validation loss.
        num_images: images per grid.
        seed: seed of the prior samples and of the test digits' binarization.
        data_dir, manual_dir: where the run's dataset is prepared, and its original files.
        mnist_dir: the original MNIST files, for the labels of the scatter when `mnist` is not prepared yet.

    Returns:
        The path of each figure: `samples`, `reconstructions`, `interpolations` (and `manifold`, `scatter`).
    """
    from vae_jax import figures

    restored = load_checkpoint(workdir, epoch, model)
    state, config = restored.state, run_config(restored.metadata)
    sample_key, binarize_key = jax.random.split(jax.random.key(seed))

    def binarized(pixels: np.ndarray, dynamic: bool) -> jax.Array:
        return map_examples(lambda x, _: x, pixels, np.arange(len(pixels)), binarize_key, dynamic)

    test = data.load_split(config.dataset, "test", data_dir=data_dir, manual_dir=manual_dir)[:2 * num_images]
    test_inputs = binarized(test, data.is_dynamic(config.dataset))
    labelled = None
    if figures.code_size(state.model, state.eval_params, test_inputs) == 2:
        mnist_dir = manual_dir if mnist_dir is None and config.dataset == data.LABELED_DATASET else mnist_dir
        digits = data.load_split(data.LABELED_DATASET, "test", data_dir=data_dir, manual_dir=mnist_dir)
        labelled = (binarized(digits, True), data.load_labels("test", data_dir=data_dir, manual_dir=mnist_dir))
    return figures.sample_figures(state.model, state.eval_params, out, test_inputs, sample_key, num_images, labelled)
