"""A run has one writer, and every fault ends in one line with nothing lost: two trainers on one work directory,
SIGTERM (mid-epoch), SIGINT twice, a full disk during a save, a read-only work directory and a torn metrics line,
each met as a user meets it (a `train` subprocess, a real signal, a real tmpfs), then resumed to the parameters and
metrics of a straight run, bit for bit."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from vae_jax import cli, configs, resolve, trainer
from vae_jax.checkpoint import Checkpointer
from vae_jax.lock import WorkdirLock
from vae_jax.partial import PARTIAL_DIR
from vae_jax.workdir import METRICS_FILE

EPOCHS = 3


@pytest.fixture(scope="module")
def data_options(shared_data, data_dir):
    return ["--data-dir", str(data_dir), "--manual-dir", str(shared_data / "binarized_mnist")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shared_data, data_dir):
    """cs236 trained for three epochs without a fault."""
    workdir = tmp_path_factory.mktemp("straight")
    config = configs.apply_overrides(configs.get_config("cs236"), [f"epochs={EPOCHS}"])
    trainer.fit(config, workdir, data_dir=data_dir, manual_dir=shared_data / "binarized_mnist", progress=False,
                log=lambda message: None)
    return workdir


def _train(workdir, data_options, *extra, epochs=EPOCHS):
    return [sys.executable, "-m", "vae_jax", "train", "--workdir", str(workdir), "--config", "cs236", "--epochs",
            str(epochs), "--no-progress", *data_options, *extra]


def _start(argv, log):
    """`argv` in a subprocess whose stderr goes to `log`."""
    with open(log, "w") as stderr:
        return subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=stderr,
                                stdout=subprocess.DEVNULL)


def _wait_for_lock(workdir, process, timeout=300):
    """Waits until `process` holds the work directory's lock (its pid written in `.lock`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads((workdir / ".lock").read_text())["pid"] == process.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"the trainer never took the lock (exit code {process.poll()})")


def _stderr_line(log) -> str:
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _resume_and_compare(workdir, straight, data_options, tmp_path):
    """Re-runs the same command, then checks the parameters and the metrics (less the timings) against `straight`."""
    done = subprocess.run(_train(workdir, data_options), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for epoch in (EPOCHS - 1, EPOCHS):
        got, want = (resolve.open_run(path, epoch=epoch)[1].state for path in (workdir, straight))
        for a, b in zip(jax.tree.leaves((got.params, got.opt_state)), jax.tree.leaves((want.params, want.opt_state))):
            np.testing.assert_array_equal(a, b)
    assert _metrics(workdir) == _metrics(straight)
    assert not (workdir / PARTIAL_DIR).exists()


def _metrics(workdir):
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    return [{name: value for name, value in line.items() if name != "seconds"} for line in lines]


def test_a_second_trainer_is_refused_and_sigterm_stops_mid_epoch(straight, data_options, tmp_path, capsys):
    workdir, log = tmp_path / "run", tmp_path / "first.log"
    first = _start(_train(workdir, data_options, "--stop-check-steps", "20"), log)
    try:
        _wait_for_lock(workdir, first)
        argv = ["train", "--workdir", str(workdir), "--config", "cs236", "--no-progress", *data_options]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"in use by another run (pid {first.pid} on host {socket.gethostname()})" in err
        first.send_signal(signal.SIGTERM)  # while it compiles: it stops at its first check, after 20 steps
        assert first.wait(timeout=300) == 128 + signal.SIGTERM
    finally:
        first.kill()
    line = _stderr_line(log)
    assert re.fullmatch(rf"stopped by SIGTERM at step 20 of epoch 1 \(global step 20\), whose state is kept in "
                        rf"{re.escape(str(workdir / PARTIAL_DIR))}; re-run the same command to resume", line), line
    assert Checkpointer(workdir).epochs() == [] and not (workdir / METRICS_FILE).exists()
    # The epoch stopped part-way is resumed only by the same run, as an epoch's checkpoint is.
    capsys.readouterr()
    assert cli.main([*argv, "--epochs", str(EPOCHS), "model.latent_dim=20"]) == 2
    assert "holds a run whose model.latent_dim differ" in capsys.readouterr().err
    _resume_and_compare(workdir, straight, data_options, tmp_path)


def test_a_second_sigint_ends_the_run_at_once(straight, data_options, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "run.log"
    process = _start(_train(workdir, data_options), log)
    try:
        _wait_for_lock(workdir, process)
        process.send_signal(signal.SIGINT)
        caught = 1 << (signal.SIGINT - 1)  # the run's handler gives SIGINT back to the default once it has run
        status = f"/proc/{process.pid}/status"
        while process.poll() is None and int(re.search(r"SigCgt:\s*(\w+)", open(status).read())[1], 16) & caught:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == -signal.SIGINT  # killed by the signal, not stopped after a check
    finally:
        process.kill()
    _resume_and_compare(workdir, straight, data_options, tmp_path)


def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(straight, data_options, tmpfs, tmp_path):
    tmpfs.remount("size=12m")  # a cs236 checkpoint takes 7 MB: the second one does not fit
    workdir, log = tmpfs.path / "run", tmp_path / "run.log"
    done = _start(_train(workdir, data_options), log).wait(timeout=600)
    assert done == 4
    line = _stderr_line(log)
    assert line.startswith(f"error: cannot write the checkpoint of epoch 2 to {workdir / 'checkpoints'} (No space "
                           "left on device)"), line
    assert Checkpointer(workdir).epochs() == [1]
    assert not [path.name for path in (workdir / "checkpoints").iterdir() if "tmp" in path.name]
    tmpfs.remount("size=64m")
    _resume_and_compare(workdir, straight, data_options, tmp_path)


def test_a_read_only_work_directory_is_one_line_and_loses_nothing(straight, data_options, tmpfs, tmp_path):
    workdir, log = tmpfs.path / "run", tmp_path / "run.log"
    assert _start(_train(workdir, data_options, epochs=1), log).wait(timeout=600) == 0
    before = (workdir / METRICS_FILE).read_text()
    tmpfs.remount("ro")
    assert _start(_train(workdir, data_options), log).wait(timeout=600) == 4
    line = _stderr_line(log)
    assert line.startswith("error: ") and str(workdir) in line and "Read-only file system" in line, line
    assert Checkpointer(workdir).epochs() == [1] and (workdir / METRICS_FILE).read_text() == before
    tmpfs.remount("rw,size=64m")  # writable again, and with room for the next checkpoints
    _resume_and_compare(workdir, straight, data_options, tmp_path)


def test_a_torn_metrics_line_is_repaired_from_its_checkpoint(straight, shared_data, data_dir, tmp_path):
    args = {"data_dir": data_dir, "manual_dir": shared_data / "binarized_mnist", "progress": False,
            "log": lambda message: None}
    config = configs.apply_overrides(configs.get_config("cs236"), ["epochs=2"])
    trainer.fit(config, tmp_path, **args)
    whole = (tmp_path / METRICS_FILE).read_text()
    # Killed while rewriting: the line of epoch 2, whose checkpoint exists, cut short, and a stray line after it.
    lines = whole.splitlines()
    (tmp_path / METRICS_FILE).write_text(lines[0] + "\n" + lines[1][:40] + "\n" + '{"epoch": 3, "st')
    assert trainer.fit(config, tmp_path, **args) == {"epoch": 2}  # nothing to train; the file is repaired
    assert (tmp_path / METRICS_FILE).read_text() == whole
    assert _metrics(tmp_path) == _metrics(straight)[:2]


def test_readers_need_no_lock(straight, data_dir, capsys):
    with WorkdirLock(straight):  # as a running `train` holds it
        assert cli.main(["eval", "--workdir", str(straight), "--split", "validation", "--data-dir",
                         str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == Checkpointer(straight).best_epoch()
