"""Sequences through the common path: length buckets (`vae_jax.buckets`) that change no number, training that
resumes bit for bit, evaluation in nats per time step, from Python and from the CLI, on JSB Chorales."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import buckets, configs, data, evaluate, protocol, readback, recurrent, trainer
from vae_jax.errors import ConfigError
from vae_jax.sequences import PaddedSplit, Sequence

MODEL = recurrent.VRNN(latent_dim=4, hidden=16, features=16)


@pytest.fixture(scope="module")
def validation(polyphonic) -> PaddedSplit:
    return data.load_sequences("jsb_chorales", "validation", manual_dir=polyphonic)


def _config(epochs: int) -> configs.Config:
    return configs.apply_overrides(configs.get_config("cs236"), [
        "dataset=jsb_chorales", f"epochs={epochs}", "batch_size=16", "eval_batch_size=32"])


def test_training_parts_are_batch_aligned_buckets_of_the_whole_split(polyphonic):
    split = data.load_sequences("jsb_chorales", "train", manual_dir=polyphonic)
    parts = buckets.sequence_parts(split, max_buckets=4, batch_size=16)
    assert 2 <= len(parts) <= 4
    assert all(len(part.indices) % 16 == 0 for part in parts[:-1])
    np.testing.assert_array_equal(np.sort(np.concatenate([p.indices for p in parts])), np.arange(229))
    for part in parts:
        lengths = split.lengths[part.indices]
        assert part.examples.frames.shape[1] == lengths.max()  # padded to its own longest only
        np.testing.assert_array_equal(part.examples.length, lengths)
        np.testing.assert_array_equal(part.examples.frames, split.frames[part.indices, :lengths.max()])
    assert buckets.part_steps(parts, 16) == [len(p.indices) // 16 for p in parts]
    assert sum(buckets.part_steps(parts, 16)) == 229 // 16  # an epoch leaves out fewer than one batch


def test_an_epoch_takes_every_part_once_in_an_order_of_its_key():
    steps = [3, 0, 2, 4]
    schedule = buckets.epoch_schedule(jax.random.key(1), steps)
    assert sorted(part for part, _ in schedule) == [0, 1, 2, 3]
    located = [buckets.locate(schedule, steps, step) for step in range(9)]
    assert [offset + in_part for _, offset, in_part in located] == list(range(9))
    assert schedule == buckets.epoch_schedule(jax.random.key(1), steps)
    assert buckets.epoch_schedule(jax.random.key(1), [5]) == [(0, 0)]
    with pytest.raises(ValueError):
        buckets.locate(schedule, steps, 9)


def test_bucketed_evaluation_equals_the_split_padded_whole(validation):
    params = MODEL.init(jax.random.key(0), Sequence(validation.frames[0], validation.lengths[0]), jax.random.key(1), 1)
    whole = Sequence(jnp.asarray(validation.frames), jnp.asarray(validation.lengths))
    elbo = jax.tree_util.Partial(evaluate.evaluate_elbo, MODEL, batch_size=32)
    iwae = jax.tree_util.Partial(evaluate.evaluate_iwae, MODEL, num_samples=8, batch_size=32, chunk_size=3)
    key = jax.random.key(7)
    for fn in (elbo, iwae):
        once = jax.tree.map(np.asarray, fn(params, whole, key, indices=jnp.arange(76)))
        parted = buckets.over_parts(fn, buckets.sequence_parts(validation))(params, key)
        for a, b in zip(jax.tree.leaves(parted), jax.tree.leaves(once)):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-4)


def test_per_frame_figures_are_totals_over_frames():
    nelbo, lengths = np.array([30.0, 50.0, 10.0]), np.array([3, 6, 1])
    terms = evaluate.ElboTerms(nelbo, nelbo, nelbo * 0, np.zeros((3, 0)), np.zeros((3, 0)))
    result = evaluate.per_frame(terms, -nelbo + 1.0, lengths)
    assert result["num_frames"] == 10 and result["nelbo_per_frame"] == pytest.approx(9.0)
    assert result["nll_per_frame"] == pytest.approx(8.7)
    residual = nelbo - 9.0 * lengths  # 3, -4, 1
    assert result["nelbo_per_frame_stderr"] == pytest.approx(np.sqrt(np.sum(residual**2) / 6) / (10 / 3))


def test_training_resumes_bit_for_bit_and_in_pieces(polyphonic, tmp_path):
    whole, resumed, pieces = (tmp_path / name for name in ("whole", "resumed", "pieces"))
    options = {"model": MODEL, "manual_dir": polyphonic, "progress": False, "log": lambda _: None}
    trainer.fit(_config(2), whole, **options)
    trainer.fit(_config(1), resumed, **options)
    trainer.fit(_config(2), resumed, **options)
    trainer.fit(_config(2), pieces, stop_check_steps=3, **options)
    lines = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
             for run in (whole, resumed, pieces)]
    for key in ("train_loss", "train_nelbo", "val_nelbo", "val_kl", "step"):
        assert lines[0][-1][key] == lines[1][-1][key] == lines[2][-1][key], key
    assert lines[0][-1]["step"] == 2 * (229 // 16)
    assert lines[0][-1]["val_nelbo"] < lines[0][0]["val_nelbo"]


def test_cli_trains_and_evaluates_in_nats_per_frame_with_a_card(polyphonic, tmp_path):
    workdir = tmp_path / "vrnn"
    common = ["--manual-dir", str(polyphonic), "--model", "vae_jax.recurrent:VRNN"]
    subprocess.run([sys.executable, "-m", "vae_jax", "train", "--workdir", str(workdir), "--dataset", "jsb_chorales",
                    "--epochs", "1", "--no-progress", *common, "batch_size=32", "eval_batch_size=64"],
                   cwd=REPO, check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "vae_jax", "eval", "--workdir", str(workdir), "--split", "test",
                           "--iwae-samples", "4", *common], cwd=REPO, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["units"] == "nats, nats/frame" and result["binarization"] == "none (binary frames)"
    assert result["num_frames"] == 4725 and result["num_examples"] == 77 and result["iwae_k"] == 4
    assert result["nll_per_frame"] == pytest.approx(result["nll"] * 77 / 4725)
    assert result["nelbo_per_frame"] >= result["nll_per_frame"] > 0
    done = subprocess.run([sys.executable, "-m", "vae_jax", "eval", "--workdir", str(workdir), "--split", "test",
                           "--iwae-samples", "4", "--bound", "fivo", *common], cwd=REPO, check=True,
                          capture_output=True, text=True)
    fivo = json.loads(done.stdout.strip().splitlines()[-1])
    assert (fivo["estimator"], fivo["iwae_k"], result["estimator"]) == ("fivo", 4, "iwae")
    assert fivo["nelbo"] == result["nelbo"] and fivo["nelbo_per_frame"] > fivo["nll_per_frame"] > 0
    table = protocol.compare_tables(protocol.read_results([workdir / "eval.jsonl"]))
    assert "NLL (nats/frame)" in table and f"{result['nll_per_frame']:.2f} ±" in table
    assert "estimator=fivo" in table and "estimator=iwae" in table and "they differ in estimator" in table


def test_fivo_needs_a_model_with_a_particle_filter():
    with pytest.raises(ConfigError, match="--bound fivo needs a sequence model .* RNNBaseline has none"):
        readback._nll_bound(recurrent.RNNBaseline(), "fivo", 4, 10, 10, None, {})


def test_a_sequence_dataset_refuses_other_forms_and_names_its_folder(tmp_path):
    with pytest.raises(data.DataError, match="take data_form=sequence"):
        data.describe("nottingham", "8bit")
    with pytest.raises(data.DataError, match="--manual-dir"):
        data.load_sequences("nottingham", "test", manual_dir=tmp_path / "none")
