"""Reading a finished run back: its evaluation with a protocol card (`eval`), its inference gaps (`gaps`) and its
figures (`sample`). Each opens the run once (`resolve.open_run`: the checkpoint, the model, checked at the door, and
the split) and appends its result lines to `eval.jsonl` in single writes, so they may run beside a `train`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from vae_jax import buckets, compilation_cache, configs, contract, data, evaluate, inference, parallel, protocol, stream
from vae_jax.checkpoint import Restored
from vae_jax.errors import ConfigError
from vae_jax.likelihoods import bits_per_dim
from vae_jax.objective import map_examples
from vae_jax.resolve import Run, check_model, open_run
from vae_jax.sequences import PaddedSplit, Sequence
from vae_jax.trainer import mesh_for
from vae_jax.workdir import EVAL_FILE, append_json_line

BOUNDS = ("iwae", "fivo")  # the NLL estimates of `evaluate_checkpoint`

GAPS_DEFAULTS = configs.GapsConfig()


class Opened(NamedTuple):
    """A run opened to read back: the run, its restored checkpoint and the examples of one split.

    Attributes:
        run: the resolved run.
        restored: the checkpoint (`restored.state.eval_params` are the parameters to read).
        pixels: `[N, D]` uint8 examples of the split (a memory map of its cached file); for a dataset of sequences,
            `Sequence(frames [N, T_max, D], length [N])`.
        key: the evaluation's key, `jax.random.key(eval_seed)`.
        data_hash: the content hash of the whole split (`data.split_hash`), for the protocol card.
    """

    run: Run
    restored: Restored
    pixels: np.ndarray
    key: jax.Array
    data_hash: str

    def provenance(self) -> dict[str, Any]:
        """`run` (the work directory's name), `epoch` and `step` of the checkpoint."""
        return {"run": self.run.workdir.name, "epoch": self.restored.epoch, "step": int(self.restored.state.step)}


def open_split(workdir: str | os.PathLike, split: str, *, model: Any = None, epoch: int | None = None,
               eval_seed: int = 0, num_examples: int | None = None, data_dir: str | os.PathLike = data.DEFAULT_DATA_DIR,
               manual_dir: str | os.PathLike | None = None) -> Opened:
    """The opening that `evaluate_checkpoint`, `evaluate_gaps` and `write_sample_figures` share: the run and its best
    (or `epoch`'s) checkpoint, the first `num_examples` (all if None) examples of `split`, and the model checked on
    them at the checkpoint's parameters (`resolve.check_model`), and the split's content hash."""
    compilation_cache.enable()
    run, restored = open_run(workdir, model, epoch, data_dir=data_dir, manual_dir=manual_dir)
    if run.dataset.sequential:
        padded = data.load_sequences(run.config.dataset, split, manual_dir=manual_dir)
        pixels = Sequence(padded.frames[:num_examples], padded.lengths[:num_examples])
    else:
        pixels = data.load_split(run.config.dataset, split, data_dir=data_dir, manual_dir=manual_dir,
                                 mmap=True)[:num_examples]
    data_hash = data.split_hash(run.config.dataset, split, data_dir=data_dir, manual_dir=manual_dir)
    key = jax.random.key(eval_seed)
    check_model(run, restored.state.eval_params, pixels, key)
    return Opened(run, restored, pixels, key, data_hash)


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
    device_memory_budget: int | str = stream.DEFAULT_DEVICE_MEMORY_BUDGET,
    log: Callable[[str], None] = print,
    bound: str = "iwae",
) -> dict[str, Any]:
    """Negative ELBO (and, with `iwae_samples` K > 0, an NLL estimate) of the best or a given checkpoint on a whole
    split, with its protocol card; appends the result to `eval.jsonl`.

    Args:
        workdir: the run's work directory.
        split: `train`, `validation` or `test`.
        model: the model object of a run that trained one (see `trainer.fit`), which must be the one it was trained
            with; None for a preset run.
        epoch: the checkpoint; None takes the best by validation loss.
        batch_size: examples evaluated at once (memory only; default `eval_batch_size`, or 100 with K > 0).
        iwae_samples: K importance samples (or particles) per example; 0 skips the NLL estimate.
        iwae_chunk, bound: importance samples at once (memory only); the NLL estimate, `iwae` or `fivo` (sequences).
        eval_seed: seed of the evaluation's noise and dynamic binarization.
        data_dir, manual_dir: where TFDS keeps prepared datasets, and the original files.
        device_memory_budget, log: a split larger than this budget (bytes, or a size such as `2G`) streams from the
            host in chunks (`vae_jax.stream`), which changes no number; one line to `log` says so.

    Returns:
        A JSON-ready dict, the line appended to `eval.jsonl`: `nelbo`, `nelbo_stderr`, `rec`, `kl`, `kl_per_dim`,
        `active_units` (None without a posterior mean), `num_examples`, (`nll`, `nll_stderr`,) on 8-bit data
        `nelbo_bpd` (`nll_bpd`) in bits per dimension, for sequences the figures per time step of
        `evaluate.per_frame`, `run`, `epoch`, `step` and the protocol card of `protocol.protocol_card`.
    """
    if iwae_samples < 0 or iwae_chunk <= 0 or (batch_size is not None and batch_size <= 0):
        raise ConfigError("--iwae-samples must be >= 0, and --iwae-chunk and --batch-size positive")
    budget = stream.parse_budget(device_memory_budget)  # a bad one fails before anything is read
    opened = open_split(workdir, split, model=model, epoch=epoch, eval_seed=eval_seed, data_dir=data_dir,
                        manual_dir=manual_dir)
    run, state = opened.run, opened.restored.state
    elbo_batch, iwae_batch = batch_size or run.config.eval_batch_size, batch_size or 100
    mesh = mesh_for(run.config, batch_size=elbo_batch, **({"iwae_batch_size": iwae_batch} if iwae_samples else {}))
    params, options = parallel.replicate(state.eval_params, mesh), {"dynamic_binarization": run.dataset.dynamic}
    over = _over_split(opened.pixels, budget, mesh, f"{run.config.dataset}/{split}", log)
    elbo = functools.partial(evaluate.evaluate_elbo, run.model, batch_size=elbo_batch, mesh=mesh, **options)
    iwae = _nll_bound(run.model, bound, iwae_samples, iwae_batch, iwae_chunk, mesh, options)
    terms = over(elbo, elbo_batch)(params, opened.key)
    bounds = over(iwae, iwae_batch)(params, opened.key) if iwae_samples else None
    summary = evaluate.summarize(terms, bounds)
    per_frame = evaluate.per_frame(terms, bounds, opened.pixels.length) if run.dataset.sequential else {}
    result = {**summary, **per_frame, **in_bits_per_dim(summary, run.dataset), **opened.provenance(),
              **protocol.protocol_card(run.dataset, split, summary["num_examples"], iwae_samples or None,
                                       eval_seed, run.metadata, data_hash=opened.data_hash, bound=bound)}
    append_json_line(run.workdir / EVAL_FILE, result)
    return result


def _nll_bound(model: Any, bound: str, num_samples: int, batch_size: int, chunk_size: int, mesh: Any,
               options: dict[str, Any]) -> Callable[..., jax.Array]:
    """`(params, key) -> [N]` the chosen bound over a split (`evaluate.evaluate_iwae` or `evaluate.evaluate_fivo`);
    a `ConfigError` for an unknown bound, or FIVO with a model that has no `fivo_bound`."""
    if bound not in BOUNDS:
        raise ConfigError(f"unknown bound {bound!r}: choose one of {list(BOUNDS)}")
    if bound == "iwae":
        return functools.partial(evaluate.evaluate_iwae, model, num_samples=num_samples, batch_size=batch_size,
                                 chunk_size=chunk_size, mesh=mesh, **options)
    if not hasattr(contract.as_model(model), "fivo_bound"):
        raise ConfigError(f"--bound fivo needs a sequence model with a fivo_bound method (VRNN, SRNN, DMM); "
                          f"{type(getattr(model, 'module', model)).__name__} has none: use --bound iwae")
    return functools.partial(evaluate.evaluate_fivo, model, num_particles=num_samples, batch_size=batch_size,
                             mesh=mesh)


def _over_split(pixels: Any, budget: int, mesh: Any, name: str, log: Callable[[str], None]) -> Callable[..., Any]:
    """`over(fn, batch_size)`: an evaluation `fn(params, examples, key, ...)` as a function `(params, key)` of the
    whole split: images placed or streamed (`stream.over_split`), sequences in length buckets (`buckets.over_parts`)."""
    if isinstance(pixels, Sequence):
        parts = buckets.on_device(buckets.sequence_parts(PaddedSplit(pixels.frames, pixels.length)), mesh)
        return lambda fn, batch_size: buckets.over_parts(fn, parts)
    placed = stream.place(pixels, budget, mesh, name, log)
    return lambda fn, batch_size: stream.over_split(fn, placed, batch_size)


def evaluate_gaps(
    workdir: str | os.PathLike,
    split: str = "test",
    *,
    model: Any = None,
    num_examples: int | None = None,
    gaps: configs.GapsConfig = GAPS_DEFAULTS,
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
        gaps: the measurement's settings (`configs.GapsConfig`: steps, samples, learning rate, K, batch size).
        eval_seed: seed of the evaluation's randomness.
        data_dir, manual_dir: where TFDS keeps prepared datasets, and the original files.

    Returns:
        The summary (means and standard errors of the three numbers, the two gaps and their sum, wall times per
        example, the protocol card) and the per-example `inference.Gaps`.
    """
    for name, value in (*dataclasses.asdict(gaps).items(), ("num_examples", num_examples or 1)):
        if value <= 0:
            raise ConfigError(f"gaps {name} must be positive, got {value}")
    opened = open_split(workdir, split, model=model, eval_seed=eval_seed, num_examples=num_examples,
                        data_dir=data_dir, manual_dir=manual_dir)
    run, params = opened.run, opened.restored.state.eval_params
    for method in ("posterior", "joint_samples_given_posterior"):
        if not callable(getattr(run.model, method, None)):
            raise ConfigError(f"per-example inference needs the model's {method}() (vae_jax.contract); "
                              f"{contract.describe(run.model)['class']} has none")
    measured = inference.amortization_gaps(
        run.model, params, jax.device_put(opened.pixels), opened.key, steps=gaps.steps, num_samples=gaps.num_samples,
        learning_rate=gaps.learning_rate, eval_samples=gaps.eval_samples, iwae_samples=gaps.iwae_samples,
        batch_size=gaps.batch_size, dynamic_binarization=run.dataset.dynamic)
    refined = (f"per-example: Adam (learning rate {gaps.learning_rate}) on each example's Gaussian, {gaps.steps} "
               f"steps of {gaps.num_samples} samples, from the encoder's output")
    card = functools.partial(protocol.protocol_card, run.dataset, split, len(opened.pixels),
                             eval_seed=eval_seed, config=run.metadata, elbo_samples=gaps.eval_samples,
                             data_hash=opened.data_hash)
    columns = gap_columns(measured)
    amortized, per_example = _means(nelbo=-measured.elbo_amortized, nll=-measured.log_px), _means(
        nelbo=-measured.elbo_refined)
    for line in ({**amortized, **in_bits_per_dim(amortized, run.dataset), **card(gaps.iwae_samples)},
                 {**per_example, **in_bits_per_dim(per_example, run.dataset), **card(None, inference=refined)}):
        append_json_line(run.workdir / EVAL_FILE, {**line, **opened.provenance()})
    summary = {
        **_means(**columns, inference_gap=measured.log_px - measured.elbo_amortized),
        "encoder_seconds_per_example": measured.encoder_seconds, "refine_seconds_per_example": measured.refine_seconds,
        **opened.provenance(), **card(gaps.iwae_samples, inference=refined),
    }
    return summary, measured


def in_bits_per_dim(result: dict[str, Any], dataset: data.Dataset) -> dict[str, float]:
    """On 8-bit data, `nelbo_bpd` (and `nll_bpd`, where `result` has an `nll`): its `nelbo` and `nll` in bits per
    dimension (`likelihoods.bits_per_dim`, in float64 for these float summaries); else nothing."""
    if not dataset.eight_bit:
        return {}
    return {f"{name}_bpd": bits_per_dim(result[name], dataset.num_pixels)
            for name in ("nelbo", "nll") if result.get(name) is not None}


def gap_columns(gaps: inference.Gaps) -> dict[str, np.ndarray]:
    """Per example: log p(x), L[q*], L[q], the approximation gap log p(x) - L[q*] and the amortization gap
    L[q*] - L[q], `[N]` each."""
    return {"log_px": gaps.log_px, "elbo_refined": gaps.elbo_refined, "elbo_amortized": gaps.elbo_amortized,
            "approximation_gap": gaps.log_px - gaps.elbo_refined,
            "amortization_gap": gaps.elbo_refined - gaps.elbo_amortized}


def write_gaps_csv(path: str | os.PathLike, gaps: inference.Gaps) -> None:
    """One row per example: its index in the split and the `gap_columns`."""
    columns = gap_columns(gaps)
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
        mnist_dir: the original MNIST files, for the digits of the scatter of a dataset without labels (as
            `binarized_mnist`) when `mnist` is not prepared yet.

    Returns:
        The path of each figure: `samples`, `reconstructions`, `interpolations` (and `manifold`, `scatter`).
    """
    from vae_jax import figures

    if num_images <= 0:
        raise ConfigError(f"--num-images must be positive, got {num_images}")
    opened = open_split(workdir, "test", model=model, epoch=epoch, eval_seed=seed, num_examples=2 * num_images,
                        data_dir=data_dir, manual_dir=manual_dir)
    run, params = opened.run, opened.restored.state.eval_params
    sample_key, binarize_key = jax.random.split(opened.key)

    def binarized(pixels: np.ndarray, dynamic: bool) -> jax.Array:
        return map_examples(lambda x, _: x, pixels, np.arange(len(pixels)), binarize_key, dynamic)

    test_inputs = binarized(opened.pixels, run.dataset.dynamic)
    labelled = None
    if figures.code_size(run.model, params, test_inputs) == 2:
        labelled = _labelled_test_images(run.dataset, data_dir, manual_dir, mnist_dir)
        if labelled is not None:  # in the run's own form: grey levels for an 8-bit model, else binarized by a draw
            labelled = (binarized(labelled[0], not run.dataset.eight_bit), labelled[1])
    return figures.sample_figures(run.model, params, out, test_inputs, sample_key, num_images, labelled,
                                  run.dataset.image_shape[:2], run.dataset.scale)


def _labelled_test_images(dataset: data.Dataset, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None,
                          mnist_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The test images `[N, D]` and labels `[N]` that a 2-D code's scatter shows: the dataset's own if it is
    labelled, else MNIST's digits (from `mnist_dir`) where its images have their shape; else None."""
    if dataset.labelled:
        name, folder = dataset.name, manual_dir
    elif dataset.image_shape == data.describe(data.LABELED_DATASET).image_shape:
        name, folder = data.LABELED_DATASET, mnist_dir
    else:
        return None
    return (data.load_split(name, "test", data_dir=data_dir, manual_dir=folder),
            data.load_labels("test", name, data_dir=data_dir, manual_dir=folder))
