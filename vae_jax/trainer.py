"""Training a run in its work directory, for a preset or for any model: resume, epochs, validation, checkpoints,
metrics, early stopping, and the diagnosis of a step that went non-finite.

Each entry point turns JAX's persistent compilation cache on first (`vae_jax.compilation_cache`: set
`VAE_JAX_COMPILATION_CACHE=off` to keep it off).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vae_jax import buckets, builders, compilation_cache, configs, data, evaluate, parallel, stream, train
from vae_jax.checkpoint import AnotherModelError, Checkpointer, Restored, first_differences
from vae_jax.errors import CheckpointError, ConfigError, DivergenceError
from vae_jax.interrupt import StopRequested, StopSignals
from vae_jax.lock import WorkdirLock
from vae_jax.partial import PARTIAL_DIR, Partial, clear_partial, concatenate, load_partial, save_partial
from vae_jax.progress import ProgressBar
from vae_jax.resolve import Run, check_model, divergence_advice, failing_terms, resolve_run
from vae_jax.sequences import PaddedSplit
from vae_jax.train import EpochResult
from vae_jax.workdir import MetricsLog, check_resumable, config_of


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


def fit(
    config: configs.Config,
    workdir: str | os.PathLike,
    *,
    model: Any = None,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    log: Callable[[str], None] = print,
    stop_check_steps: int | None = None,
    device_memory_budget: int | str = stream.DEFAULT_DEVICE_MEMORY_BUDGET,
) -> dict[str, Any]:
    """Trains in `workdir` up to `config.epochs` epochs, resuming from its latest good checkpoint.

    The run holds the work directory's lock (`lock.WorkdirLock`) for its whole life: a second `fit` there is refused.
    Each epoch is one compiled call (or one per `stop_check_steps` steps); after it the validation split is
    evaluated, a line is appended to `metrics.jsonl` (and flushed to disk) and then a checkpoint is saved (in the
    background). SIGTERM or SIGINT stops the run at the next check (`interrupt`): it keeps a checkpoint of the work it
    finished, mid-epoch if need be (`partial`), and raises `interrupt.StopRequested`. The best checkpoint is the
    one of the lowest validation loss: the NELBO, or for `objective=iwae` the run's own importance-weighted bound
    (K = `num_samples`, the metrics' `val_nll_bound`). Before anything compiles, the model is checked on the first
    training examples (`resolve.check_model`). A run whose loss or gradient turns non-finite stops with
    `DivergenceError` naming the term that did, keeping every good checkpoint and writing the failing epoch and step
    to the metrics.

    Args:
        config: the run's config (validated here); its `model` section is not used when `model` is given.
        workdir: the run's work directory.
        model: a model object (`vae_jax.contract`: a Flax module or a bundle such as `models.VAE`) to train instead
            of the one `config.model` describes. It describes itself for the checkpoints' metadata, the resume check
            and the protocol cards; pass the same model to resume or evaluate the run.
        data_dir, manual_dir: where TFDS keeps prepared datasets (and vae_jax its cache), and the original files.
        progress: show progress bars (training, and TFDS's while it first prepares a dataset).
        tensorboard: also write the metrics as TensorBoard scalars under `workdir/tensorboard`.
        log: where one-line notices go (resuming, skipped checkpoints, early stopping).
        stop_check_steps: optimizer steps between two checks for a stop signal (the time a stop may take); None
            checks once per epoch. It changes no number: an epoch run in pieces is the epoch run whole.
        device_memory_budget: bytes, or a size such as `512M` or `2G`: a split larger streams from the host in chunks
            (`vae_jax.stream`; one line to `log` says so). It changes no number either.

    Returns:
        The last epoch's metrics line, as written to `metrics.jsonl` (`epoch`, `step`, `kl_weight`, `train_*`,
        `val_*`, `seconds`), or `{"epoch": E}` when nothing was left to train.
    """
    compilation_cache.enable()
    run = resolve_run(config, workdir, model, data_dir=data_dir, manual_dir=manual_dir)
    budget = stream.parse_budget(device_memory_budget)
    if stop_check_steps is not None and stop_check_steps <= 0:
        raise ConfigError(f"--stop-check-steps must be positive, got {stop_check_steps}")
    with (StopSignals() as stop, WorkdirLock(run.workdir),
          Checkpointer(run.workdir, keep=config.keep_checkpoints, clean_unfinished=True) as checkpointer,
          MetricsLog(run.workdir, tensorboard) as metrics):
        done, start = _start(run, checkpointer, metrics, log)
        if start is None:
            return {"epoch": done}
        loop = _Loop(run, checkpointer, metrics, log, *_splits(run, data_dir, manual_dir, progress), start.key, stop,
                     stop_check_steps, budget)
        return loop.train(start, progress)


def _start(run: Run, checkpointer: Checkpointer, metrics: MetricsLog,
           log: Callable[[str], None]) -> tuple[int, Partial | None]:
    """The epochs done, and where the run goes on from as a `Partial` (`step` 0 at an epoch's start): the latest good
    checkpoint, or the epoch stopped part-way after it, or a new run's initial state; None if there is nothing left
    to train. The metrics are made to match the checkpoint (`MetricsLog.repair`)."""
    config = run.config
    restored = _resume_or_start(run, checkpointer)
    for epoch, reason in restored.skipped if restored else []:
        log(f"warning: checkpoint of epoch {epoch} is unreadable ({reason}); moved aside, resuming before it")
    done = restored.epoch if restored else 0
    metrics.repair(done, checkpointer.record(done) if restored else None)
    best = checkpointer.best_epoch()
    if done >= config.epochs or stops_early(config, done, best):
        clear_partial(run.workdir)
        reason = (f"already holds {done} epochs (>= --epochs {config.epochs})" if done >= config.epochs
                  else _early_stop_notice(config, done, best))
        log(f"{run.workdir} {reason}; nothing to train")
        return done, None
    partial = load_partial(run.workdir, run.abstract_state(), done, run.metadata)
    if partial is not None:
        log(f"resuming {run.workdir} from step {partial.step} of epoch {partial.epoch}")
        return done, partial
    if done:
        log(f"resuming {run.workdir} from epoch {done}")
    state, key = ((restored.state, restored.key) if restored
                  else (initial_state(run, log), jax.random.key(config.seed)))
    return done, Partial(done + 1, 0, state, key, None)


def _resume_or_start(run: Run, checkpointer: Checkpointer) -> Restored | None:
    """The latest good checkpoint of the run, or None for a new run; a resumed run may change only
    `workdir.RESUMABLE_FIELDS`."""
    stored = checkpointer.latest_metadata()
    if stored is None and checkpointer.epochs():
        raise CheckpointError(f"no checkpoint in {run.workdir} is readable; start in a fresh --workdir")
    if stored is None:
        return None
    check_resumable(stored, run.metadata, run.workdir)
    ranked_by_nelbo = checkpointer.ranked_by_nelbo() if run.config.objective == "iwae" else []
    if ranked_by_nelbo:
        raise ConfigError(f"{run.workdir} holds IWAE checkpoints that an older vae_jax ranked by validation NELBO "
                          f"(epochs {ranked_by_nelbo}), not by the run's bound; go on in a fresh --workdir with "
                          f"init_from={run.workdir}")
    return checkpointer.restore(run.abstract_state(), jax.random.key(0))


def initial_state(run: Run, log: Callable[[str], None] = print) -> train.TrainState:
    """The train state a new run starts from: `Run.template_state`, with the parameters of the best checkpoint of
    the run in `config.init_from` where it names one (which must be a run of the same model)."""
    state = run.template_state()
    parent_dir = run.config.init_from
    if not parent_dir:
        return state
    try:
        if not (Path(parent_dir) / "checkpoints").is_dir():
            raise CheckpointError(f"work directory {parent_dir} has no checkpoints")
        with Checkpointer(parent_dir) as checkpointer:
            parent_config = config_of(checkpointer.read_metadata(checkpointer.best_epoch()))
            template = builders.abstract_state(parent_config, run.model, run.example,
                                               run.dataset.split_size("train"))
            parent = checkpointer.restore(template, jax.random.key(0), epoch=checkpointer.best_epoch())
    except AnotherModelError as error:
        raise ConfigError(f"init_from={parent_dir} holds a run of another model "
                          f"({first_differences(error.differences)}); start from a run of this model, or drop "
                          "init_from") from None
    except CheckpointError as error:
        raise ConfigError(f"init_from={parent_dir}: {error}") from None
    log(f"starting from the parameters of {parent_dir}, epoch {parent.epoch} (its best validation loss)")
    params = parent.state.eval_params
    return state.replace(params=params, opt_state=state.tx.init(params))


def _splits(run: Run, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None,
            progress: bool) -> tuple[Any, Any]:
    """The run's training and validation splits: `[N, D]` uint8 each, memory maps of their cached files; or, for a
    dataset of sequences, `sequences.PaddedSplit`s read from `manual_dir`."""
    if run.dataset.sequential:
        return tuple(data.load_sequences(run.config.dataset, split, manual_dir=manual_dir)
                     for split in ("train", "validation"))
    return tuple(data.load_split(run.config.dataset, split, data_dir=data_dir, manual_dir=manual_dir,
                                 progress=progress, mmap=True) for split in ("train", "validation"))


def _parts(split: Any, budget: int, mesh: Mesh | None, name: str, log: Callable[[str], None],
           batch_size: int = 1) -> list[buckets.Part]:
    """A split in the parts that the compiled functions run on (`vae_jax.buckets`), on the device: an image split
    whole (streamed from the host above `budget`: `stream.place`); a split of sequences in length buckets, aligned
    on `batch_size`."""
    if isinstance(split, PaddedSplit):
        return buckets.on_device(buckets.sequence_parts(split, batch_size=batch_size), mesh)
    return buckets.whole(stream.place(split, budget=budget, mesh=mesh, name=name, log=log))


def mesh_for(config: configs.Config, **batch_sizes: int) -> Mesh | None:
    """The data-parallel mesh over all devices if `config.data_parallel`, after checking the batch sizes."""
    if not config.data_parallel:
        return None
    mesh = parallel.data_mesh()
    parallel.check_divisible(mesh, **batch_sizes)
    return mesh


def compile_in_parallel(*lowerings: Callable[[], Any]) -> list[Any]:
    """Traces and compiles each `lowering()` (a function returning a `jax.stages.Lowered`) in a thread of its own, so
    that XLA compiles them side by side; returns the compiled functions in order."""
    with concurrent.futures.ThreadPoolExecutor(len(lowerings)) as pool:
        return list(pool.map(lambda lowering: lowering().compile(), lowerings))


@dataclasses.dataclass
class _Loop:
    """The epochs of one `fit` call: the run, where it writes, its data, and the stop it listens for."""

    run: Run
    checkpointer: Checkpointer
    metrics: MetricsLog
    log: Callable[[str], None]
    train_split: Any  # on the host (`_splits`), then in parts on the device (`_parts`) by `train`
    val_split: Any
    root_key: jax.Array
    stop: StopSignals
    stop_check_steps: int | None
    budget: int  # the device memory budget, bytes
    steps: int = dataclasses.field(init=False, default=0)  # steps per epoch, set by `train`
    part_steps: list[int] = dataclasses.field(init=False, default_factory=list)  # each training part's, likewise
    _new_piece: Callable[[int, int], Any] = dataclasses.field(init=False, default=None)  # set by `_compile`
    _pieces: dict[tuple[int, int], Any] = dataclasses.field(default_factory=dict)  # compiled, by (part, length)

    def train(self, start: Partial, progress: bool) -> dict[str, Any]:
        """The epochs from `start` to `config.epochs`; returns the last one's metrics line."""
        config, keys = self.run.config, train.run_keys(self.root_key)
        mesh = mesh_for(config, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
        place = functools.partial(_parts, budget=self.budget, mesh=mesh, log=self.log)
        self.train_split = place(self.train_split, name=f"{config.dataset}/train", batch_size=config.batch_size)
        self.val_split = place(self.val_split, name=f"{config.dataset}/validation")
        state = parallel.replicate(start.state, mesh)
        check_model(self.run, state.params, self.train_split[0].examples, keys.eval)
        self.part_steps = buckets.part_steps(self.train_split, config.batch_size)
        buckets.check_batch_size(self.train_split, config.batch_size)
        self.steps = sum(self.part_steps)
        bar = ProgressBar(config.epochs * self.steps, (start.epoch - 1) * self.steps + start.step, progress)
        try:
            validate, validate_bound = self._compile(state, keys, mesh, bar.report if not bar.bar.disable else None)
            record: dict[str, Any] = {}
            for epoch in range(start.epoch, config.epochs + 1):
                bar.start_epoch(epoch, (epoch - 1) * self.steps)
                first, before = (start.step, start.result) if epoch == start.epoch else (0, None)
                started = time.perf_counter()
                state, result = self._steps(state, keys, epoch, first, before)
                record = self._close_epoch(state, keys, epoch, result, validate, validate_bound, started)
                bar.end_epoch(epoch * self.steps, record)
                best = self.checkpointer.best_epoch()
                if stops_early(config, epoch, best):
                    self.log(_early_stop_notice(config, epoch, best))
                    break
                if self.stop.received and epoch < config.epochs:
                    raise StopRequested(f"stopped by {self.stop.name} after epoch {epoch}, whose checkpoint is kept; "
                                        "re-run the same command to resume", self.stop.received)
            return record
        finally:
            bar.bar.close()

    def _compile(self, state: train.TrainState, keys: train.RunKeys, mesh: Mesh | None,
                 report: Callable[..., None] | None) -> tuple[Any, Any]:
        """A piece of an epoch (`stop_check_steps` steps, or all) and the validation, compiled side by side. A run
        trained on the IWAE bound is also validated on it, and its best checkpoint is the one of the lowest
        validation NLL bound: the ELBO, which such a run trades for the bound, would pick its first epochs. A split
        streamed from the host is trained on by `stream.train_epoch` (compiled at its first call) and validated a
        chunk at a time (`stream.over_split`)."""
        config, model, dynamic = self.run.config, self.run.model, self.run.dataset.dynamic
        options = {"batch_size": config.batch_size, "objective": builders.build_objective(config),
                   "dynamic_binarization": dynamic, "mesh": mesh, "progress": report}
        def lower_piece(part: int, steps: int) -> Any:
            return buckets.train_part_jit.lower(
                state, self.train_split[part], keys.train, part_number=self._part_number(part), num_steps=steps,
                kl_weight=jnp.float32(1.0), first_step=jnp.int32(0), epoch_offset=jnp.int32(0), **options)

        streamed = isinstance(self.train_split[0].examples, stream.Streamed)
        self._new_piece = (stream.piece_of(options) if streamed
                           else (lambda part, steps: lower_piece(part, steps).compile()))
        evaluation = {"batch_size": config.eval_batch_size, "dynamic_binarization": dynamic, "mesh": mesh}
        validate = functools.partial(evaluate.evaluate_elbo, model, **evaluation)
        bound = functools.partial(evaluate.evaluate_iwae, model, num_samples=config.num_samples, **evaluation)
        if self.run.dataset.sequential:  # each part's piece and evaluation compile at their first call
            return (buckets.over_parts(validate, self.val_split),
                    buckets.over_parts(bound, self.val_split) if config.objective == "iwae" else None)
        val_pixels = self.val_split[0].examples
        val_input = stream.chunk_input(val_pixels, config.eval_batch_size)
        evaluation["first_index"] = jnp.int32(0)
        lowerings = {"validate": lambda: evaluate.evaluate_elbo.lower(model, state.params, val_input, keys.eval,
                                                                      **evaluation)}
        if config.objective == "iwae":
            lowerings["bound"] = lambda: evaluate.evaluate_iwae.lower(model, state.params, val_input, keys.eval,
                                                                      num_samples=config.num_samples, **evaluation)
        piece_steps = min(self.stop_check_steps or self.steps, self.steps)
        if not streamed:
            lowerings["piece"] = lambda: lower_piece(0, piece_steps)
        compiled = dict(zip(lowerings, compile_in_parallel(*lowerings.values())))
        if "piece" in compiled:
            self._pieces[0, piece_steps] = compiled["piece"]
        return tuple(stream.over_split(compiled[name], val_pixels, config.eval_batch_size) if name in compiled
                     else None for name in ("validate", "bound"))

    def _part_number(self, part: int) -> int | None:
        """`buckets.train_part`'s `part_number` of training part `part`: None for a split in one part."""
        return None if len(self.train_split) == 1 else part

    def _piece(self, part: int, num_steps: int) -> Any:
        """The piece of `num_steps` steps of training part `part` (compiled on first use for a length other than the
        usual), called as `piece(state, part, epoch_key, kl_weight=, first_step=, epoch_offset=)`."""
        if (part, num_steps) not in self._pieces:
            self._pieces[part, num_steps] = self._new_piece(part, num_steps)
        return self._pieces[part, num_steps]

    def _steps(self, state: train.TrainState, keys: train.RunKeys, epoch: int, first: int,
               before: EpochResult | None) -> tuple[train.TrainState, EpochResult]:
        """The steps `first ..` of `epoch`, in pieces of `stop_check_steps`, after the results `before` of its
        steps before `first`; a stop signal between two pieces keeps the epoch's state so far (`partial`)."""
        epoch_key, weight = jax.random.fold_in(keys.train, epoch), kl_weight(self.run.config, epoch)
        schedule = buckets.epoch_schedule(epoch_key, self.part_steps)
        step, result = first, before
        while step < self.steps:
            part, offset, in_part = buckets.locate(schedule, self.part_steps, step)
            num_steps = min(self.stop_check_steps or self.steps, self.part_steps[part] - in_part)
            state, piece = self._piece(part, num_steps)(
                state, self.train_split[part], epoch_key, kl_weight=jnp.float32(weight),
                first_step=jnp.int32(in_part), epoch_offset=jnp.int32(offset))
            failed_step = int(piece.failed_step)
            if failed_step >= 0:
                self.metrics.write({"epoch": epoch, "status": "diverged", "failed_step_in_epoch": failed_step,
                                    "failed_global_step": int(state.step)})
                raise self._divergence(state, epoch_key, epoch, failed_step)
            step, result = step + num_steps, concatenate(result, piece)
            if self.stop.received and step < self.steps:
                save_partial(self.run.workdir, Partial(epoch, step, state, self.root_key, result), self.run.metadata)
                raise StopRequested(f"stopped by {self.stop.name} at step {step} of epoch {epoch} (global step "
                                    f"{int(state.step)}), whose state is kept in {self.run.workdir / PARTIAL_DIR}; "
                                    "re-run the same command to resume", self.stop.received)
        return state, result

    def _close_epoch(self, state: train.TrainState, keys: train.RunKeys, epoch: int, result: EpochResult,
                     validate: Any, validate_bound: Any, started: float) -> dict[str, Any]:
        """The epoch's validation, its metrics line (written and flushed first) and its checkpoint; `started` is the
        time its steps began."""
        bounds = validate_bound(state.eval_params, keys.eval) if validate_bound else None
        val = evaluate.summarize(validate(state.eval_params, keys.eval), bounds)
        record = {
            "epoch": epoch, "step": int(state.step), "kl_weight": kl_weight(self.run.config, epoch),
            # XLA's means (as NumPy's of a JAX array are): the same whether the epoch ran whole or in pieces.
            "train_loss": float(jnp.mean(result.loss)), "train_nelbo": float(jnp.mean(result.terms.nelbo)),
            "train_rec": float(jnp.mean(result.terms.rec)), "train_kl": float(jnp.mean(result.terms.kl)),
            "train_kl_per_dim": evaluate.per_dimension_list(jnp.mean(result.terms.kl_per_dim, axis=0)),
            "val_nelbo": val["nelbo"], "val_rec": val["rec"], "val_kl": val["kl"],
            "val_kl_per_dim": val["kl_per_dim"], "val_active_units": val["active_units"],
            **({"val_nll_bound": val["nll"]} if bounds is not None else {}),
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.metrics.write(record)
        self.checkpointer.save(epoch, state, self.root_key, val_loss=val.get("nll", val["nelbo"]),
                               metadata=self.run.metadata, record=record)
        clear_partial(self.run.workdir)
        return record

    def _divergence(self, state: train.TrainState, epoch_key: jax.Array, epoch: int,
                    failed_step: int) -> DivergenceError:
        """The error of a step that went non-finite, naming the term: the failing batch is replayed at the
        parameters it met (no later update was applied) and its joint samples checked term by term."""
        config = self.run.config
        part, _, in_part = buckets.locate(buckets.epoch_schedule(epoch_key, self.part_steps), self.part_steps,
                                          failed_step)
        examples = self.train_split[part]
        examples_key, batches = buckets.part_batches(epoch_key, self._part_number(part), len(examples.indices),
                                                     config.batch_size)
        positions = np.asarray(batches[in_part])
        batch = jax.tree.map(lambda a: a[positions], examples.examples)
        terms = failing_terms(self.run.model, builders.build_objective(config), state.params, batch,
                              examples.indices[positions], examples_key, self.run.dataset.dynamic)
        where = (f"at epoch {epoch}, step {failed_step} of the epoch (global step {int(state.step)}); "
                 f"checkpoints up to epoch {epoch - 1} are kept")
        if terms:
            return DivergenceError(f"{', '.join(terms)} became non-finite {where}; {divergence_advice(self.run, True)}")
        return DivergenceError(f"the loss or gradient became non-finite (NaN, Inf or past float32) {where}; "
                               f"{divergence_advice(self.run, False)}")
