"""A training run in a work directory: resume, epochs, validation, checkpoints, metrics; and its evaluation.

A work directory holds `checkpoints/` (Orbax), `metrics.jsonl` (one line per epoch) and `eval.jsonl`
(one line per `evaluate_checkpoint` call).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from vae_jax import configs, data, evaluate, models, parallel, protocol, train
from vae_jax.checkpoint import Checkpointer, Restored
from vae_jax.errors import CheckpointError, ConfigError, DivergenceError
from vae_jax.objective import map_examples

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
DIVERGENCE_HINT = ("resume with a lower optim.learning_rate, with optim.grad_clip_norm=100, or with the encoder's "
                   "log-variance bounded by model.logvar_bound=10")


def template_state(config: configs.Config) -> train.TrainState:
    """A freshly initialized train state for `config` (also the structure that checkpoints restore into)."""
    encoder, decoder = models.build_models(config.model)
    steps_per_epoch = data.SPLIT_SIZES["train"] // config.batch_size
    tx = train.make_optimizer(config.optim, total_steps=steps_per_epoch * config.epochs)
    keys = train.run_keys(jax.random.key(config.seed))
    return train.create_train_state(keys.init, encoder, decoder, tx, prior=models.build_prior(config.model))


def _append_json(path: Path, record: dict[str, Any]) -> None:
    """Appends one JSON line (on the first process only, in a multi-host run)."""
    if jax.process_index() != 0:
        return
    with open(path, "a") as file:
        file.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drops metric lines of epochs after `last_epoch` (work after the last checkpoint that a resume redoes)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= last_epoch]
        path.write_text("".join(line + "\n" for line in lines))


def stored_config(workdir: str | os.PathLike) -> configs.Config | None:
    """The config of the run in `workdir`, or None if it holds no checkpoint."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return None
    checkpointer = Checkpointer(workdir)
    metadata = checkpointer.latest_metadata()
    checkpointer.close()
    return None if metadata is None else configs.from_dict(metadata)


# Fields a resumed run may change: they leave the shapes of the train state alone.
RESUMABLE_FIELDS = ("epochs", "eval_batch_size", "keep_checkpoints", "optim.learning_rate", "optim.schedule",
                    "optim.final_lr_fraction", "optim.grad_clip_norm", "model.logvar_bound", "model.matmul_precision",
                    "free_bits", "data_parallel")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _resume_or_start(checkpointer: Checkpointer, config: configs.Config) -> Restored | None:
    """The latest good checkpoint, or None for a new run; a resumed run may change only `RESUMABLE_FIELDS`."""
    metadata = checkpointer.latest_metadata()
    if metadata is None and checkpointer.epochs():
        raise CheckpointError(f"no checkpoint in {checkpointer.workdir} is readable; start in a fresh --workdir")
    if metadata is None:
        return None
    stored = _flatten(configs.to_dict(configs.from_dict(metadata)))
    given = _flatten(configs.to_dict(config))
    differing = [name for name in given if name not in RESUMABLE_FIELDS and given[name] != stored[name]]
    if differing:
        raise ConfigError(f"{checkpointer.workdir} holds a run whose {', '.join(differing)} differ from this config; "
                          f"a resumed run may change only {', '.join(RESUMABLE_FIELDS)}; use a fresh --workdir")
    return checkpointer.restore(template_state(config), jax.random.key(0))


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


def train_and_evaluate(
    config: configs.Config,
    workdir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains `config` in `workdir` up to `config.epochs` epochs, resuming from its latest good checkpoint.

    Each epoch is one compiled call; after it the validation split is evaluated, a line is appended to
    `metrics.jsonl` and a checkpoint is saved. A run whose loss or gradient turns non-finite stops with
    `DivergenceError`, keeping every good checkpoint and writing the failing epoch and step to the metrics.

    Returns:
        The last epoch's metrics line (or `{"epoch": E}` when nothing was left to train).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints, clean_unfinished=True)
    restored = _resume_or_start(checkpointer, config)
    for epoch, reason in restored.skipped if restored else []:
        log(f"warning: checkpoint of epoch {epoch} is unreadable ({reason}); moved aside, resuming before it")
    state, root_key, done = (
        (restored.state, restored.key, restored.epoch) if restored
        else (template_state(config), jax.random.key(config.seed), 0)
    )
    metrics_path = workdir / METRICS_FILE
    _truncate_metrics(metrics_path, done)
    if done >= config.epochs:
        log(f"{workdir} already holds {done} epochs (>= --epochs {config.epochs}); nothing to train")
        checkpointer.close()
        return {"epoch": done}

    dynamic = data.is_dynamic(config.dataset)
    mesh = _mesh(config, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    train_pixels, val_pixels, state = parallel.replicate(
        (*(data.load_split(config.dataset, split, data_dir=data_dir, manual_dir=manual_dir)
           for split in ("train", "validation")), state), mesh)
    keys = train.run_keys(root_key)
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

    for epoch in range(done + 1, config.epochs + 1):
        start = time.perf_counter()
        epoch_start.update(step=(epoch - 1) * steps_per_epoch, epoch=epoch)
        weight = kl_weight(config, epoch)
        state, result = train.train_epoch_jit(
            state, train_pixels, jax.random.fold_in(keys.train, epoch), batch_size=config.batch_size,
            objective=config.objective, num_samples=config.num_samples, kl_weight=jnp.float32(weight),
            free_bits=config.free_bits, dynamic_binarization=dynamic, mesh=mesh,
            progress=report if not bar.disable else None)  # off the CPU the bar moves once per epoch
        failed_step = int(result.failed_step)
        if failed_step >= 0:
            _append_json(metrics_path, {"epoch": epoch, "status": "diverged", "failed_step_in_epoch": failed_step,
                                        "failed_global_step": int(state.step)})
            bar.close()
            checkpointer.close()
            raise DivergenceError(
                f"loss or gradient became non-finite (NaN, Inf or past float32) at epoch {epoch}, step {failed_step} "
                f"of the epoch (global step {int(state.step)}); checkpoints up to epoch {done} are kept; "
                f"{DIVERGENCE_HINT}")
        val = evaluate.summarize(evaluate.evaluate_elbo(
            state.params, val_pixels, keys.eval, **state.models, batch_size=config.eval_batch_size,
            dynamic_binarization=dynamic, mesh=mesh))
        record = {
            "epoch": epoch, "step": int(state.step), "kl_weight": weight,
            "train_loss": float(np.mean(result.loss)), "train_nelbo": float(np.mean(result.nelbo)),
            "train_rec": float(np.mean(result.rec)), "train_kl": float(np.mean(result.kl)),
            "train_kl_per_dim": evaluate.per_dimension_list(result.kl_per_dim),
            "val_nelbo": val["nelbo"], "val_rec": val["rec"], "val_kl": val["kl"],
            "val_kl_per_dim": val["kl_per_dim"], "val_active_units": val["active_units"],
            "seconds": round(time.perf_counter() - start, 3),
        }
        _append_json(metrics_path, record)
        checkpointer.save(epoch, state, root_key, val_nelbo=val["nelbo"], metadata=configs.to_dict(config))
        done = epoch
        bar.update(epoch * steps_per_epoch - bar.n)
        bar.set_postfix(epoch=epoch, train_nelbo=f"{record['train_nelbo']:.2f}", val_nelbo=f"{val['nelbo']:.2f}")
    bar.close()
    checkpointer.close()
    return record


def _load_checkpoint(workdir: Path, epoch: int | None) -> Restored:
    """The best checkpoint of `workdir` (by validation NELBO), or that of `epoch`."""
    if not (workdir / "checkpoints").is_dir():
        raise CheckpointError(f"work directory {workdir} has no checkpoints; run `train --workdir {workdir}` first")
    checkpointer = Checkpointer(workdir)
    epochs = checkpointer.epochs()
    if not epochs:
        raise CheckpointError(f"work directory {workdir} has no checkpoints; run `train --workdir {workdir}` first")
    chosen = checkpointer.best_epoch() if epoch is None else epoch
    config = configs.from_dict(checkpointer.read_metadata(chosen if chosen in epochs else epochs[-1]))
    restored = checkpointer.restore(template_state(config), jax.random.key(0), epoch=chosen)
    checkpointer.close()
    return restored


def evaluate_checkpoint(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
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
        epoch: the checkpoint; None takes the best by validation NELBO.
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
    restored = _load_checkpoint(workdir, epoch)
    config, state = configs.from_dict(restored.metadata), restored.state
    elbo_batch, iwae_batch = batch_size or config.eval_batch_size, batch_size or 100
    mesh = _mesh(config, batch_size=elbo_batch, **({"iwae_batch_size": iwae_batch} if iwae_samples else {}))
    pixels, params = parallel.replicate(
        (data.load_split(config.dataset, split, data_dir=data_dir, manual_dir=manual_dir), state.params), mesh)
    key = jax.random.key(eval_seed)
    dynamic = data.is_dynamic(config.dataset)
    terms = evaluate.evaluate_elbo(params, pixels, key, **state.models, batch_size=elbo_batch,
                                   dynamic_binarization=dynamic, mesh=mesh)
    bounds = None
    if iwae_samples:
        bounds = evaluate.evaluate_iwae(params, pixels, key, **state.models, num_samples=iwae_samples,
                                        batch_size=iwae_batch, chunk_size=iwae_chunk, dynamic_binarization=dynamic,
                                        mesh=mesh)
    summary = evaluate.summarize(terms, bounds)
    result = {
        **summary, "run": workdir.name, "epoch": restored.epoch, "step": int(state.step),
        **protocol.protocol_card(config.dataset, split, summary["num_examples"], iwae_samples or None, eval_seed,
                                 configs.to_dict(config)),
    }
    _append_json(workdir / EVAL_FILE, result)
    return result


def write_sample_figures(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_images: int = 100,
    seed: int = 0,
    data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
    manual_dir: str | os.PathLike | None = None,
    mnist_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """PNG grids from the best checkpoint: prior samples in `out`, and beside it (`<out stem>_<name>.png`) test
    digits next to their reconstructions, latent interpolations between pairs of test digits (10 steps each),
    and, for a 2-D latent space, the decoded manifold and a scatter of the posterior means of the 10,000 `mnist`
    test digits (binarized with the evaluation's per-example keys) coloured by their labels.

    Args:
        workdir: the run's work directory.
        out: path of the prior-samples PNG.
        num_images: images per grid.
        seed: seed of the prior samples and of the test digits' binarization.
        data_dir, manual_dir: where the run's dataset is prepared, and its original files.
        mnist_dir: the original MNIST files, for the labels of the scatter when `mnist` is not prepared yet.

    Returns:
        The path of each figure: `samples`, `reconstructions`, `interpolations` (and `manifold`, `scatter`).
    """
    restored = _load_checkpoint(Path(workdir), None)
    state, config = restored.state, configs.from_dict(restored.metadata)
    sample_key, binarize_key = jax.random.split(jax.random.key(seed))
    columns = int(np.ceil(np.sqrt(num_images)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"samples": out, **{name: out.with_name(f"{out.stem}_{name}.png")
                                  for name in ("reconstructions", "interpolations", "manifold", "scatter")}}
    samples = evaluate.sample_prior(state.params, sample_key, **state.models, num_images=num_images,
                                    latent_dim=config.model.latent_dim)
    evaluate.save_png(figures["samples"], evaluate.image_grid(np.asarray(samples), columns))

    test = data.load_split(config.dataset, "test", data_dir=data_dir, manual_dir=manual_dir)[:2 * num_images]
    inputs = map_examples(lambda x, _: x, test, np.arange(len(test)), binarize_key, data.is_dynamic(config.dataset))
    networks = {"encoder": state.encoder, "decoder": state.decoder}
    recons = evaluate.reconstruct(state.params, inputs[:num_images], **networks)
    pairs = np.stack([np.asarray(inputs[:num_images]), np.asarray(recons)], axis=1).reshape(-1, inputs.shape[-1])
    evaluate.save_png(figures["reconstructions"], evaluate.image_grid(pairs, 2 * columns))

    rows = min(columns, len(inputs) // 2)
    lines = evaluate.interpolate(state.params, inputs[:rows], inputs[rows:2 * rows], **networks, num_steps=10)
    evaluate.save_png(figures["interpolations"], evaluate.image_grid(np.asarray(lines).reshape(rows * 10, -1), 10))
    if config.model.latent_dim != 2:
        del figures["manifold"], figures["scatter"]
        return figures
    manifold = evaluate.latent_manifold(state.params, decoder=state.decoder, grid_size=20)
    evaluate.save_png(figures["manifold"], evaluate.image_grid(np.asarray(manifold), 20))
    mnist_dir = manual_dir if mnist_dir is None and config.dataset == data.LABELED_DATASET else mnist_dir
    digits = data.load_split(data.LABELED_DATASET, "test", data_dir=data_dir, manual_dir=mnist_dir)
    labels = data.load_labels("test", data_dir=data_dir, manual_dir=mnist_dir)
    terms = evaluate.evaluate_elbo(state.params, digits, binarize_key, **state.models, batch_size=1000,
                                   dynamic_binarization=True)
    evaluate.save_latent_scatter(figures["scatter"], np.asarray(terms.posterior_mean), labels)
    return figures
