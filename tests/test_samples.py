"""Sample quality of a run (`vae_jax.samples`, `eval --sample-quality`): images keyed by their index, the reference
images in the model's form, and the command line end to end on real data with the committed extractors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import cli, data, features, latent_density, samples
from vae_jax.objective import map_examples

TINY = ["model.latent_dim=2", "model.encoder_hidden=16", "model.decoder_hidden=16", "batch_size=500"]


@pytest.fixture
def model_and_params(small_model):
    return small_model, small_model.init(jax.random.key(0), jnp.zeros(784))


def test_images_are_keyed_by_their_index(model_and_params, monkeypatch):
    model, params = model_and_params
    key = jax.random.key(1)
    whole = samples.draw_images(model, params, key, 50, binary=True)
    monkeypatch.setattr(samples, "BATCH_SIZE", 7)
    np.testing.assert_array_equal(samples.draw_images(model, params, key, 50, binary=True), whole)
    np.testing.assert_array_equal(samples.draw_images(model, params, key, 20, binary=True), whole[:20])
    assert set(np.unique(whole)) == {0.0, 1.0}
    code_key, pixel_key = jax.random.split(jax.random.fold_in(key, 13))  # image 13 by hand
    mean = model.generate(params, code_key, 1)[0]
    np.testing.assert_array_equal(whole[13], jax.random.bernoulli(pixel_key, mean).astype(np.float32))


def test_a_sampler_supplies_the_codes_that_are_decoded(model_and_params):
    model, params = model_and_params
    near_zero = latent_density.temperature_sampler(3, 1e-6)
    means = samples.draw_images(model, params, jax.random.key(2), 5, binary=False, sampler=near_zero)
    np.testing.assert_allclose(means, np.repeat(model.decode(params, jnp.zeros((1, 3))), 5, axis=0), atol=1e-5)


def test_reference_images_take_the_models_form(binary_pixels):
    grey = (np.arange(64 * 784) % 256).reshape(64, 784).astype(np.uint8)
    key = jax.random.key(3)
    dynamic = samples.reference_images(grey, data.describe("mnist"), key)
    expected = map_examples(lambda x, _: x, jnp.asarray(grey), jnp.arange(64), key, True)
    np.testing.assert_array_equal(dynamic, expected)
    eight_bit = samples.reference_images(grey, data.describe("mnist", "8bit"), key)
    np.testing.assert_allclose(eight_bit, grey / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(samples.reference_images(binary_pixels, data.describe("binarized_mnist"), key),
                                  binary_pixels)


def test_the_test_split_is_close_to_the_training_split(shared_data, data_dir):
    """FID and KID of 2,000 test images against 2,000 training images (two samples of one distribution) are small;
    against the model-free baseline of each pixel drawn from its training mean, they are large."""
    train = data.load_split("mnist", "train", data_dir=data_dir, manual_dir=shared_data / "mnist")[:2000] / 255.0
    test = data.load_split("mnist", "test", data_dir=data_dir, manual_dir=shared_data / "mnist")[:2000] / 255.0
    extractor = features.load_extractor("mnist")
    same = samples.measure(test, train, extractor)
    pixel_means = np.random.default_rng(0).random(train.shape) < train.mean(axis=0)
    baseline = samples.measure(test, pixel_means.astype(np.float64), extractor)
    assert same["fid"] < 0.05 * baseline["fid"]
    assert abs(same["kid"]) < 3 * same["kid_stderr"] and baseline["kid"] > 10 * baseline["kid_stderr"]
    assert min(same["precision"], same["recall"]) > 0.8 and baseline["recall"] < 0.05


def test_eval_scores_samples_with_a_card_and_compare_tables_them(shared_data, data_dir, tmp_path, capsys):
    workdir = tmp_path / "tiny_mnist"
    assert cli.main(["train", "--workdir", str(workdir), "--dataset", "mnist", "--config", "cs236", "--epochs", "1",
                     "--no-progress", "--manual-dir", str(shared_data / "mnist"), "--data-dir", str(data_dir),
                     *TINY]) == 0
    capsys.readouterr()
    base = ["eval", "--workdir", str(workdir), "--data-dir", str(data_dir), "--sample-quality", "300"]
    assert cli.main([*base, "--sample-grid", str(tmp_path / "grid.png")]) == 0
    prior = json.loads(capsys.readouterr().out)
    assert set(prior) >= {"fid", "kid", "kid_stderr", "precision", "recall", "density", "coverage"}
    assert prior["sampled"] == "prior" and prior["estimator"] == "sample quality" and prior["num_examples"] == 300
    extractor = features.load_extractor("mnist")
    assert prior["sample_quality"] == {"extractor": "mnist", "extractor_sha256": extractor.sha256, "num_samples": 300,
                                       "sample_form": "Bernoulli draws of the decoded means"}
    assert extractor.sha256 in prior["units"] and (tmp_path / "grid.png").stat().st_size > 1000
    assert prior["fid"] > 0 and 0 <= prior["precision"] <= 1 and 0 <= prior["coverage"] <= 1
    assert cli.main([*base, "--temperature", "0.5"]) == 0
    cold = json.loads(capsys.readouterr().out)
    assert cold["sampled"] == "prior at temperature 0.5" and cold["fid"] != prior["fid"]
    assert cli.main([*base, "--latent-density", "gmm", "--latent-components", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["sampled"].startswith("ex-post Gaussian mixture (K=3)")
    assert cli.main(["compare", str(workdir / "eval.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "| sampled | FID | KID |" in table and table.count("| run |") == 1 and "prior at temperature 0.5" in table
    assert cli.main([*base, "--latent-density", "gmm", "--temperature", "0.5"]) == 2
    assert "drop it with --latent-density" in capsys.readouterr().err
    assert cli.main([*base[:-1], "20000"]) == 2
    assert "ask for fewer samples" in capsys.readouterr().err
