"""utils/run_lock.py: one run per output directory, freed by the kernel when the holder dies."""

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.run_lock import LOCK_NAME, RunLock, RunLockError

ROOT = Path(__file__).resolve().parents[1]

# A run stand-in: takes the lock, optionally forks a child that lives on (as a DataLoader worker would), then waits.
HOLDER = """
import os, sys, time
sys.path.insert(0, {root!r})
from utils.run_lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
child = 0
if sys.argv[2] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
print("locked", child, flush=True)
time.sleep(120)
"""

# A second run: what main_pretrain.py does at start (one line and exit code 1 when the folder is taken).
CONTENDER = """
import sys
sys.path.insert(0, {root!r})
from utils.run_lock import RunLockError, hold_output_dir
try:
    lock = hold_output_dir(sys.argv[1], is_main=True)
except RunLockError as e:
    raise SystemExit(str(e))
print("acquired", lock.held)
"""


def _start_holder(folder: Path, fork: bool = False) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(root=str(ROOT)), str(folder), "fork" if fork else "-"],
        stdout=subprocess.PIPE,
        text=True,
    )
    word, child = proc.stdout.readline().split()
    assert word == "locked"
    return proc, int(child)


def _contend(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CONTENDER.format(root=str(ROOT)), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_process_stops_with_one_line_naming_the_holder(tmp_path):
    holder, _ = _start_holder(tmp_path)
    try:
        second = _contend(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    line = lines[0]
    assert line.startswith(f"--output-dir {tmp_path} is in use by another run")
    assert f"pid {holder.pid} on {socket.gethostname()}" in line
    assert f"started {time.strftime('%Y-%m-%d')}" in line
    assert f"{sys.executable} -c " in line and f" {tmp_path} -" in line  # its command line


def test_sigkill_of_the_holder_frees_the_lock_at_once_even_with_forked_workers_alive(tmp_path):
    holder, child = _start_holder(tmp_path, fork=True)
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child still lives (and still has the holder's open files)...
        second = _contend(tmp_path)
        assert second.returncode == 0, second.stderr  # ...but not the lock
        assert second.stdout.strip() == "acquired True"
    finally:
        os.kill(child, signal.SIGKILL)


def test_stale_temp_files_are_removed_only_under_the_lock(tmp_path):
    (tmp_path / "current.pth").write_bytes(b"old")
    live_temp = tmp_path / ".current.pth.4242-0badcafe.tmp"  # a live run's save in flight
    live_temp.write_bytes(b"half")
    holder, _ = _start_holder(tmp_path)
    try:
        assert _contend(tmp_path).returncode == 1
        assert live_temp.exists()
        unlocked = RunLock(tmp_path)
        with pytest.raises(RunLockError):
            unlocked.acquire()
        with pytest.raises(RuntimeError, match="not locked by this process"):
            unlocked.remove_stale(".*.pth.*.tmp")
        assert live_temp.exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:  # the holder is gone: its temp file is now stale
        assert lock.remove_stale(".*.pth.*.tmp") == [live_temp]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "current.pth"]


def test_release_frees_it_and_the_file_names_the_holder(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() and lock.held
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(RunLockError, match=f"pid {os.getpid()} "):
        RunLock(tmp_path).acquire()  # a second open file description conflicts even in the same process
    lock.release()
    assert not lock.held
    again = RunLock(tmp_path)
    assert again.acquire()
    again.release()


def test_a_file_system_without_locks_runs_unprotected_and_keeps_temp_files(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunLock(tmp_path)
    assert lock.acquire() is False and not lock.held
    assert "has no locks" in lock.unsupported and "No locks available" in lock.unsupported
    with pytest.raises(RuntimeError):
        lock.remove_stale(".*.pth.*.tmp")


DDP_WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
import torch.distributed as dist
from utils.run_lock import RunLockError, hold_output_dir
dist.init_process_group("gloo")
rank = dist.get_rank()
try:
    lock = hold_output_dir(sys.argv[1], is_main=rank == 0)
except RunLockError as e:
    raise SystemExit(str(e) if rank == 0 else 1)  # one line from rank 0; the others exit quietly
print(f"rank {{rank}} holds {{lock is not None and lock.held}}", flush=True)
dist.barrier()
"""


@pytest.mark.slow
@pytest.mark.parametrize("taken", [False, True])
def test_under_torchrun_rank0_holds_it_and_no_rank_waits_when_it_is_taken(tmp_path, taken):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER.format(root=str(ROOT)))
    out = tmp_path / "out"
    out.mkdir()
    other_run = RunLock(out)
    if taken:
        other_run.acquire()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    other_run.release()
    if taken:
        assert done.returncode != 0
        message = f"--output-dir {out} is in use by another run (pid {os.getpid()} "
        assert sum(message in line for line in done.stderr.splitlines()) == 1, done.stderr
    else:
        assert done.returncode == 0, done.stderr
        said = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
        assert said == ["rank 0 holds True", "rank 1 holds False"]
