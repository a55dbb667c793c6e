"""The checkpoint of an epoch stopped part-way by a graceful stop (`vae_jax.interrupt`): the train state after the
epoch's last finished step, and the per-step results so far, so that a resume finishes the epoch bit for bit as an
uninterrupted run would, its `metrics.jsonl` line included (apart from the timing).

It lives in `<workdir>/interrupted/` (an Orbax checkpoint of its own, at most one), apart from the epochs'
checkpoints that `eval`, `gaps` and `sample` read. The per-step results go into its JSON metadata: float32 numbers
survive JSON exactly (as float64). The epoch's own checkpoint makes it stale; a run that finds it stale removes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from vae_jax.checkpoint import Checkpointer
from vae_jax.objective import ElboTerms
from vae_jax.train import EpochResult, TrainState
from vae_jax.workdir import check_resumable

PARTIAL_DIR = "interrupted"
SCALARS = ("nelbo", "rec", "kl")  # the terms with one number per step; the others have one per latent dimension


class Partial(NamedTuple):
    """An epoch stopped part-way.

    Attributes:
        epoch: the 1-based epoch.
        step: how many of its steps are done.
        state: the train state after them.
        key: the run's key.
        result: their `EpochResult` (`failed_step` -1), the per-step results that the epoch's metrics need.
    """

    epoch: int
    step: int
    state: TrainState
    key: jax.Array
    result: EpochResult


def _folder(workdir: Path) -> Path:
    return Path(workdir) / PARTIAL_DIR


def save_partial(workdir: Path, partial: Partial, metadata: dict[str, Any]) -> None:
    """Replaces the checkpoint of the epoch stopped part-way with `partial` (the run's `metadata` beside it), and
    waits until it is written."""
    clear_partial(workdir)
    per_step = {"loss": partial.result.loss, **partial.result.terms._asdict()}
    record = {"epoch": partial.epoch, "step": partial.step, "run": metadata,
              "result": {field: np.asarray(value).tolist() for field, value in per_step.items()}}
    with Checkpointer(_folder(workdir), keep=1, clean_unfinished=True) as checkpointer:
        checkpointer.save(int(partial.state.step), partial.state, partial.key, val_loss=0.0, metadata=record)


def load_partial(workdir: Path, template: TrainState, after_epoch: int, metadata: dict[str, Any]) -> Partial | None:
    """The epoch stopped part-way that follows the checkpoint of `after_epoch`, restored into `template`; None if
    there is none. One that does not follow it (stale: a later epoch was finished) is removed; one of a run that
    differs from `metadata` (the resuming run's) in more than `workdir.RESUMABLE_FIELDS` is refused, as a resume
    from an epoch's checkpoint is."""
    folder = _folder(workdir)
    if not (folder / "checkpoints").is_dir():
        return None
    with Checkpointer(folder) as checkpointer:
        stored = checkpointer.latest_metadata()
        follows = stored is not None and stored["epoch"] == after_epoch + 1
        if follows:
            check_resumable(stored["run"], metadata, Path(workdir))
            restored = checkpointer.restore(template, jax.random.key(0))
    if not follows:
        clear_partial(workdir)
        return None
    stored, steps = restored.metadata["result"], restored.metadata["step"]
    per_step = {field: np.asarray(stored[field], np.float32).reshape(steps, *(() if field in SCALARS else (-1,)))
                for field in ElboTerms._fields}
    result = EpochResult(np.asarray(stored["loss"], np.float32), ElboTerms(**per_step), np.int32(-1))
    return Partial(restored.metadata["epoch"], restored.metadata["step"], restored.state, restored.key, result)


def clear_partial(workdir: Path) -> None:
    """Removes the checkpoint of an epoch stopped part-way, if there is one."""
    shutil.rmtree(_folder(workdir), ignore_errors=True)


def concatenate(first: EpochResult | None, second: EpochResult) -> EpochResult:
    """The results of two consecutive pieces of an epoch as one (`failed_step` the second's); `second` alone if
    `first` is None."""
    if first is None:
        return second
    joined = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]),
                          (first.loss, first.terms), (second.loss, second.terms))
    return EpochResult(*joined, second.failed_step)
