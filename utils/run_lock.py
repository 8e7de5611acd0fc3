"""One run per output directory: an OS lock on ``OUTPUT_DIR/.run.lock`` for the life of the training process.

Two runs on one output directory would overwrite each other's checkpoints and logs, and a starting run would delete
the temp files of a live one's save. The lock is ``flock(2)`` on a file in the directory: the kernel releases it
when the holder exits in any way (SIGKILL included), so a killed run never blocks its own ``--auto-resume``, and
no stale lock file ever needs deleting. The holder writes who it is into the file (pid, host, start time, command),
and a second run stops with one line naming it.

Under DDP only global rank 0 takes the lock: rank 0 alone writes checkpoints, and every rank reads ``current.pth``
on a resume, so the directory is on a file system all nodes share and one lock covers the run. Every rank must
still learn the outcome, or the others would wait in their next collective for a rank 0 that has exited: see
``hold_output_dir``. The lock file is never deleted (deleting a lock file lets two runs lock two different files).

File systems without locks (Lustre mounted without ``flock``, some FUSE mounts) make ``flock`` fail with ENOLCK or
ENOTSUP: the run goes on unprotected (``RunLock.held`` is False, ``RunLock.unsupported`` says why) rather than
refusing to train, and skips what is safe only under the lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch.distributed as dist

LOCK_NAME = ".run.lock"

# Lock fds this process holds. A forked child (a DataLoader worker) closes its copy at once, so that a holder
# killed with SIGKILL frees the lock at once, not when its last worker notices and exits.
_held_fds: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _held_fds:
        os.close(fd)  # drops the child's reference only; the parent's lock stays
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLockError(RuntimeError):
    """Another live run holds the output directory; the message is one line naming it."""


class RunLock:
    """An exclusive lock on ``folder`` for this process (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False
        self.unsupported = ""
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> bool:
        """Take the lock; False (with ``unsupported`` set) where the file system has no locks.

        Raises ``RunLockError`` naming the holder if another process has it, and OSError if the lock file cannot
        be created at all (the caller checked that the folder is writable).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunLockError(self._in_use_message()) from None
            self.unsupported = (
                f"{self.path}: this file system has no locks ({e.strerror}): nothing stops a "
                f"second run from using {self.folder} at the same time"
            )
            return False
        self._fd, self.held = fd, True
        _held_fds.add(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([sys.executable, *sys.argv]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return True

    def release(self) -> None:
        """Give the lock back (the process exiting does the same)."""
        if self._fd is None or os.getpid() != self._pid:
            return
        _held_fds.discard(self._fd)
        os.close(self._fd)  # closing the last reference releases the flock
        self._fd, self.held = None, False

    def remove_stale(self, pattern: str) -> list[Path]:
        """Delete files matching ``pattern`` in the folder: leftovers of a killed holder, safe only under the lock."""
        if not self.held:
            raise RuntimeError(f"{self.folder}: not locked by this process; its temp files may be a live run's")
        removed = []
        for stale in self.folder.glob(pattern):
            stale.unlink(missing_ok=True)
            removed.append(stale)
        return removed

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _in_use_message(self) -> str:
        holder = _read_holder(self.path)
        if holder:
            command = " ".join(str(holder.get("command", "?")).split())
            if len(command) > 200:
                command = command[:197] + "..."
            who = (
                f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
                f"{command}"
            )
        else:
            who = f"a process that has not written {self.path} yet"
        return f"--output-dir {self.folder} is in use by another run ({who}); stop it or choose another --output-dir"


def _read_holder(path: Path, tries: int = 20) -> dict:
    """The holder's record; it writes it right after locking, so an empty file is retried for a moment."""
    for _ in range(tries):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def broadcast_text(text: str) -> str:
    """Rank 0's ``text`` on every rank (``text`` itself without a process group). A collective: all ranks call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def hold_output_dir(folder: str | os.PathLike, is_main: bool) -> RunLock | None:
    """Lock ``folder`` on rank 0 and tell every rank whether that worked. Call it on every rank.

    Returns rank 0's lock (None on the other ranks); raises ``RunLockError`` on every rank if another run holds
    the folder, so that all of them stop instead of waiting for an exited rank 0.
    """
    lock, error = None, ""
    if is_main:
        lock = RunLock(folder)
        try:
            lock.acquire()
        except RunLockError as e:
            error = str(e)
        except OSError as e:
            error = f"--output-dir {folder}: cannot create the lock file {lock.path} ({e.strerror})"
    error = broadcast_text(error)
    if error:
        raise RunLockError(error)
    return lock
