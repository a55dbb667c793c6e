"""One writer per work directory: a second holder is refused in one line naming the first; a killed holder's lock
is free again at once."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vae_jax.errors import RunLockedError, StorageError
from vae_jax.lock import WorkdirLock

HOLD = "import sys, time; from vae_jax.lock import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); print('held', " \
       "flush=True); time.sleep(600)"


def _hold_in_another_process(workdir):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_run_is_refused_while_the_first_lives_and_admitted_once_it_is_killed(tmp_path):
    workdir = tmp_path / "run"
    holder = _hold_in_another_process(workdir)
    try:
        with pytest.raises(RunLockedError) as raised:
            WorkdirLock(workdir).acquire()
        assert str(raised.value) == (
            f"work directory {workdir} is in use by another run (pid {holder.pid} on host {socket.gethostname()}); "
            "wait for it to finish or stop it, or use another --workdir (eval, gaps, sample and compare need no lock)")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    # The kernel released the killed holder's lock: no stale lock to remove by hand.
    with WorkdirLock(workdir) as lock:
        assert lock.held
        assert json.loads((workdir / ".lock").read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert not lock.held


def test_one_process_cannot_hold_a_lock_twice_and_leaving_the_block_releases_it(tmp_path):
    (tmp_path / ".lock").write_text("x" * 500)  # an older holder's longer contents are replaced, not overwritten
    with pytest.raises(RuntimeError, match="training failed"):
        with WorkdirLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
            with pytest.raises(RunLockedError, match=rf"\(pid {os.getpid()} on host "):
                WorkdirLock(tmp_path).acquire()
            raise RuntimeError("training failed")
    with WorkdirLock(tmp_path):  # released on the error's way out
        pass


def test_a_holder_that_has_not_written_its_pid_yet_is_named_as_such(tmp_path):
    with WorkdirLock(tmp_path):
        (tmp_path / ".lock").write_text("")
        with pytest.raises(RunLockedError, match=r"in use by another run \(a process that has not written its pid yet"):
            WorkdirLock(tmp_path).acquire()


def test_a_read_only_work_directory_is_a_storage_error_in_one_line(tmpfs):
    tmpfs.remount("ro")
    with pytest.raises(StorageError) as raised:
        WorkdirLock(tmpfs.path / "run").acquire()
    # The missing work directory cannot be made either: named with the cause.
    assert str(raised.value) == (f"cannot create the lock file {tmpfs.path / 'run' / '.lock'} (Read-only file system); "
                                 "the run needs a writable work directory, nothing was written")
