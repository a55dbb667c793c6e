"""Data parallelism: 4 CPU devices in one process, and 2 processes of 2 devices joined like 2 hosts.

Each configuration runs in fresh processes (`tests/parallel_worker.py`) because JAX fixes the device count when
it starts. Per-example keys depend on the example's index only, so every layout must follow the single-device
trajectory up to the summation order of the gradient (float32 round-off).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

WORKER = [sys.executable, str(REPO / "tests" / "parallel_worker.py")]


def _run(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single_device():
    return _result(_run("1"))


def _assert_same_trajectory(result: dict, reference: dict) -> None:
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
    np.testing.assert_allclose(result["param_sums"], reference["param_sums"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result["mean_nelbo"], reference["mean_nelbo"], rtol=1e-6)


def test_four_devices_follow_the_single_device_trajectory(single_device):
    result = _result(_run("4"))
    assert result["devices"] == 4 and result["has_all_reduce"] and not single_device["has_all_reduce"]
    # The global batch of 64 is split into 16 examples on each device.
    assert result["layout"] == [[0, 16], [16, 32], [32, 48], [48, 64]]
    _assert_same_trajectory(result, single_device)
    # Each example draws its own noise, the same on whichever device it lands.
    noise = np.asarray(result["noise"])
    np.testing.assert_allclose(noise, single_device["noise"], rtol=1e-6)
    assert len({tuple(row) for row in noise.round(6)}) == len(noise)


def test_two_hosts_dry_run(single_device):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    processes = [_run("2", str(pid), "2", port) for pid in range(2)]
    results = [_result(process) for process in processes]
    for result in results:
        assert result["process_count"] == 2 and result["devices"] == 4
        # Each host holds its own 2 devices' quarter-batches of the 64-example global batch.
        assert len(result["layout"]) == 2 and all(stop - start == 16 for start, stop in result["layout"])
        _assert_same_trajectory(result, single_device)
    assert sorted(results[0]["layout"] + results[1]["layout"]) == [[0, 16], [16, 32], [32, 48], [48, 64]]
