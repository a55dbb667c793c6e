"""Runs on the real binarized MNIST (`vae_jax.trainer`, `vae_jax.readback`): learning, exact resume, divergence
handling, evaluation, figures."""

import json
import re

import jax
import numpy as np
import pytest

from tests.conftest import MNIST
from vae_jax import builders, cli, configs, data, evaluate, readback, resolve, train, trainer
from vae_jax.checkpoint import Checkpointer
from vae_jax.errors import ConfigError
from vae_jax.workdir import EVAL_FILE, METRICS_FILE, TENSORBOARD_DIR

EPOCHS = 3


@pytest.fixture(scope="module")
def run_args(shared_data, data_dir):
    return {"data_dir": data_dir, "manual_dir": shared_data / "binarized_mnist", "progress": False,
            "log": lambda message: None}


@pytest.fixture(scope="module")
def cs236_run(tmp_path_factory, run_args):
    """The cs236 preset trained for three epochs without interruption."""
    workdir = tmp_path_factory.mktemp("cs236")
    config = configs.apply_overrides(configs.get_config("cs236"), [f"epochs={EPOCHS}"])
    trainer.fit(config, workdir, **run_args)
    return workdir


def _params(workdir, epoch=None):
    """The parameters of the checkpoint of `epoch` (default: the latest)."""
    return resolve.open_run(workdir, epoch=epoch or Checkpointer(workdir).epochs()[-1])[1].state.params


def test_cs236_learns_on_real_data(cs236_run, run_args):
    lines = [json.loads(line) for line in (cs236_run / METRICS_FILE).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert lines[-1]["step"] == EPOCHS * 500
    # Posterior collapse is visible while it happens: KL per latent dimension and active units, every epoch.
    assert len(lines[-1]["train_kl_per_dim"]) == len(lines[-1]["val_kl_per_dim"]) == 10
    assert abs(sum(lines[-1]["val_kl_per_dim"]) - lines[-1]["val_kl"]) < 1e-3  # 10 dimensions rounded to 4 decimals
    assert 3 <= lines[-1]["val_active_units"] <= 10
    assert lines[-1]["val_nelbo"] < lines[0]["val_nelbo"]
    result = readback.evaluate_checkpoint(cs236_run, "test", data_dir=run_args["data_dir"])
    # An untrained model scores ~545 nats and the best latent-free model (independent pixel marginals) ~206;
    # three epochs of cs236 reach ~116.
    assert result["nelbo"] < 125.0
    assert 10.0 < result["kl"] < 30.0, "the posterior collapsed or exploded"
    np.testing.assert_allclose(result["nelbo"], result["rec"] + result["kl"], rtol=1e-6)
    assert (result["num_examples"], result["split"], result["dataset"]) == (10_000, "test", "binarized_mnist")
    assert result["epoch"] == Checkpointer(cs236_run).best_epoch()
    last = json.loads((cs236_run / EVAL_FILE).read_text().splitlines()[-1])
    assert last == json.loads(json.dumps(result))


def test_resumed_run_ends_with_the_same_parameters(cs236_run, run_args, tmp_path):
    config = configs.get_config("cs236")
    trainer.fit(configs.apply_overrides(config, ["epochs=2"]), tmp_path, **run_args)
    with open(tmp_path / METRICS_FILE, "a") as metrics:  # killed while writing epoch 3's line
        metrics.write('{"epoch": 3, "step": 15')
    trainer.fit(configs.apply_overrides(config, [f"epochs={EPOCHS}"]), tmp_path, **run_args)
    resumed, uninterrupted = _params(tmp_path), _params(cs236_run)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_a_different_model(cs236_run, run_args):
    config = configs.apply_overrides(configs.get_config("cs236"), ["model.latent_dim=20", "epochs=4"])
    with pytest.raises(ConfigError, match="model.latent_dim differ"):
        trainer.fit(config, cs236_run, **run_args)


def test_a_new_run_starts_from_the_best_checkpoint_of_init_from(cs236_run, run_args, tmp_path):
    best = Checkpointer(cs236_run).best_epoch()
    lines = [json.loads(line) for line in (cs236_run / METRICS_FILE).read_text().splitlines()]
    # Another objective, and a learning rate too small to move a float32 parameter: the one epoch ends where it began.
    config = configs.apply_overrides(configs.get_config("cs236"), [
        f"init_from={cs236_run}", "epochs=1", "objective=iwae", "num_samples=2", "optim.learning_rate=1e-30"])
    messages = []
    record = trainer.fit(config, tmp_path, **{**run_args, "log": messages.append})
    assert messages == [f"starting from the parameters of {cs236_run}, epoch {best} (its best validation loss)"]
    for started, parent in zip(jax.tree.leaves(_params(tmp_path)), jax.tree.leaves(_params(cs236_run, best))):
        np.testing.assert_array_equal(started, parent)
    assert record["val_nelbo"] == lines[best - 1]["val_nelbo"]
    assert record["step"] == 500  # its own optimizer and schedule, from step 0
    # An IWAE run is validated on its own bound (K = 2), the loss its best checkpoint is chosen by.
    restored = resolve.open_run(tmp_path)[1]
    val_pixels = data.load_split("binarized_mnist", "validation", data_dir=run_args["data_dir"])
    bounds = evaluate.evaluate_iwae(restored.state.model, restored.state.params, val_pixels,
                                    train.run_keys(jax.random.key(config.seed)).eval, num_samples=2, batch_size=1000)
    np.testing.assert_allclose(record["val_nll_bound"], -np.mean(np.asarray(bounds, np.float64)), rtol=1e-12)
    assert Checkpointer(tmp_path).validation_loss(1) == record["val_nll_bound"]
    assert record["val_nll_bound"] < record["val_nelbo"] - 0.5  # K = 2 is a tighter bound than the ELBO
    assert "val_nll_bound" not in lines[best - 1]  # an ELBO run is validated and chosen by its NELBO
    # Such a checkpoint written by an older vae_jax (ranked by the NELBO) is not resumed: the rankings would mix.
    (tmp_path / "checkpoints" / "1" / "metrics" / "metrics").write_text(json.dumps({"val_nelbo": record["val_nelbo"]}))
    with pytest.raises(ConfigError, match=r"ranked by validation NELBO \(epochs \[1\]\).*init_from="):
        trainer.fit(configs.apply_overrides(config, ["epochs=2"]), tmp_path, **run_args)


def test_init_from_refuses_a_missing_run_and_another_model(cs236_run, run_args, tmp_path):
    missing = tmp_path / "missing"
    config = configs.apply_overrides(configs.get_config("cs236"), [f"init_from={missing}", "epochs=1"])
    with pytest.raises(ConfigError, match=re.escape(f"init_from={missing}: work directory {missing} has no "
                                                    "checkpoints")):
        trainer.fit(config, tmp_path / "run", **run_args)
    config = configs.apply_overrides(config, [f"init_from={cs236_run}", "model.latent_dim=20"])
    with pytest.raises(ConfigError, match=re.escape(f"init_from={cs236_run} holds a run of another model (")
                       + ".*; start from a run of this model, or drop init_from"):
        trainer.fit(config, tmp_path / "run", **run_args)


def test_divergence_exits_3_and_keeps_the_good_checkpoints(run_args, tmp_path, capsys):
    data_options = ["--data-dir", str(run_args["data_dir"]), "--manual-dir", str(run_args["manual_dir"])]
    train = ["train", "--workdir", str(tmp_path), "--config", "cs236", "--no-progress", *data_options]
    assert cli.main([*train, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert cli.main([*train, "--epochs", "2", "optim.learning_rate=1e4"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("resuming ") and len(err) == 2
    # The failing batch is replayed: the message names the term that went non-finite, or else the gradient.
    assert re.match(r"error: (the loss or gradient|(log p\(x\|z\)|log p\(z\)|log q\(z\|x\))(, log .*)?) became "
                    r"non-finite .*at epoch 2, step \d+ .* checkpoints up to epoch 1 are kept; resume with a lower "
                    r"optim.learning_rate", err[1]), err[1]
    last = json.loads((tmp_path / METRICS_FILE).read_text().splitlines()[-1])
    assert last["status"] == "diverged" and last["epoch"] == 2
    assert Checkpointer(tmp_path).epochs() == [1]
    assert cli.main(["eval", "--workdir", str(tmp_path), "--split", "validation", *data_options[:2]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 1 and np.isfinite(result["nelbo"])
    # Resuming with the original learning rate goes on from epoch 1.
    assert cli.main([*train, "--epochs", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["epoch"] == 2 and np.isfinite(record["val_nelbo"])


def test_evaluation_does_not_depend_on_the_batch_size(cs236_run, run_args, capsys):
    results = []
    for size in ("100", "1000", "768"):
        capsys.readouterr()
        assert cli.main(["eval", "--workdir", str(cs236_run), "--batch-size", size, "--iwae-samples", "20",
                         "--iwae-chunk", "8", "--data-dir", str(run_args["data_dir"])]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["iwae_k"] == 20 and results[0]["estimator"] == "iwae"
    # The K = 20 bound is tighter than the ELBO, by a few nats after three epochs.
    assert 0.5 < results[0]["nelbo"] - results[0]["nll"] < 10
    for result in results[1:]:
        for name in ("nelbo", "rec", "kl", "nll"):
            assert abs(result[name] - results[0][name]) < 1e-5


def test_sample_figures(cs236_run, run_args, tmp_path):
    from PIL import Image

    figures = readback.write_sample_figures(cs236_run, tmp_path / "grid.png", num_images=16,
                                            data_dir=run_args["data_dir"])
    assert figures == {"samples": tmp_path / "grid.png", "reconstructions": tmp_path / "grid_reconstructions.png",
                       "interpolations": tmp_path / "grid_interpolations.png"}
    def picture(name):
        with Image.open(figures[name]) as image:
            return np.asarray(image)

    assert picture("samples").shape == (4 * 29 + 1, 4 * 29 + 1)
    assert picture("reconstructions").shape == (4 * 29 + 1, 8 * 29 + 1)
    assert picture("interpolations").shape == (4 * 29 + 1, 10 * 29 + 1)
    pixels = picture("samples")
    assert 10 < pixels.mean() < 120, "samples should be mostly dark digits with bright strokes"
    # `epoch` picks another checkpoint than the best (epoch 3 of 3, whose validation NELBO is below epoch 1's).
    first = readback.write_sample_figures(cs236_run, tmp_path / "first.png", epoch=1, num_images=16,
                                          data_dir=run_args["data_dir"])
    with Image.open(first["samples"]) as image:
        assert not np.array_equal(np.asarray(image), pixels)


def test_interpolation_ends_at_the_reconstructions_and_manifold_covers_the_prior():
    from vae_jax import figures

    model = builders.build_model(configs.ModelConfig(latent_dim=2, encoder_hidden=(16,), decoder_hidden=(16,)), MNIST)
    params = model.init(jax.random.key(0), np.zeros(784, np.float32))
    x = (np.random.default_rng(0).random((6, 784)) < 0.3).astype(np.float32)
    lines = figures.interpolate(model, params, x[:3], x[3:], 5)
    assert lines.shape == (3, 5, 784)
    recons = figures.reconstruct(model, params, x)
    np.testing.assert_allclose(lines[:, 0], recons[:3], rtol=1e-5)
    np.testing.assert_allclose(lines[:, -1], recons[3:], rtol=1e-5)
    manifold = figures.latent_manifold(model, params, 4)
    assert manifold.shape == (16, 784)
    # The grid's corners are the prior's 1/8 and 7/8 quantiles: z = (-1.15, +1.15) at the top left.
    z = np.array([[-1.1503494, 1.1503494]], np.float32)
    np.testing.assert_allclose(manifold[0], jax.nn.sigmoid(model.decoder.apply(params["decoder"], z))[0], rtol=1e-5)


def test_a_config_built_in_python_is_validated(run_args, tmp_path):
    config = configs.Config(batch_size=0)
    with pytest.raises(ConfigError, match="batch_size must be positive, got 0"):
        trainer.fit(config, tmp_path, **run_args)
    with pytest.raises(ConfigError, match="batch_size=70000 exceeds the 50000 training examples"):
        trainer.fit(configs.Config(batch_size=70_000), tmp_path, **run_args)
    assert not (tmp_path / "checkpoints").exists()


def test_tensorboard_scalars_beside_the_metrics(run_args, tmp_path):
    import tensorflow as tf

    config = configs.apply_overrides(configs.get_config("cs236"), [
        "epochs=1", "model.encoder_hidden=16", "model.decoder_hidden=16", "model.latent_dim=2"])
    record = trainer.fit(config, tmp_path, tensorboard=True, **run_args)
    scalars = {}
    for file in (tmp_path / TENSORBOARD_DIR).iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                scalars[value.tag] = (event.step, value.simple_value)
    assert {"train_nelbo", "val_nelbo", "val_kl", "kl_weight", "seconds"} <= set(scalars)
    assert scalars["val_nelbo"][0] == 500
    np.testing.assert_allclose(scalars["val_nelbo"][1], record["val_nelbo"], rtol=1e-6)  # float32 in the file


def test_early_stopping_ends_a_run_whose_validation_loss_stops_improving(cs236_run, run_args, tmp_path):
    # Trained on from cs236_run with the KL unweighted, the posteriors drift away from the prior and the validation
    # NELBO rises every epoch (by several nats): the first epoch stays the best.
    config = configs.apply_overrides(configs.get_config("cs236"), [
        f"init_from={cs236_run}", "kl_weight=0", "patience=2", "epochs=10"])
    messages = []
    trainer.fit(config, tmp_path, **{**run_args, "log": messages.append})
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert messages[-1] == "stopped early after epoch 3: no lower validation loss since epoch 1 (patience=2)"
    assert Checkpointer(tmp_path).best_epoch() == 1
    # Resumed as it is, it stays stopped; with a larger patience it goes on, until that runs out too.
    assert trainer.fit(config, tmp_path, **{**run_args, "log": messages.append}) == {"epoch": 3}
    assert messages[-1] == f"{tmp_path} stopped early after epoch 3: no lower validation loss since epoch 1 " \
                           "(patience=2); nothing to train"
    record = trainer.fit(configs.apply_overrides(config, ["patience=3"]), tmp_path, **run_args)
    assert record["epoch"] == 4


def test_early_stopping_waits_for_the_end_of_the_kl_warm_up():
    config = configs.apply_overrides(configs.get_config("cs236"), ["patience=5", "kl_warmup_epochs=10"])
    assert [trainer.stops_early(config, epoch, best_epoch=1) for epoch in (14, 15)] == [False, True]
    assert [trainer.stops_early(config, epoch, best_epoch=12) for epoch in (16, 17)] == [False, True]
    assert not trainer.stops_early(configs.apply_overrides(config, ["patience=0"]), 100, best_epoch=1)


def test_a_run_with_a_parameter_average_validates_evaluates_resumes_and_hands_on_the_average(cs236_run, run_args,
                                                                                            tmp_path):
    """`optim.ema_decay`: validation (hence the best checkpoint), `eval` and `init_from` use the moving average of
    the parameters, which the checkpoints carry, so a resumed run ends where an uninterrupted one does."""
    config = configs.apply_overrides(configs.get_config("cs236"), [f"init_from={cs236_run}", "optim.ema_decay=0.99",
                                                                   "optim.learning_rate=1e-4"])
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    record = trainer.fit(configs.apply_overrides(config, ["epochs=2"]), uninterrupted, **run_args)
    trainer.fit(configs.apply_overrides(config, ["epochs=1"]), resumed, **run_args)
    trainer.fit(configs.apply_overrides(config, ["epochs=2"]), resumed, **run_args)
    ends = [resolve.open_run(workdir, epoch=2)[1].state for workdir in (uninterrupted, resumed)]
    for a, b in zip(jax.tree.leaves(ends[0].opt_state), jax.tree.leaves(ends[1].opt_state)):
        np.testing.assert_array_equal(a, b)
    state = ends[0]
    assert not np.array_equal(jax.tree.leaves(state.eval_params)[0], jax.tree.leaves(state.params)[0])
    val_pixels = data.load_split("binarized_mnist", "validation", data_dir=run_args["data_dir"])

    def val_nelbo(params, key):
        return float(np.mean(np.asarray(evaluate.evaluate_elbo(state.model, params, val_pixels, key,
                                                                batch_size=1000).nelbo, np.float64)))

    eval_key = train.run_keys(jax.random.key(config.seed)).eval
    np.testing.assert_allclose(record["val_nelbo"], val_nelbo(state.eval_params, eval_key), rtol=1e-12)
    assert abs(record["val_nelbo"] - val_nelbo(state.params, eval_key)) > 1e-3
    result = readback.evaluate_checkpoint(uninterrupted, "validation", epoch=2, data_dir=run_args["data_dir"])
    np.testing.assert_allclose(result["nelbo"], val_nelbo(state.eval_params, jax.random.key(0)), rtol=1e-12)
    # A run started from it starts from the average (a learning rate too small to move a float32 parameter).
    child = configs.apply_overrides(configs.get_config("cs236"), [
        f"init_from={uninterrupted}", "epochs=1", "optim.learning_rate=1e-30"])
    trainer.fit(child, tmp_path / "child", **run_args)
    best = resolve.open_run(uninterrupted)[1].state.eval_params
    for started, average in zip(jax.tree.leaves(_params(tmp_path / "child")), jax.tree.leaves(best)):
        np.testing.assert_array_equal(started, average)
