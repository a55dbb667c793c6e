"""Orbax checkpoints: exact round trip, independent retention of latest and best, damaged checkpoints."""

import errno
import json
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import preset_state
from vae_jax import checkpoint, configs, train
from vae_jax.checkpoint import Checkpointer
from vae_jax.errors import CheckpointError, StorageError

CONFIG = configs.apply_overrides(configs.get_config("cs236"),
                                 ["model.encoder_hidden=8", "model.decoder_hidden=8", "model.latent_dim=2"])


def _trained_state(binary_pixels):
    state = preset_state(CONFIG)
    state, _ = train.train_epoch_jit(state, jnp.asarray(binary_pixels), jax.random.key(0), batch_size=16)
    return state


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_keeps_the_typed_key(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    key = jax.random.key(42)
    checkpointer = Checkpointer(tmp_path, keep=2)
    checkpointer.save(1, state, key, val_loss=100.0, metadata=configs.to_dict(CONFIG))
    restored = checkpointer.restore(preset_state(CONFIG), jax.random.key(0))
    assert restored.epoch == 1 and configs.from_dict(restored.metadata) == CONFIG and restored.skipped == []
    assert int(restored.state.step) == int(state.step) == 4
    _assert_trees_equal(restored.state.params, state.params)
    _assert_trees_equal(restored.state.opt_state, state.opt_state)
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(key))
    np.testing.assert_array_equal(jax.random.normal(restored.key, (3,)), jax.random.normal(key, (3,)))


def test_latest_and_best_are_kept_independently(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    checkpointer = Checkpointer(tmp_path, keep=2)
    # The validation loss is best at epoch 2, then only gets worse.
    for epoch, val in enumerate([5.0, 1.0, 3.0, 4.0, 6.0, 7.0], start=1):
        checkpointer.save(epoch, state, jax.random.key(0), val_loss=val, metadata=configs.to_dict(CONFIG))
    # The best survives four newer checkpoints; the latest survives although it is the worst.
    assert checkpointer.epochs() == [2, 5, 6]
    assert checkpointer.best_epoch() == 2
    assert checkpointer.validation_loss(5) == 6.0
    checkpointer.close()  # waits for the last save, which would otherwise meet the interpreter's shutdown


def test_checkpoints_of_older_versions_are_ranked_by_their_validation_nelbo(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    checkpointer = Checkpointer(tmp_path)
    for epoch, val in [(1, 2.0), (2, 1.0)]:
        checkpointer.save(epoch, state, jax.random.key(0), val_loss=val, metadata=configs.to_dict(CONFIG))
    checkpointer.close()
    # Older vae_jax stored the validation NELBO under another name: {"val_nelbo": ...} (Orbax's JSON metrics file).
    for epoch, val in [(1, 0.5), (2, 3.0)]:
        (tmp_path / "checkpoints" / str(epoch) / "metrics" / "metrics").write_text(json.dumps({"val_nelbo": val}))
    older = Checkpointer(tmp_path)
    assert older.best_epoch() == 1
    assert older.validation_loss(2) == 3.0


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    checkpointer = Checkpointer(tmp_path, keep=3)
    for epoch in (1, 2, 3):
        checkpointer.save(epoch, state, jax.random.key(epoch), val_loss=10.0 - epoch, metadata=configs.to_dict(CONFIG))
    checkpointer.close()
    for file in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    restored = Checkpointer(tmp_path, keep=3).restore(preset_state(CONFIG), jax.random.key(0))
    assert restored.epoch == 2
    assert [epoch for epoch, _ in restored.skipped] == [3]
    assert (tmp_path / "checkpoints" / "corrupt-3").is_dir()
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(jax.random.key(2)))
    with pytest.raises(CheckpointError, match="no checkpoint for epoch 3"):
        Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0), epoch=3)


def test_unfinished_save_is_ignored(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, state, jax.random.key(0), val_loss=1.0, metadata=configs.to_dict(CONFIG))
    checkpointer.close()
    # What a run killed in the middle of saving epoch 2 leaves behind: Orbax's temporary folder.
    unfinished = Path(tmp_path) / "checkpoints" / "2.orbax-checkpoint-tmp-1234"
    (unfinished / "state").mkdir(parents=True)
    reader = Checkpointer(tmp_path)
    assert reader.epochs() == [1]
    assert reader.restore(preset_state(CONFIG), jax.random.key(0)).epoch == 1
    # A reader leaves the unfinished save alone (it may be in progress); the training process removes it on opening.
    assert unfinished.is_dir()
    with Checkpointer(tmp_path, clean_unfinished=True) as writer:
        assert not unfinished.exists()
        writer.save(2, state, jax.random.key(0), val_loss=0.5, metadata=configs.to_dict(CONFIG))
    assert Checkpointer(tmp_path).epochs() == [1, 2]


def test_empty_workdir_has_nothing_to_restore(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0))


def test_damaged_metadata_is_skipped_or_reported_in_one_line(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        for epoch in (1, 2):
            checkpointer.save(epoch, state, jax.random.key(0), val_loss=1.0, metadata={"epoch": epoch})
    checkpointer = Checkpointer(tmp_path, keep=3)
    for file in (tmp_path / "checkpoints" / "2" / "metadata").rglob("*"):
        if file.is_file():
            file.write_bytes(b"{broken")
    assert checkpointer.latest_metadata() == {"epoch": 1}
    with pytest.raises(CheckpointError, match="checkpoint of epoch 2 in .* is unreadable"):
        checkpointer.read_metadata(2)


def test_a_checkpoint_of_another_model_is_named_and_left_alone(tmp_path, binary_pixels):
    """Restoring a run into another model (a wider encoder, here) names what differs and renames nothing."""
    checkpointer = Checkpointer(tmp_path, keep=3)
    for epoch in (1, 2):
        checkpointer.save(epoch, _trained_state(binary_pixels), jax.random.key(0), val_loss=1.0,
                          metadata=configs.to_dict(CONFIG))
    checkpointer.close()
    wider = configs.apply_overrides(CONFIG, ["model.encoder_hidden=9"])
    with pytest.raises(CheckpointError, match=r"epoch 2 .* holds another model than this one \(params/encoder/params/"
                                              r"Dense_0/kernel \(8, 4\) float32 where the model has \(9, 4\) "
                                              r"float32; .*; and 6 more\); restore it with the model it was trained"):
        Checkpointer(tmp_path).restore(preset_state(wider), jax.random.key(0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    # The right model still restores the newest checkpoint.
    assert Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0)).epoch == 2


def test_setting_aside_twice_keeps_both_damaged_copies(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    for attempt in range(2):
        checkpointer = Checkpointer(tmp_path, keep=3, clean_unfinished=True)
        for epoch in (1, 2):
            checkpointer.save(epoch, state, jax.random.key(0), val_loss=1.0, metadata=configs.to_dict(CONFIG))
        checkpointer.close()
        for file in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
            if file.is_file():
                file.write_bytes(b"garbage")
        assert Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0)).epoch == 1
        if attempt == 0:
            import shutil

            shutil.rmtree(tmp_path / "checkpoints" / "1")
    assert (tmp_path / "checkpoints" / "corrupt-2").is_dir() and (tmp_path / "checkpoints" / "corrupt-2-2").is_dir()


# I/O faults: a real full or read-only disk (the `tmpfs` fixture, 9 MB), or an injected error where mounting is not
# permitted.
BIG = configs.apply_overrides(CONFIG, ["model.encoder_hidden=600"])


def _incompressible_state(seed):
    """A train state of `BIG` whose parameters and Adam moments are random (Orbax compresses zeros to nothing): about
    5.6 MB a checkpoint, so that the 9 MB tmpfs holds one and not two."""
    state = preset_state(BIG)
    leaves, treedef = jax.tree.flatten((state.params, state.opt_state))
    rng = np.random.default_rng(seed)
    leaves = [rng.standard_normal(leaf.shape).astype(leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating)
              else leaf for leaf in leaves]
    params, opt_state = jax.tree.unflatten(treedef, leaves)
    return state.replace(params=params, opt_state=opt_state)


def _assert_restores(checkpointer, epoch, state):
    restored = checkpointer.restore(preset_state(BIG), jax.random.key(0))
    assert restored.epoch == epoch and restored.metadata == {"epoch": epoch}
    _assert_trees_equal(restored.state.params, state.params)
    _assert_trees_equal(restored.state.opt_state, state.opt_state)


def _unfinished(directory):
    return sorted(path.name for path in (directory / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def test_a_full_disk_fails_the_next_save_in_one_line_and_loses_nothing(tmpfs):
    first, second = _incompressible_state(1), _incompressible_state(2)
    folder = tmpfs.path / "checkpoints"
    with Checkpointer(tmpfs.path, keep=3, clean_unfinished=True) as checkpointer:
        checkpointer.save(1, first, jax.random.key(0), val_loss=2.0, metadata={"epoch": 1})
        checkpointer.save(2, second, jax.random.key(0), val_loss=1.0, metadata={"epoch": 2})  # fails in the background
        with pytest.raises(StorageError) as raised:
            checkpointer.save(3, second, jax.random.key(0), val_loss=0.5, metadata={"epoch": 3})
        assert str(raised.value) == (
            f"cannot write the checkpoint of epoch 2 to {folder} (No space left on device), so epoch 3 was not saved "
            "either; nothing else was lost: the checkpoints of epochs [1] are intact; free space or make the folder "
            "writable, then run again")
        # The half-written folder is gone at once (it would hold the space), the last good checkpoint restores.
        assert _unfinished(tmpfs.path) == [] and checkpointer.epochs() == [1]
        _assert_restores(checkpointer, 1, first)
        tmpfs.remount("size=64m")
        checkpointer.save(2, second, jax.random.key(0), val_loss=1.0, metadata={"epoch": 2})
    reader = Checkpointer(tmpfs.path)
    assert reader.epochs() == [1, 2] and _unfinished(tmpfs.path) == []
    _assert_restores(reader, 2, second)


def test_a_failed_last_save_surfaces_when_the_checkpointer_closes(tmpfs):
    first = _incompressible_state(1)
    with pytest.raises(StorageError, match=r"^cannot write the checkpoint of epoch 2 to .*checkpoints \(No space left "
                                           r"on device\); nothing else was lost: the checkpoints of epochs \[1\]"):
        with Checkpointer(tmpfs.path, clean_unfinished=True) as checkpointer:
            checkpointer.save(1, first, jax.random.key(0), val_loss=2.0, metadata={"epoch": 1})
            checkpointer.save(2, _incompressible_state(2), jax.random.key(0), val_loss=1.0, metadata={"epoch": 2})
    checkpointer.close()  # closed already: does nothing
    tmpfs.remount("size=64m")
    # A fresh writer on the enlarged disk: nothing unfinished, the first checkpoint intact, saving works.
    with Checkpointer(tmpfs.path, clean_unfinished=True) as writer:
        assert _unfinished(tmpfs.path) == [] and writer.epochs() == [1]
        _assert_restores(writer, 1, first)
        writer.save(2, first, jax.random.key(0), val_loss=1.0, metadata={"epoch": 2})
    assert Checkpointer(tmpfs.path).epochs() == [1, 2]


def test_a_read_only_disk_refuses_the_writer_in_one_line_and_still_reads(tmpfs, binary_pixels):
    state = _trained_state(binary_pixels)
    with Checkpointer(tmpfs.path, clean_unfinished=True) as writer:
        for epoch in (1, 2):
            writer.save(epoch, state, jax.random.key(epoch), val_loss=1.0, metadata={"epoch": epoch})
    unfinished = tmpfs.path / "checkpoints" / "3.orbax-checkpoint-tmp"
    (unfinished / "state").mkdir(parents=True)
    tmpfs.remount("ro")
    folder = tmpfs.path / "checkpoints"
    with pytest.raises(StorageError) as raised:
        Checkpointer(tmpfs.path, clean_unfinished=True)
    assert str(raised.value) == f"cannot open {folder} for writing (Read-only file system); nothing was written there"
    reader = Checkpointer(tmpfs.path)
    assert reader.epochs() == [1, 2] and reader.latest_metadata() == {"epoch": 2}
    restored = reader.restore(preset_state(CONFIG), jax.random.key(0))
    assert restored.epoch == 2 and restored.skipped == []
    _assert_trees_equal(restored.state.params, state.params)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(jax.random.key(2)))
    # A save through a reader fails too (at the latest when it closes), naming the folder and the cause.
    with pytest.raises(StorageError, match=rf"^cannot write the checkpoint of epoch 3 to {folder} \(Read-only file "
                                           r"system\); nothing else was lost: the checkpoints of epochs \[1, 2\]"):
        with reader:
            reader.save(3, state, jax.random.key(0), val_loss=1.0, metadata={"epoch": 3})
    assert unfinished.is_dir() and Checkpointer(tmpfs.path).epochs() == [1, 2]
    # No writer thread is left waiting for folders that could not be made (it would hold up the process's exit).
    # Orbax's asyncio worker may take a moment to wind down on a loaded machine: wait up to 30 s, then fail.
    assert _non_daemon_threads_after(30.0) == []
    # A damaged checkpoint cannot be set aside on a read-only disk: one line, and it stays where it was.
    for file in (tmpfs.path / "checkpoints" / "2" / "state").rglob("*"):
        if file.is_file():
            tmpfs.remount("rw")
            file.write_bytes(b"garbage")
    tmpfs.remount("ro")
    with pytest.raises(StorageError, match=rf"^cannot move the unreadable checkpoint of epoch 2 aside in {folder} "
                                           r"\(Read-only file system\); it was left as it was"):
        Checkpointer(tmpfs.path).restore(preset_state(CONFIG), jax.random.key(0))
    assert Checkpointer(tmpfs.path).restore(preset_state(CONFIG), jax.random.key(0), epoch=1).epoch == 1


# What Orbax raised at the save after one that filled a tmpfs (the paths shortened).
ORBAX_FULL_DISK = ('RESOURCE_EXHAUSTED: Error writing "params.encoder.params.MLP_0.Dense_0.kernel/0.0" in OCDBT '
                   'database at local file "/run/checkpoints/2.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
                   'ocdbt.process_0/": Failed writing: "/run/...": Failed to write 2706136 bytes to file 4: No space '
                   "left on device [os_error_code='28']")


def test_io_faults_are_told_from_other_errors():
    assert checkpoint.io_fault_cause(ValueError(ORBAX_FULL_DISK)) == "No space left on device"
    read_only = OSError(errno.EROFS, "Read-only file system", "/run/checkpoints/2.orbax-checkpoint-tmp")
    assert checkpoint.io_fault_cause(read_only) == "Read-only file system"
    try:
        try:
            raise read_only
        except OSError as error:
            raise RuntimeError("a save failed") from error
    except RuntimeError as error:
        assert checkpoint.io_fault_cause(error) == "Read-only file system"  # found among the causes
    assert checkpoint.io_fault_cause(ValueError("Destination /run/checkpoints/2 already exists.")) is None
    assert checkpoint.io_fault_cause(KeyError("params")) is None


def test_an_injected_background_failure_is_one_line_and_keeps_the_last_checkpoint(tmp_path, binary_pixels,
                                                                                    monkeypatch):
    """Where a real full disk cannot be mounted: the save of epoch 3 fails in the background (its half-written folder
    left behind), and Orbax raises TensorStore's error of a full disk when the next save waits for it."""
    real_save, real_wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished
    failed = []

    def save(manager, step, *args, **kwargs):
        if step != 3:
            return real_save(manager, step, *args, **kwargs)
        (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        failed.append(step)
        return True

    def wait_until_finished(manager):
        real_wait(manager)
        if failed:
            failed.clear()
            raise ValueError(ORBAX_FULL_DISK)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait_until_finished)
    state = _trained_state(binary_pixels)
    with Checkpointer(tmp_path, clean_unfinished=True) as checkpointer:
        for epoch in (1, 2, 3):
            checkpointer.save(epoch, state, jax.random.key(epoch), val_loss=1.0, metadata={"epoch": epoch})
        with pytest.raises(StorageError) as raised:
            checkpointer.save(4, state, jax.random.key(4), val_loss=1.0)
    assert str(raised.value) == (
        f"cannot write the checkpoint of epoch 3 to {tmp_path / 'checkpoints'} (No space left on device), so epoch 4 "
        "was not saved either; nothing else was lost: the checkpoints of epochs [1, 2] are intact; free space or make "
        "the folder writable, then run again")
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    restored = Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0))
    assert restored.epoch == 2
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(jax.random.key(2)))


def test_an_unwritable_folder_refuses_the_writer_in_one_line(tmp_path, monkeypatch):
    """A permission error (which root, running these tests, never meets on a local disk), injected."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "checkpoints" / ".write-test-x"))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", denied)
    with pytest.raises(StorageError) as raised:
        Checkpointer(tmp_path, clean_unfinished=True)
    assert str(raised.value) == (f"cannot open {tmp_path / 'checkpoints'} for writing (Permission denied); nothing "
                                 "was written there")
    assert Checkpointer(tmp_path).epochs() == []  # a reader needs no write access


def _non_daemon_threads_after(timeout: float) -> list[str]:
    """The names of the non-daemon threads besides the main one, once none is left or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        names = [thread.name for thread in threading.enumerate() if not thread.daemon and thread.name != "MainThread"]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.1)
