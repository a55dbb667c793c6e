"""The persistent compilation cache: on by default, configurable, off when asked, shared safely by processes."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

COMPILE_AND_REPORT = """
import json, sys, time
import jax, jax.numpy as jnp
from vae_jax import compilation_cache
folder = compilation_cache.enable(None if sys.argv[1] == "default" else sys.argv[1])
start = time.perf_counter()
value = jax.jit(lambda x: jnp.sin(x) @ x.T + 3.0)(jnp.ones((64, 64))).sum()
print(json.dumps({"folder": None if folder is None else str(folder), "value": float(value),
                  "config": jax.config.jax_compilation_cache_dir}))
"""


def _run(argument: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", COMPILE_AND_REPORT, argument], cwd=REPO, text=True,
                            env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _report(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out)


def _entries(folder) -> list[str]:
    """The cache entries of the program of `COMPILE_AND_REPORT` (`jnp.ones` and the sum have entries of their own)."""
    return sorted(name for name in os.listdir(folder) if name.startswith("jit__lambda") and name.endswith("-cache"))


def test_on_by_default_in_the_user_cache_folder_one_folder_per_machine(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "VAE_JAX_COMPILATION_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    report = _report(_run("default", env))
    assert report["folder"].startswith(str(tmp_path / "vae_jax" / "jax")) and report["config"] == report["folder"]
    machine = os.path.basename(report["folder"])
    assert machine.split("-")[0] in ("x86_64", "aarch64", "arm64") and len(machine.split("-")[1]) == 12
    assert len(_entries(report["folder"])) == 1


def test_a_folder_from_the_environment_and_off(tmp_path):
    folder = tmp_path / "mine"
    report = _report(_run("default", {**os.environ, "VAE_JAX_COMPILATION_CACHE": str(folder)}))
    assert report["folder"] == str(folder) and len(_entries(folder)) == 1
    off = _report(_run("default", {**os.environ, "VAE_JAX_COMPILATION_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path)}))
    assert off["folder"] is None and not off["config"]
    assert not (tmp_path / "vae_jax").exists()


def test_processes_share_one_folder(tmp_path):
    """Four processes compile the same program into one folder at once: all succeed with the same result, one entry
    is written (under JAX's file lock), and a later process reads it."""
    folder = tmp_path / "shared"
    processes = [_run(str(folder), dict(os.environ)) for _ in range(4)]
    reports = [_report(process) for process in processes]
    assert len({report["value"] for report in reports}) == 1
    assert len(_entries(folder)) == 1 and (folder / ".lockfile").exists()
    assert _report(_run(str(folder), dict(os.environ)))["value"] == reports[0]["value"]


@pytest.mark.parametrize("argv_cache, written", [("off", False), ("{tmp}/cli_cache", True)])
def test_the_command_line_option(argv_cache, written, tmp_path):
    folder = tmp_path / "cli_cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "home_cache")}
    env.pop("VAE_JAX_COMPILATION_CACHE")
    done = subprocess.run([sys.executable, "-m", "vae_jax", "eval", "--workdir", str(tmp_path / "missing"),
                           "--compilation-cache", argv_cache.format(tmp=tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "does not exist" in done.stderr  # the option is read before the run fails
    assert not (tmp_path / "home_cache").exists()
    assert folder.exists() == written


def test_a_folder_that_cannot_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "vae_jax", "eval", "--workdir", str(tmp_path),
                           "--compilation-cache", str(tmp_path / "a_file" / "cache")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: cannot use {tmp_path / 'a_file' / 'cache'} as the compilation cache")
