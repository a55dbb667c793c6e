"""Orbax checkpoints of a run: train state, run key, epoch, JSON metadata (the config) and validation loss.

Checkpoints live in `<workdir>/checkpoints/<epoch>/`. The latest `keep` epochs and the best one, by the lowest
validation loss (the negative of the bound the run trains: NELBO, or the IWAE bound's NLL estimate), are kept
independently. Saves run in the background (the next epoch does not wait for the disk); Orbax writes
each checkpoint to a temporary folder and renames it when complete, so a run killed mid-save leaves the previous
checkpoints intact. Restoring compares the saved structure (parameter paths, shapes, dtypes) with the model's
first: a checkpoint of another model or of a vae_jax version with other parameter names is refused with the
differences named, and left alone. A checkpoint whose files cannot be read is moved to
`<workdir>/checkpoints/corrupt-<epoch>/` and the next older one is used.

I/O faults (a full disk, a read-only, missing or unwritable folder, a permission) while opening for writing, saving,
closing or setting a checkpoint aside raise `StorageError`: one line naming the folder, the cause and the epoch not
written. A save is written in the background, so its failure surfaces at the latest at the next `save` or at `close`
(`Checkpointer` is a context manager: leaving the `with` block closes it, on every path). Nothing else is lost: the
earlier checkpoints stay as they were and restorable, and the failed save's half-written folder
(`<epoch>.orbax-checkpoint-tmp`) is removed at once where the disk allows it, else when the next writer opens; readers
never list it. The writer (`clean_unfinished=True`, the one process that trains, see `lock.WorkdirLock`) also checks
on opening that it can create files, so that a read-only folder is reported before an epoch is trained. Reading is
unchanged: an unreadable checkpoint is set aside as above, whatever the cause.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vae_jax.errors import CheckpointError, StorageError, first_line, os_cause
from vae_jax.storage import drop_logged_io_faults, io_fault_cause
from vae_jax.train import TrainState

VALIDATION_METRIC = "val_loss"
RECORD = "record"  # the epoch's metrics line, kept with its checkpoint for `metrics.jsonl` to be repaired from
# What older checkpoints store instead (before the IWAE objective was validated on its own bound): the validation
# NELBO, whatever the objective.
OLD_VALIDATION_METRIC = "val_nelbo"
# What Orbax raises for missing or damaged files (JSON and TensorStore errors are ValueErrors).
UNREADABLE = (OSError, ValueError, KeyError, TypeError)
# Orbax's name for a checkpoint being written: `<epoch>.orbax-checkpoint-tmp` (older versions add `-<timestamp>`).
UNFINISHED = ".orbax-checkpoint-tmp"


class AnotherModelError(CheckpointError):
    """A checkpoint holds the parameters of another model; `differences` are `layout_differences`' phrases."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


class Restored(NamedTuple):
    """A restored checkpoint.

    Attributes:
        state: the train state (with the model and optimizer of the template it was restored into).
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


def _validation_loss(metrics: dict[str, float]) -> float:
    return metrics[VALIDATION_METRIC] if VALIDATION_METRIC in metrics else metrics[OLD_VALIDATION_METRIC]


def _remove_unfinished(directory: Path, epoch: int | None = None) -> None:
    """Removes the half-written folder of the save of `epoch` (of every unfinished save if None) in `directory`."""
    for folder in directory.glob(f"{'*' if epoch is None else epoch}{UNFINISHED}*"):
        shutil.rmtree(folder)


def _prepare_for_writing(directory: Path) -> None:
    """Creates `directory`, removes the unfinished saves of a killed or failed writer, and creates and deletes a file
    there (a read-only or unwritable folder then fails now, not at the first background save)."""
    directory.mkdir(parents=True, exist_ok=True)
    _remove_unfinished(directory)
    handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
    os.close(handle)
    os.unlink(probe)


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(n=keep),
        preservation_policy.BestN(get_metric_fn=_validation_loss, reverse=True, n=1),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_validation_loss,
        best_mode="min",
        preservation_policy=policy,
        enable_async_checkpointing=True,
        # The folders of a save are made before `save` returns: made in the background, a failure to make them (a
        # read-only folder) would leave Orbax's other writer threads waiting 20 minutes for them, and the process
        # with them, as it exits.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        # `_prepare_for_writing` removes unfinished saves itself: Orbax's cleanup runs in the background, and where it
        # fails (a read-only folder) it raises again at every save, naming a bare folder name.
        cleanup_tmp_directories=False,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _state_tree(state: TrainState, key: jax.Array) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "key": jax.random.key_data(key)}


def layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """`{"params/encoder/...": (shape, dtype)}` of every array leaf (or array metadata leaf) of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(_key_name, path)): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def _key_name(key: Any) -> str:
    """A path entry's name, the same for a dict key, a sequence index and a named tuple's field (which Orbax stores
    as a dict key)."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def layout_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """What differs between two `layout`s, one phrase per path, the parameters' before the optimizer state's."""
    missing = [(path, f"no {path}") for path in expected if path not in found]
    extra = [(path, f"an extra {path}") for path in found if path not in expected]
    changed = [(path, f"{path} {found[path][0]} {found[path][1]} where the model has {expected[path][0]} "
                      f"{expected[path][1]}") for path in expected if path in found and found[path] != expected[path]]
    # The parameters first: the optimizer's state mirrors them.
    return [text for path, text in sorted(missing + extra + changed, key=lambda item: not item[0].startswith("params"))]


def first_differences(differences: list[str], shown: int = 3) -> str:
    """The first `shown` phrases of `layout_differences`, and how many more there are, as one clause."""
    more = len(differences) - shown
    return "; ".join(differences[:shown]) + (f"; and {more} more" if more > 0 else "")


class Checkpointer:
    """Saves and restores the checkpoints of one work directory.

    A context manager: leaving the `with` block closes it, on every path. Where the block ends in an error and the
    last save failed as well, its `StorageError` is what leaves the block (chained to that error): the missing
    checkpoint is what the user must know.
    """

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, clean_unfinished: bool = False) -> None:
        """Opens `<workdir>/checkpoints`.

        Args:
            workdir: the run's work directory.
            keep: number of latest checkpoints kept by `save` (the best one is kept as well).
            clean_unfinished: open as the writer: delete the temporary folders of saves that never finished, and
                check that the folder is writable. Only the process that trains should ask for it (holding
                `lock.WorkdirLock`): a reader (`eval` beside a running `train`) would delete a save in progress.

        Raises:
            StorageError: the folder cannot be created, or the writer cannot write there.
        """
        self.workdir = Path(workdir)
        self.directory = self.workdir.absolute() / "checkpoints"
        self._pending: int | None = None  # the epoch whose save may still be written in the background
        self._closed = False
        drop_logged_io_faults()
        try:
            if clean_unfinished:
                _prepare_for_writing(self.directory)
            self._manager = _manager(self.directory, keep)
        except OSError as error:
            raise StorageError(f"cannot open {self.directory} for {'writing' if clean_unfinished else 'reading'} "
                               f"({os_cause(error)}); nothing was written there") from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def best_epoch(self) -> int | None:
        """The epoch of the lowest validation loss, or None without checkpoints."""
        return self._manager.best_step()

    def ranked_by_nelbo(self) -> list[int]:
        """Epochs whose checkpoint an older vae_jax ranked by the validation NELBO whatever the objective (not the run's
        own validation loss, which differs for an IWAE run)."""
        return [epoch for epoch in self.epochs() if OLD_VALIDATION_METRIC in (self._manager.metrics(epoch) or {})]

    def record(self, epoch: int) -> dict[str, Any] | None:
        """The metrics record saved with the checkpoint of `epoch` (the run's `metrics.jsonl` line of that epoch), or
        None for a checkpoint saved without one."""
        return (self._manager.metrics(epoch) or {}).get(RECORD)

    def validation_loss(self, epoch: int) -> float:
        """The validation loss saved with the checkpoint of `epoch` (the NELBO in a checkpoint of an older vae_jax)."""
        return _validation_loss(self._manager.metrics(epoch))

    def save(self, epoch: int, state: TrainState, key: jax.Array, val_loss: float,
             metadata: dict[str, Any] | None = None, record: dict[str, Any] | None = None) -> None:
        """Saves the state after `epoch` completed epochs, with its validation loss (what `best_epoch` minimizes),
        JSON-ready metadata and, if given, the epoch's JSON-ready metrics `record` (`record(epoch)` reads it back).

        Returns once the previous save is written and the arrays are copied to the host; the files are written in
        the background (the next `save` or `close` waits for them).

        Raises:
            StorageError: this save, or the previous one, failed on an I/O fault; the message names the epoch not
                written and the epochs whose checkpoints are intact.
        """
        self._finish_pending(unsaved=epoch)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_state_tree(state, key)),
            metadata=ocp.args.JsonSave(metadata or {}),
        )
        try:
            metrics = {VALIDATION_METRIC: float(val_loss), **({RECORD: record} if record is not None else {})}
            self._manager.save(epoch, args=args, metrics=metrics)
        except Exception as error:
            self._raise_if_io_fault(error, epoch)
            raise
        self._pending = epoch

    def _finish_pending(self, unsaved: int | None = None) -> None:
        """Waits for the save in the background; raises `StorageError` if it failed on an I/O fault (naming
        `unsaved` as well, the epoch whose save then does not start)."""
        pending, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            self._raise_if_io_fault(error, pending, unsaved)
            raise

    def _raise_if_io_fault(self, error: Exception, failed: int | None, unsaved: int | None = None) -> None:
        """Raises `StorageError` if `error` is an I/O fault in saving epoch `failed`, after removing the half-written
        folder where it can (else the next writer does); returns for any other error."""
        cause = io_fault_cause(error)
        if cause is None:
            return
        with contextlib.suppress(OSError):
            _remove_unfinished(self.directory, failed)
        what = "a checkpoint" if failed is None else f"the checkpoint of epoch {failed}"
        also = "" if unsaved is None else f", so epoch {unsaved} was not saved either"
        epochs = self.epochs()
        kept = f"the checkpoints of epochs {epochs} are intact" if epochs else "there was no earlier checkpoint"
        raise StorageError(f"cannot write {what} to {self.directory} ({cause}){also}; nothing else was lost: "
                           f"{kept}; free space or make the folder writable, then run again") from None

    def read_metadata(self, epoch: int) -> dict[str, Any]:
        """The metadata stored with the checkpoint of `epoch`."""
        try:
            return self._manager.restore(epoch, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except UNREADABLE as error:
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

    def check_layout(self, epoch: int, template: TrainState) -> None:
        """Raises `AnotherModelError` naming the differences if the checkpoint of `epoch` holds other parameters than
        `template` (another model, or a vae_jax version with other parameter names). An unreadable layout passes:
        `restore` then finds the checkpoint damaged."""
        try:
            saved = self._manager.item_metadata(epoch)["state"]
        except UNREADABLE:
            return
        if saved is None:
            return
        differences = layout_differences(layout(_state_tree(template, jax.random.key(0))), layout(saved.tree))
        if differences:
            raise AnotherModelError(f"checkpoint of epoch {epoch} in {self.workdir} holds another model than this one "
                                    f"({first_differences(differences)}); restore it with the model it was trained "
                                    "with, or use a fresh --workdir", differences)

    def restore(self, template: TrainState, key_template: jax.Array, epoch: int | None = None) -> Restored:
        """Restores `epoch` (default: the latest readable one) into the structure of `template`.

        Args:
            template: a train state of the run's shapes: a freshly created one, or its shapes alone
                (`builders.abstract_state`, which initializes nothing).
            key_template: a typed key of the run's key type, e.g. `jax.random.key(0)`.
            epoch: a given epoch, which must restore; None tries the latest, then older ones.

        Returns:
            `Restored`; unreadable newer checkpoints are moved aside and named in `skipped`. A checkpoint of another
            model raises `CheckpointError` (see `check_layout`) and is left where it is.
        """
        candidates = [epoch] if epoch is not None else sorted(self._manager.all_steps(), reverse=True)
        if not candidates or (epoch is not None and epoch not in self._manager.all_steps()):
            raise CheckpointError(f"no checkpoint{'' if epoch is None else f' for epoch {epoch}'} in {self.workdir}; "
                                  f"train first, or pick one of {self.epochs()}")
        target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), _state_tree(template, key_template))
        skipped = []
        for candidate in candidates:
            self.check_layout(candidate, template)
            try:
                restored = self._manager.restore(
                    candidate,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()),
                )
            except UNREADABLE as error:
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
        """Moves the checkpoint of `epoch` to `corrupt-<epoch>` (or `corrupt-<epoch>-<n>` if that exists)."""
        folder = self.directory / str(epoch)
        try:
            if folder.exists():
                target, number = folder.with_name(f"corrupt-{epoch}"), 1
                while target.exists():
                    number += 1
                    target = folder.with_name(f"corrupt-{epoch}-{number}")
                folder.rename(target)
            self._manager.reload()
        except OSError as error:
            raise StorageError(f"cannot move the unreadable checkpoint of epoch {epoch} aside in {self.directory} "
                               f"({os_cause(error)}); it was left as it was; make the folder writable, or restore "
                               "another epoch") from None

    def close(self) -> None:
        """Waits for the save in the background and releases the manager; closing again does nothing.

        Raises:
            StorageError: the last save failed on an I/O fault (the manager is released all the same).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending()
        finally:
            try:
                self._manager.close()  # after a failed save too: Orbax's own close stops at the failure
            except Exception as error:
                self._raise_if_io_fault(error, None)
                raise
