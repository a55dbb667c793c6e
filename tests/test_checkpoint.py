"""Orbax checkpoints: exact round trip, independent retention of latest and best, damaged checkpoints."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import preset_state
from vae_jax import configs, train
from vae_jax.checkpoint import Checkpointer
from vae_jax.errors import CheckpointError

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
    # A reader leaves the unfinished save alone (it may be in progress); the training process cleans it up
    # (in the background, finished before its next save).
    assert unfinished.is_dir()
    writer = Checkpointer(tmp_path, clean_unfinished=True)
    writer.save(2, state, jax.random.key(0), val_loss=0.5, metadata=configs.to_dict(CONFIG))
    writer.close()  # waits for the background save
    assert not unfinished.exists() and Checkpointer(tmp_path).epochs() == [1, 2]


def test_empty_workdir_has_nothing_to_restore(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Checkpointer(tmp_path).restore(preset_state(CONFIG), jax.random.key(0))


def test_damaged_metadata_is_skipped_or_reported_in_one_line(tmp_path, binary_pixels):
    state = _trained_state(binary_pixels)
    checkpointer = Checkpointer(tmp_path, keep=3)
    for epoch in (1, 2):
        checkpointer.save(epoch, state, jax.random.key(0), val_loss=1.0, metadata={"epoch": epoch})
    checkpointer.wait_until_finished()
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
