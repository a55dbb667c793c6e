"""The work directory of a run: its files, the metrics log, the evaluation log, and the metadata stored with its
checkpoints (what a resume compares).

A work directory holds `checkpoints/` (Orbax, `vae_jax.checkpoint`), `metrics.jsonl` (one line per epoch),
`eval.jsonl` (one line per evaluation) and, with TensorBoard on, `tensorboard/` (the metrics as scalars).

The metadata of a run is `configs.to_dict(config)`, whose `model` section is the preset's model config or, for a
model that vae_jax does not define, the model's own description (`contract.describe`, which holds a `class`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax

from vae_jax import configs
from vae_jax.errors import ConfigError, StorageError, os_cause

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
# Fields a resumed run may change: they leave the shapes of the train state alone.
RESUMABLE_FIELDS = ("epochs", "eval_batch_size", "keep_checkpoints", "optim.learning_rate", "optim.schedule",
                    "optim.final_lr_fraction", "optim.grad_clip_norm", "model.logvar_bound", "model.logvar_clip",
                    "model.matmul_precision", "free_bits", "data_parallel", "patience")


def append_json_line(path: Path, record: dict[str, Any]) -> None:
    """Appends `record` as one JSON line in a single write to a file opened for appending, so that two processes
    appending at once (an `eval` beside another) never interleave their lines, and flushes it to the disk. Only the
    first process of a multi-host run writes. A fault is a one-line `StorageError` naming the file."""
    if jax.process_index() != 0:
        return
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, (json.dumps(record) + "\n").encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise StorageError(f"cannot write {path} ({os_cause(error)}); free space or fix the permissions, then re-run "
                           "the same command: the checkpoints written so far are kept") from None


def _epoch_of(line: str) -> float:
    """The epoch of one line of `metrics.jsonl`; infinity for a line that is not whole JSON (cut short)."""
    try:
        return json.loads(line)["epoch"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Per-epoch metrics of a run: one JSON line each in `metrics.jsonl` (on the first process only, in a multi-host
    run), and, if asked, TensorBoard scalars under `tensorboard/` (tensorboardX's `SummaryWriter`). A context
    manager: it closes on every path."""

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

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def repair(self, last_epoch: int, record: dict[str, Any] | None = None) -> None:
        """Makes the file match the checkpoint of `last_epoch`: drops the lines of later epochs (work after that
        checkpoint, which a resume redoes) and lines cut short by a kill mid-write, and puts back the line of
        `last_epoch` from `record` (the one its checkpoint keeps) where it is missing or was cut short. Each epoch
        then has one line, as in an uninterrupted run. The file is replaced whole (a new file renamed over it)."""
        if jax.process_index() != 0 or not (self.path.exists() or record):
            return
        text = self.path.read_text() if self.path.exists() else ""
        lines = [line for line in text.splitlines() if _epoch_of(line) <= last_epoch]
        if record is not None and last_epoch not in map(_epoch_of, lines):
            lines.append(json.dumps(record))
        repaired = "".join(line + "\n" for line in lines)
        if repaired != text:
            partial = self.path.with_suffix(f".{os.getpid()}.partial")
            try:
                partial.write_text(repaired)
                partial.replace(self.path)
            except OSError as error:
                raise StorageError(f"cannot repair {self.path} ({os_cause(error)}); free space or fix the "
                                   "permissions, then re-run the same command") from None

    def write(self, record: dict[str, Any]) -> None:
        """Appends `record`, and writes its numbers to TensorBoard at its `step`."""
        append_json_line(self.path, record)
        if self._writer is not None and "step" in record:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name not in ("epoch", "step"):
                    self._writer.add_scalar(name, value, record["step"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def is_preset_model(metadata: dict[str, Any]) -> bool:
    """Whether a run's metadata describes a preset's model (a `ModelConfig`), not a model object of its own."""
    return "class" not in metadata.get("model", {})


def config_of(metadata: dict[str, Any]) -> configs.Config:
    """The `Config` of a run from its metadata; for a model object, everything but the model section (which then
    holds the defaults, unused)."""
    return configs.from_dict(metadata if is_preset_model(metadata) else {**metadata, "model": {}})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _normalized(metadata: dict[str, Any]) -> dict[str, Any]:
    """Flattened metadata, with this version's defaults for fields that an older run's metadata lacks."""
    normalized = configs.to_dict(config_of(metadata))
    return _flatten(normalized if is_preset_model(metadata) else {**normalized, "model": metadata["model"]})


def _differing(stored: dict[str, Any], given: dict[str, Any], prefix: str = "") -> tuple[list[str], dict, dict]:
    """The fields (starting with `prefix`) but `RESUMABLE_FIELDS` in which two runs' metadata differ, sorted, and
    the two flattened metadata."""
    stored, given = _normalized(stored), _normalized(given)
    differing = sorted(name for name in set(given) | set(stored) if name.startswith(prefix)
                       and name not in RESUMABLE_FIELDS and given.get(name) != stored.get(name))
    return differing, stored, given


def check_resumable(stored: dict[str, Any], given: dict[str, Any], workdir: Path) -> None:
    """Raises `ConfigError` if the run in `workdir` (metadata `stored`) differs from `given` in a field that a resumed
    run may not change (any but `RESUMABLE_FIELDS`, the model's description included)."""
    differing, _, _ = _differing(stored, given)
    if differing:
        raise ConfigError(f"{workdir} holds a run whose {', '.join(differing)} differ from this one; "
                          f"a resumed run may change only {', '.join(RESUMABLE_FIELDS)}; use a fresh --workdir")


def check_same_model(stored: dict[str, Any], given: dict[str, Any], workdir: Path) -> None:
    """Raises `ConfigError` if the model described by `given` (a run's metadata) is not the one the run in `workdir`
    (metadata `stored`) was trained with: reading a run back needs the model it was trained with."""
    differing, stored_model, given_model = _differing(stored, given, "model.")
    if differing:
        shown = ", ".join(f"{name}={given_model.get(name)!r} (stored: {stored_model.get(name)!r})"
                          for name in differing[:3])
        raise ConfigError(f"{workdir} holds a run of another model than the one given ({shown}); pass the model it "
                          "was trained with")
