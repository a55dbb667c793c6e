"""Orbax checkpoints of a run: train state, run key, epoch, JSON metadata (the config) and validation NELBO.

Checkpoints live in `<workdir>/checkpoints/<epoch>/`. The latest `keep` epochs and the best one by validation
NELBO are kept independently. Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed mid-save leaves the previous checkpoints intact. A checkpoint that fails to restore is moved
to `<workdir>/checkpoints/corrupt-<epoch>/` and the next older one is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vae_jax.errors import CheckpointError, first_line
from vae_jax.train import TrainState

VALIDATION_METRIC = "val_nelbo"


class Restored(NamedTuple):
    """A restored checkpoint.

    Attributes:
        state: the train state (with the modules and optimizer of the template it was restored into).
        key: the run's typed key.
        epoch: number of completed epochs.
        metadata: the JSON metadata saved with it (`vae_jax` runs store their config there).
        skipped: `(epoch, reason)` of newer checkpoints that could not be read and were set aside.
    """

    state: TrainState
    key: jax.Array
    epoch: int
    metadata: dict[str, Any]
    skipped: list[tuple[int, str]]


def _manager(workdir: str | os.PathLike, keep: int, clean_unfinished: bool) -> ocp.CheckpointManager:
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep),
        preservation_policy.BestN(get_metric_fn=lambda m: m[VALIDATION_METRIC], reverse=True, n=1),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=lambda m: m[VALIDATION_METRIC],
        best_mode="min",
        preservation_policy=policy,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=clean_unfinished,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def _state_tree(state: TrainState, key: jax.Array) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "key": jax.random.key_data(key)}


class Checkpointer:
    """Saves and restores the checkpoints of one work directory."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, clean_unfinished: bool = False):
        """Opens `<workdir>/checkpoints`.

        Args:
            workdir: the run's work directory.
            keep: number of latest checkpoints kept by `save` (the best one is kept as well).
            clean_unfinished: delete the temporary folders of saves that never finished. Only the process that
                trains should ask for it: a reader (`eval` beside a running `train`) would delete a save in progress.
        """
        self.workdir = Path(workdir)
        self._manager = _manager(self.workdir, keep, clean_unfinished)

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def best_epoch(self) -> int | None:
        """The epoch of the lowest validation NELBO, or None without checkpoints."""
        return self._manager.best_step()

    def save(self, epoch: int, state: TrainState, key: jax.Array, val_nelbo: float,
             metadata: dict[str, Any] | None = None) -> None:
        """Saves the state after `epoch` completed epochs, with its validation NELBO and JSON-ready metadata."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_state_tree(state, key)),
            metadata=ocp.args.JsonSave(metadata or {}),
        )
        self._manager.save(epoch, args=args, metrics={VALIDATION_METRIC: float(val_nelbo)})
        self._manager.wait_until_finished()

    def read_metadata(self, epoch: int) -> dict[str, Any]:
        """The metadata stored with the checkpoint of `epoch`."""
        try:
            return self._manager.restore(epoch, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except Exception as error:  # orbax raises many kinds for missing or damaged files
            raise CheckpointError(f"checkpoint of epoch {epoch} in {self.workdir} is unreadable ({first_line(error)}); "
                                  f"pick another epoch from {self.epochs()}") from None

    def latest_metadata(self) -> dict[str, Any] | None:
        """The metadata of the newest checkpoint whose metadata can be read, or None."""
        for epoch in reversed(self.epochs()):
            try:
                return self.read_metadata(epoch)
            except CheckpointError:
                continue
        return None

    def restore(self, template: TrainState, key_template: jax.Array, epoch: int | None = None) -> Restored:
        """Restores `epoch` (default: the latest readable one) into the structure of `template`.

        Args:
            template: a train state of the run's shapes, e.g. a freshly created one.
            key_template: a typed key of the run's key type, e.g. `jax.random.key(0)`.
            epoch: a given epoch, which must restore; None tries the latest, then older ones.

        Returns:
            `Restored`; unreadable newer checkpoints are moved aside and named in `skipped`.
        """
        candidates = [epoch] if epoch is not None else sorted(self._manager.all_steps(), reverse=True)
        if not candidates or (epoch is not None and epoch not in self._manager.all_steps()):
            raise CheckpointError(f"no checkpoint{'' if epoch is None else f' for epoch {epoch}'} in {self.workdir}; "
                                  f"train first, or pick one of {self.epochs()}")
        target = jax.tree.map(np.asarray, _state_tree(template, key_template))
        skipped = []
        for candidate in candidates:
            try:
                restored = self._manager.restore(
                    candidate,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()),
                )
            except Exception as error:  # orbax raises many kinds for missing or damaged files
                reason = first_line(error)
                if epoch is not None:
                    raise CheckpointError(f"checkpoint of epoch {epoch} in {self.workdir} is unreadable ({reason}); "
                                          f"pick another epoch from {self.epochs()}") from None
                skipped.append((candidate, reason))
                self._set_aside(candidate)
                continue
            tree = restored["state"]
            state = template.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
            key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(key_template))
            return Restored(state, key, candidate, restored["metadata"], skipped)
        raise CheckpointError(f"every checkpoint in {self.workdir} is unreadable (newest: {skipped[0][1]}); "
                              "start a new run in a fresh work directory")

    def _set_aside(self, epoch: int) -> None:
        folder = self.workdir / "checkpoints" / str(epoch)
        if folder.exists():
            folder.rename(folder.with_name(f"corrupt-{epoch}"))
        self._manager.reload()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()
