"""The command line: a tiny run end to end on real data, and one-line errors with exit code 2."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, preset_state
from vae_jax import cli

TINY = ["model.encoder_hidden=32", "model.decoder_hidden=32", "model.latent_dim=2", "eval_batch_size=5000"]


def _train_tiny(workdir, shared_data, data_dir, epochs=1, *options):
    """The arguments of `train` for the tiny cs236 model on the real data, with more `options` at the end."""
    return ["train", "--workdir", str(workdir), "--config", "cs236", "--epochs", str(epochs), "--no-progress",
            "--manual-dir", str(shared_data / "binarized_mnist"), "--data-dir", str(data_dir), *TINY, *options]


def _module_run(argv, extra_env=None):
    """`python -m vae_jax ARGV` in a subprocess of its own, from the checkout, with `extra_env` set."""
    return subprocess.run([sys.executable, "-m", "vae_jax", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data, data_dir):
    """A tiny model trained for one epoch through the CLI."""
    workdir = tmp_path_factory.mktemp("tiny")
    assert cli.main(_train_tiny(workdir, shared_data, data_dir)) == 0
    return workdir


def test_train_eval_sample(tiny_run, shared_data, data_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(tiny_run), "--split", "validation", "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["num_examples"] == 10_000
    assert result["config"]["model"]["latent_dim"] == 2 and result["epoch"] == 1 and result["step"] == 500
    assert 100 < result["nelbo"] < 200  # about 193: below the best model without a latent (about 206)
    out = tmp_path / "figures" / "prior.png"
    assert cli.main(["sample", "--workdir", str(tiny_run), "--out", str(out), "--data-dir", str(data_dir),
                     "--mnist-dir", str(shared_data / "mnist")]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert out.is_file() and (tmp_path / "figures" / "prior_reconstructions.png").is_file()
    # The tiny model has a 2-D latent space, so its manifold and the labelled scatter are drawn too.
    assert (tmp_path / "figures" / "prior_interpolations.png").is_file()
    assert (tmp_path / "figures" / "prior_manifold.png").is_file()
    assert figures["scatter"] == str(tmp_path / "figures" / "prior_scatter.png")
    from PIL import Image

    with Image.open(figures["scatter"]) as scatter:
        assert scatter.size == (720, 660)


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
def test_a_learned_prior_trains_evaluates_and_samples_from_the_command_line(prior, shared_data, data_dir, tmp_path,
                                                                             capsys):
    workdir = tmp_path / prior
    assert cli.main(_train_tiny(workdir, shared_data, data_dir, 1, f"model.prior={prior}",
                                "model.prior_components=20")) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir), "--split", "validation", "--iwae-samples", "10",
                     "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["model"]["prior"] == prior and result["kl_per_dim"] == []
    # The bound is below the NELBO, and both are those of a model that learned something in one epoch.
    assert 100 < result["nll"] < result["nelbo"] < 200  # about 190 and 188, below a latent-free model's 206
    assert 0 < result["kl"] < 30
    out = tmp_path / "samples.png"
    assert cli.main(["sample", "--workdir", str(workdir), "--out", str(out), "--data-dir", str(data_dir),
                     "--mnist-dir", str(shared_data / "mnist")]) == 0
    assert out.is_file()


def test_train_without_config_resumes_the_stored_one(tiny_run, data_dir, capsys):
    capsys.readouterr()
    assert cli.main(["train", "--workdir", str(tiny_run), "--no-progress", "--data-dir", str(data_dir)]) == 0
    assert "nothing to train" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", "--workdir", "{tmp}/w", "--config", "huge"], "unknown config preset 'huge'"),
    (["train", "--workdir", "{tmp}/w", "--dataset", "no_such_dataset", "--data-dir", "{tmp}/d"],
     "unknown dataset 'no_such_dataset'; choose one of"),
    (["train", "--workdir", "{tmp}/w", "model.latent_dim=-1"], "latent_dim must be positive"),
    (["train", "--workdir", "{tmp}/w", "--epochs", "1", "--manual-dir", "{tmp}/absent", "--data-dir", "{tmp}/d"],
     "does not exist; pass --manual-dir"),
    (["eval", "--workdir", "{tmp}/absent"], "work directory {tmp}/absent does not exist"),
    (["eval", "--workdir", "{tmp}"], "has no checkpoints"),
    (["sample", "--workdir", "{tmp}", "--out", "x.png", "--num-images", "0"], "--num-images must be positive"),
    (["train"], "the following arguments are required: --workdir"),
    (["fit"], "invalid choice: 'fit'"),
    (["train", "--workdir", "{tmp}/w", "batch_size=70000"], "batch_size=70000 exceeds the 50000 training examples"),
    (["train", "--workdir", "{tmp}/w", "objective=iwae", "kl_warmup_epochs=10"],
     "objective=iwae has no KL term, so it would ignore kl_warmup_epochs=10"),
    (["train", "--workdir", "{tmp}/w", "optim.momentum=0.5"], "optim.name=adam would ignore optim.momentum=0.5"),
    (["train", "--workdir", "{tmp}/w", "optim.weight_decay=0.1"], "use optim.name=adamw"),
    (["train", "--workdir", "{tmp}/w", "optim.name=adam_normgrad", "optim.flatten=true"], "set optim.flatten=false"),
    (["train", "--workdir", "{tmp}/w", "--epochs", "2", "seed=1", "--bogus"], "unrecognized arguments: --bogus"),
    (["eval", "--workdir", "{tmp}", "seed=1"], "unrecognized arguments: seed=1"),
])
def test_bad_input_is_one_line_with_exit_code_2(argv, message, tmp_path, capsys):
    capsys.readouterr()
    assert _exit_code([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(tmp=tmp_path) in err


def test_overrides_may_follow_options():
    args = cli.parse_args(["train", "--workdir", "w", "seed=1", "--epochs", "5", "patience=3", "--no-progress",
                           "model.logvar_clip=-6,2"])
    assert args.overrides == ["seed=1", "patience=3", "model.logvar_clip=-6,2"]
    assert (args.epochs, args.no_progress) == (5, True)


def _exit_code(argv: list[str]) -> int:
    """The exit code of `python -m vae_jax ARGV`, whether `main` returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_module_entry_point_exit_codes(tmp_path):
    done = _module_run(["eval", "--workdir", str(tmp_path / "none")])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: work directory {tmp_path / 'none'} does not exist; "
                                                "pass the --workdir of a trained run"]


def test_data_parallel_training_follows_the_single_device_run(tiny_run, tmp_path, shared_data, data_dir):
    """`train --data-parallel` over two (host) devices: the tiny run's epoch, to float32 round-off (the gradient's
    sum runs in another order)."""
    done = _module_run(_train_tiny(tmp_path, shared_data, data_dir, 1, "--data-parallel"),
                       {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert done.returncode == 0, done.stderr[-2000:]
    [parallel] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    [single] = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    for name in ("train_nelbo", "val_nelbo", "val_kl"):
        np.testing.assert_allclose(parallel[name], single[name], rtol=1e-5, err_msg=name)  # 1e-7 measured
    assert parallel["step"] == single["step"] == 500


def test_an_interrupted_train_exits_130_and_keeps_its_checkpoints(tmp_path, shared_data, data_dir):
    """Ctrl-C (SIGINT) during training: exit code 130, a one-line notice, the finished epochs' checkpoints kept, and
    the same command resumes from them."""
    import signal
    import time

    with subprocess.Popen([sys.executable, "-m", "vae_jax", *_train_tiny(tmp_path, shared_data, data_dir, 1000)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 600
        while not (tmp_path / "checkpoints" / "2").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 130, stderr[-2000:]
    # A graceful stop at the next check (after a piece of the epoch in flight, or after the epoch), in one line.
    assert re.fullmatch(r"stopped by SIGINT (after epoch \d+, whose checkpoint is kept|at step \d+ of epoch \d+ "
                        r"\(global step \d+\), whose state is kept in .*); re-run the same command to resume",
                        stderr.strip().splitlines()[-1]), stderr[-2000:]
    assert (tmp_path / "checkpoints" / "2").is_dir()
    resumed = _module_run(_train_tiny(tmp_path, shared_data, data_dir, 4))
    assert resumed.returncode == 0 and "resuming" in resumed.stderr


def test_a_checkpoint_of_another_model_is_one_line_and_renames_nothing(tmp_path, capsys):
    """A work directory whose checkpoint holds parameters of another shape than its stored config says (what another
    vae_jax version's parameter names would give): exit 2, one line naming the differences, every file kept."""
    import jax

    from vae_jax import configs
    from vae_jax.checkpoint import Checkpointer

    small = configs.apply_overrides(configs.get_config("cs236"), TINY)
    other = configs.apply_overrides(small, ["model.decoder_hidden=24"])
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, preset_state(other), jax.random.key(0), val_loss=1.0,
                      metadata=configs.to_dict(small))
    checkpointer.close()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another model than this one (params/decoder/params/" in err
    assert "where the model has (32,) float32" in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_gaps_writes_two_eval_lines_that_compare_keeps_apart(tiny_run, data_dir, tmp_path, capsys):
    capsys.readouterr()
    csv = tmp_path / "gaps.csv"
    assert cli.main(["gaps", "--workdir", str(tiny_run), "--split", "validation", "--num-examples", "40",
                     "--steps", "30", "--samples", "2", "--eval-samples", "20", "--iwae-samples", "50",
                     "--batch-size", "16", "--csv", str(csv), "--data-dir", str(data_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_examples"] == 40 and summary["split"] == "validation"
    assert summary["inference"].startswith("per-example: Adam (learning rate 0.05)")
    # log p(x) >= L[q*] >= L[q] on average, and the gaps add up to the inference gap.
    assert summary["log_px"] > summary["elbo_refined"] > summary["elbo_amortized"]
    np.testing.assert_allclose(summary["approximation_gap"] + summary["amortization_gap"], summary["inference_gap"],
                               rtol=1e-9)
    rows = csv.read_text().splitlines()
    assert rows[0] == "index,log_px,elbo_refined,elbo_amortized,approximation_gap,amortization_gap" and len(rows) == 41
    lines = [json.loads(line) for line in (tiny_run / "eval.jsonl").read_text().splitlines()][-2:]
    assert [line["inference"] for line in lines] == ["amortized", summary["inference"]]
    assert lines[0]["iwae_k"] == 50 and lines[1]["estimator"] == "elbo" and lines[0]["elbo_samples"] == 20
    assert abs(lines[1]["nelbo"] + summary["elbo_refined"]) < 1e-9
    assert cli.main(["compare", str(tiny_run / "eval.jsonl")]) == 0
    tables = capsys.readouterr().out
    assert "differ in" in tables and "inference" in tables.split("differ in")[1].splitlines()[0]


def test_fashion_mnist_trains_resumes_and_evaluates_from_the_command_line(fashion_data, data_dir, tmp_path, capsys):
    import hashlib

    from vae_jax import data

    workdir = tmp_path / "fashion"
    tiny = ["model.latent_dim=2", "model.encoder_hidden=16", "model.decoder_hidden=16", "batch_size=500"]
    assert cli.main(["train", "--workdir", str(workdir), "--dataset", "fashion_mnist", "--config", "cs236",
                     "--epochs", "1", "--no-progress", "--manual-dir", str(fashion_data / "fashion_mnist"),
                     "--data-dir", str(data_dir), *tiny]) == 0
    # Resumed for a second epoch from its stored config, without the original files (the split is cached).
    assert cli.main(["train", "--workdir", str(workdir), "--epochs", "2", "--no-progress",
                     "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir), "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["binarization"], result["split"]) == ("fashion_mnist", "dynamic", "test")
    assert result["train_set"] == "fashion_mnist/train (50000 examples)" and result["num_examples"] == 10_000
    assert result["epoch"] == 2 and result["step"] == 200 and result["config"]["dataset"] == "fashion_mnist"
    test = data.load_split("fashion_mnist", "test", data_dir=data_dir)
    assert result["data_hash"] == hashlib.sha256(test.tobytes()).hexdigest()[:16]
    assert result["data_hash"] != data.split_hash("fashion_mnist", "validation", data_dir=data_dir)
    # About 350 after two epochs: below the best model without a latent (the pixels' mean, about 385 nats).
    assert 200 < result["nelbo"] < 380


def test_8bit_mnist_trains_and_evaluates_in_bits_per_dimension(shared_data, data_dir, tmp_path, capsys):
    """MNIST's grey levels as they are (`data_form=8bit`), with the discretized logistic mixture: one epoch, then
    `eval` with K = 5, whose card says the form and the units and whose NLL comes in bits per dimension too."""
    import math

    workdir = tmp_path / "eightbit"
    tiny = ["model.latent_dim=2", "model.encoder_hidden=16", "model.decoder_hidden=16", "batch_size=500",
            "model.likelihood_components=2"]
    assert cli.main(["train", "--workdir", str(workdir), "--dataset", "mnist", "data_form=8bit",
                     "model.likelihood=logistic_mixture", "--config", "cs236", "--epochs", "1", "--no-progress",
                     "--manual-dir", str(shared_data / "mnist"), "--data-dir", str(data_dir), *tiny]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir), "--iwae-samples", "5", "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["binarization"], result["units"]) == ("mnist", "none (8-bit)", "nats, bits/dim")
    assert result["config"]["data_form"] == "8bit" and result["num_examples"] == 10_000
    assert result["nll_bpd"] == result["nll"] / (784 * math.log(2))
    assert result["nelbo_bpd"] == result["nelbo"] / (784 * math.log(2))
    # A uniform model over 256 levels takes 8 bits per pixel; one epoch already does better.
    assert 0 < result["nll_bpd"] <= result["nelbo_bpd"] < 8
    # Its figures show the grey levels on [0, 1], as the binary models' are: the test digits are mostly dark.
    assert cli.main(["sample", "--workdir", str(workdir), "--out", str(tmp_path / "grid.png"), "--num-images", "16",
                     "--data-dir", str(data_dir), "--mnist-dir", str(shared_data / "mnist")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "grid_reconstructions.png") as image:
        grid = np.asarray(image, np.float64) / 255
    inputs = np.concatenate([grid[1 + 29 * r: 29 * (r + 1), 1 + 58 * c: 29 + 58 * c] for r in range(4)
                             for c in range(4)])
    # MNIST's mean grey level is 0.13; unscaled levels would clip to white: only black and white would be left.
    assert 0.08 < inputs.mean() < 0.18 and len(np.unique(inputs)) > 50


def test_frey_faces_train_resume_evaluate_and_sample_from_the_command_line(frey_data, tmp_path, capsys):
    """28x20 faces in 8 bits, one override: a model sized by the dataset, a card with its own splits and unit."""
    import math

    from PIL import Image

    workdir, data_dir = tmp_path / "frey", tmp_path / "tfds"
    tiny = ["model.latent_dim=2", "model.encoder_hidden=16", "model.decoder_hidden=16", "model.likelihood_components=2",
            "model.likelihood=logistic_mixture"]
    assert cli.main(["train", "--workdir", str(workdir), "--dataset", "frey_faces", "--config", "cs236", "--epochs",
                     "1", "--no-progress", "--manual-dir", str(frey_data / "frey_faces"), "--data-dir", str(data_dir),
                     *tiny]) == 0
    assert cli.main(["train", "--workdir", str(workdir), "--epochs", "2", "--no-progress",
                     "--data-dir", str(data_dir)]) == 0  # resumed from the cache, without the file
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir), "--iwae-samples", "5", "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["binarization"], result["units"]) == ("frey_faces", "none (8-bit)",
                                                                           "nats, bits/dim")
    assert (result["split_size"], result["num_examples"], result["train_set"]) == (200, 200,
                                                                                  "frey_faces/train (1565 examples)")
    assert result["epoch"] == 2 and result["step"] == 2 * (1565 // 100)
    assert result["nll_bpd"] == result["nll"] / (560 * math.log(2)) and 0 < result["nll_bpd"] < result["nelbo_bpd"]
    assert cli.main(["sample", "--workdir", str(workdir), "--out", str(tmp_path / "faces.png"), "--num-images", "16",
                     "--data-dir", str(data_dir)]) == 0
    with Image.open(tmp_path / "faces_reconstructions.png") as image:
        # 4 rows of 4 (input, reconstruction) pairs of 28x20 faces, a pixel between cells.
        assert image.size == (1 + 4 * 2 * (20 + 1), 1 + 4 * (28 + 1))


def test_the_scatter_of_a_2d_code_shows_the_runs_own_labelled_test_images(fashion_data, shared_data, data_dir):
    """Fashion-MNIST's garments for a Fashion-MNIST run, MNIST's digits for binarized MNIST (which has no labels),
    nothing for Frey faces (no labels, and not MNIST's shape)."""
    from vae_jax import data, readback

    def shown(name: str, manual_dir) -> tuple:
        return readback._labelled_test_images(data.describe(name), data_dir, manual_dir, shared_data / "mnist")

    images, labels = shown("fashion_mnist", fashion_data / "fashion_mnist")
    np.testing.assert_array_equal(images, data.load_split("fashion_mnist", "test", data_dir=data_dir))
    np.testing.assert_array_equal(labels, data.load_labels("test", "fashion_mnist", data_dir=data_dir))
    images, labels = shown("binarized_mnist", None)
    np.testing.assert_array_equal(images, data.load_split("mnist", "test", data_dir=data_dir))
    assert np.bincount(labels)[1] == 1135  # MNIST's test ones
    assert shown("frey_faces", None) is None
