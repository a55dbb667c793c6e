"""Splits larger than the device (`vae_jax.stream`): with a device memory budget smaller than binarized MNIST, both
splits stream from the host in chunks, and training, its pieces, the diagnosis of a divergence and evaluation give
the numbers of the resident splits, bit for bit."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import builders, cli, configs, data, readback, resolve, stream, train, trainer
from vae_jax.errors import ConfigError
from vae_jax.workdir import METRICS_FILE

EPOCHS = 2
SMALL = ["model.encoder_hidden=16", "model.decoder_hidden=16", "model.latent_dim=2"]  # an epoch in a few seconds
TINY = "1M"  # below either split (37.4 MiB, 7.5 MiB): both stream, in chunks of 3 steps and of one 1000-example batch
STREAMS = ("binarized_mnist/{split} ({size}) streams from the host in chunks: it exceeds the device memory budget of "
           "1.0 MiB (--device-memory-budget)")


def _config(*overrides):
    return configs.apply_overrides(configs.get_config("cs236"), [*SMALL, f"epochs={EPOCHS}", *overrides])


@pytest.fixture(scope="module")
def run_args(shared_data, data_dir):
    return {"data_dir": data_dir, "manual_dir": shared_data / "binarized_mnist", "progress": False}


@pytest.fixture(scope="module")
def resident(tmp_path_factory, run_args):
    """The small cs236 model trained for two epochs on resident splits (the default budget), and its notices."""
    workdir, messages = tmp_path_factory.mktemp("resident"), []
    trainer.fit(_config(), workdir, log=messages.append, **run_args)
    return workdir, messages


def _states(workdir):
    return [resolve.open_run(workdir, epoch=epoch)[1].state for epoch in range(1, EPOCHS + 1)]


def _metrics(workdir):
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    return [{name: value for name, value in line.items() if name != "seconds"} for line in lines]


def _assert_same_leaves(got, want):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_streamed_run_ends_with_the_parameters_of_a_resident_one(resident, run_args, tmp_path):
    workdir, notices = resident
    assert notices == []  # binarized MNIST fits the default budget
    messages = []
    # In pieces of 200 steps, which cut the chunks of 3 steps: a piece's last chunk is shorter.
    trainer.fit(_config(), tmp_path, log=messages.append, device_memory_budget=TINY, stop_check_steps=200,
                **run_args)
    assert messages == [STREAMS.format(split="train", size="37.4 MiB"),
                        STREAMS.format(split="validation", size="7.5 MiB")]
    for got, want in zip(_states(tmp_path), _states(workdir)):
        _assert_same_leaves((got.params, got.opt_state, got.step), (want.params, want.opt_state, want.step))
    assert _metrics(tmp_path) == _metrics(workdir)  # the validation too, evaluated chunk by chunk


# Steps 7..19 of the epoch's 93, in chunks of 4 steps (7..10, 11..14, 15..18, 19), or of one step where the
# learning rate of 1e4 makes the piece's second step (8) diverge: the chunks after it must not update.
def test_a_streamed_run_on_the_iwae_bound_validates_on_it_as_a_resident_one(run_args, tmp_path):
    config = _config("objective=iwae", "num_samples=3", "epochs=1")
    records = [trainer.fit(config, tmp_path / budget, log=lambda message: None, device_memory_budget=budget,
                           **run_args) for budget in ("4G", TINY)]
    assert records[0]["val_nll_bound"] < records[0]["val_nelbo"]
    assert [_metrics(tmp_path / budget) for budget in ("4G", TINY)] == [_metrics(tmp_path / "4G")] * 2


@pytest.mark.parametrize("learning_rate, chunk_steps", [("1e-3", 4), ("1e4", 1)])
def test_a_streamed_piece_of_an_epoch_is_the_resident_one(run_args, learning_rate, chunk_steps):
    config = _config(f"optim.learning_rate={learning_rate}")
    state = resolve.resolve_run(config, "unused").template_state()
    pixels = data.load_split("binarized_mnist", "train", data_dir=run_args["data_dir"],
                             manual_dir=run_args["manual_dir"], mmap=True)[:3000]
    options = {"batch_size": 32, "objective": builders.build_objective(config), "kl_weight": jnp.float32(0.5)}
    key, piece = jax.random.key(7), {"first_step": 7, "num_steps": 13}
    want = train.train_epoch_jit(state, jax.device_put(np.asarray(pixels)), key, **options,
                                 first_step=jnp.int32(7), num_steps=13)
    split = stream.Streamed(pixels, chunk_bytes=chunk_steps * 32 * 784)
    got = stream.train_epoch(state, split, key, **options, **piece)
    _assert_same_leaves(got, want)
    assert int(got[1].failed_step) == (-1 if learning_rate == "1e-3" else 8)
    with pytest.raises(ConfigError, match="first_step=90 and num_steps=13 do not fit an epoch of 93 steps"):
        stream.train_epoch(state, split, key, **options, first_step=90, num_steps=13)


def test_a_streamed_divergence_names_the_term_and_step_of_a_resident_one(resident, run_args, tmp_path, capsys):
    data_options = ["--data-dir", str(run_args["data_dir"]), "--manual-dir", str(run_args["manual_dir"])]
    errors = []
    for name, budget in (("resident", []), ("streamed", ["--device-memory-budget", TINY])):
        shutil.copytree(resident[0], tmp_path / name)
        argv = ["train", "--workdir", str(tmp_path / name), "--epochs", str(EPOCHS + 1), "--no-progress",
                *data_options, *budget, "optim.learning_rate=1e4"]
        capsys.readouterr()
        assert cli.main(argv) == 3
        errors.append(capsys.readouterr().err.splitlines()[-1])
    assert errors[0].startswith("error: ") and "non-finite" in errors[0] and f"at epoch {EPOCHS + 1}" in errors[0]
    assert errors[1] == errors[0].replace(str(tmp_path / "resident"), str(tmp_path / "streamed"))
    assert _metrics(tmp_path / "streamed")[-1] == _metrics(tmp_path / "resident")[-1]


def test_a_streamed_evaluation_is_the_resident_one_without_tensorflow(resident, run_args):
    workdir, data_dir = resident[0], str(run_args["data_dir"])
    options = {"batch_size": 768, "iwae_samples": 5, "iwae_chunk": 5, "data_dir": data_dir}  # 768: a padded last chunk
    want = readback.evaluate_checkpoint(workdir, "validation", **options)
    messages = []
    got = readback.evaluate_checkpoint(workdir, "validation", **options, device_memory_budget=TINY,
                                       log=messages.append)
    assert got == want and messages == [STREAMS.format(split="validation", size="7.5 MiB")]
    # The command line, in a fresh process: the streamed split's path imports neither TensorFlow nor TFDS.
    code = ("import sys; from vae_jax import cli; "
            f"code = cli.main(['eval', '--workdir', {str(workdir)!r}, '--split', 'validation', '--data-dir', "
            f"{data_dir!r}, '--device-memory-budget', {TINY!r}]); "
            "print(code, [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result, status = done.stdout.splitlines()
    assert status == "0 []" and done.stderr.splitlines() == [STREAMS.format(split="validation", size="7.5 MiB")]
    resident_result = readback.evaluate_checkpoint(workdir, "validation", data_dir=data_dir)
    assert json.loads(result) == json.loads(json.dumps(resident_result))


def test_a_budget_is_a_size_and_a_bad_one_is_one_line_naming_the_fix(resident, run_args, tmp_path, capsys):
    sizes = {"512M": 512 * 2**20, "2G": 2 * 2**30, "1.5g": 3 * 2**29, "64KiB": 2**16, "10MB": 10 * 2**20,
             "1048576": 2**20, "0": 0, 4096: 4096}
    assert {size: stream.parse_budget(size) for size in sizes} == sizes
    assert stream.DEFAULT_DEVICE_MEMORY_BUDGET == stream.parse_budget("4G")
    for command in ("train", "eval"):
        with pytest.raises(SystemExit):
            cli.parse_args([command, "--help"])
        assert "(default 4G;" in " ".join(capsys.readouterr().out.split())
    for bad in ("", "lots", "12X", "-1", "G", "2 G extra", -5, True, 1.5):
        with pytest.raises(ConfigError, match=r"^--device-memory-budget .* is not a size; give bytes or a number "
                                              r"with K, M, G or T \(powers of 1024\), e\.g\. 512M or 2G$"):
            stream.parse_budget(bad)
    with pytest.raises(ConfigError, match="'lots' is not a size"):
        trainer.fit(_config(), tmp_path / "python", device_memory_budget="lots", **run_args)
    data_options = ["--data-dir", str(run_args["data_dir"])]
    for argv in (["train", "--workdir", str(tmp_path / "cli"), *data_options],
                 ["eval", "--workdir", str(resident[0]), *data_options]):
        capsys.readouterr()
        assert cli.main([*argv, "--device-memory-budget", "12X"]) == 2
        assert capsys.readouterr().err == ("error: --device-memory-budget '12X' is not a size; give bytes or a number "
                                           "with K, M, G or T (powers of 1024), e.g. 512M or 2G\n")
    assert not (tmp_path / "python").exists() and not (tmp_path / "cli").exists()
