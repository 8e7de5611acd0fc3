"""utils/checkpoint.py save_atomic: a failed save says why in one line and leaves the previous file intact."""

import errno
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.unprivileged import error_as_unprivileged
from utils.checkpoint import CheckpointSaveError, load_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parents[1]
NEW = {"model": {"w": torch.arange(50_000, dtype=torch.float32)}}
REAL_FDOPEN = os.fdopen


@pytest.fixture
def previous(tmp_path) -> Path:
    """An output folder holding a good ``current.pth``."""
    path = tmp_path / "out" / "current.pth"
    path.parent.mkdir()
    save_atomic({"model": {"w": torch.zeros(3)}}, path)
    return path


def _assert_failed_cleanly(error: CheckpointSaveError, path: Path, old_bytes: bytes | None, reason: str) -> None:
    message = str(error)
    assert "\n" not in message and str(path) in message and reason in message, message
    if old_bytes is not None:
        assert path.read_bytes() == old_bytes
        assert "the previous current.pth is unchanged" in message
        assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    if path.parent.is_dir():
        assert sorted(p.name for p in path.parent.iterdir()) == (["current.pth"] if old_bytes is not None else [])


class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, fd: int, room: int) -> None:
        self.file, self.room = REAL_FDOPEN(fd, "wb"), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()
        super().close()


def _fail(exc_errno: int):
    def failing(*args, **kwargs):
        raise OSError(exc_errno, os.strerror(exc_errno))

    return failing


@pytest.mark.parametrize(
    "where, reason",
    [
        ("write", "No space left on device [ENOSPC]"),
        ("first write", "No space left on device [ENOSPC]"),
        ("fsync", "Input/output error [EIO]"),
        ("replace", "No space left on device [ENOSPC]"),
    ],
)
def test_an_injected_os_failure_keeps_the_previous_file(previous, monkeypatch, where, reason):
    old = previous.read_bytes()
    if where == "write":  # the disk fills up in the middle of the tensors
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fd, room=100_000))
    elif where == "first write":
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fd, room=0))
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _fail(errno.EIO))
    else:
        monkeypatch.setattr(os, "replace", _fail(errno.ENOSPC))
    with pytest.raises(CheckpointSaveError) as failure:
        save_atomic(NEW, previous)
    monkeypatch.undo()
    _assert_failed_cleanly(failure.value, previous, old, reason)


def test_a_real_file_size_limit_mid_write_keeps_the_previous_file(previous):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG), as it would on a full disk (ENOSPC)."""
    old = previous.read_bytes()
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
import torch
from utils.checkpoint import CheckpointSaveError, save_atomic
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
    save_atomic({{"model": {{"w": torch.arange(50_000, dtype=torch.float32)}}}}, {str(previous)!r})
except CheckpointSaveError as e:
    raise SystemExit(str(e))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    _assert_failed_cleanly(CheckpointSaveError(done.stderr.strip()), previous, old, "File too large [EFBIG]")


def test_a_removed_output_folder_is_named(previous):
    folder = previous.parent
    previous.unlink()
    folder.rmdir()
    with pytest.raises(CheckpointSaveError) as failure:
        save_atomic(NEW, previous)
    _assert_failed_cleanly(
        failure.value, previous, None, f"No such file or directory [ENOENT] (the folder {folder} no longer exists)"
    )


def test_a_read_only_output_folder_keeps_the_previous_file():
    shared = Path(tempfile.mkdtemp(prefix="slotcon-ro-"))  # not under pytest's folders, which only root may enter
    try:
        shared.chmod(0o755)
        previous = shared / "current.pth"
        save_atomic({"model": {"w": torch.zeros(3)}}, previous)
        old = previous.read_bytes()
        shared.chmod(0o555)
        message = error_as_unprivileged(lambda: save_atomic(NEW, previous), CheckpointSaveError)
        shared.chmod(0o755)
        _assert_failed_cleanly(CheckpointSaveError(message), previous, old, "Permission denied [EACCES]")
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old_umask = os.umask(umask)
    try:
        save_atomic(NEW, tmp_path / "current.pth")
        (tmp_path / "plain").touch()  # what any program makes under this umask
    finally:
        os.umask(old_umask)
    mode = (tmp_path / "current.pth").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain").stat().st_mode & 0o777
    assert torch.equal(load_checkpoint(tmp_path / "current.pth")["model"]["w"], NEW["model"]["w"])


def test_an_object_torch_cannot_save_is_a_bug_not_a_save_failure(previous):
    old = previous.read_bytes()
    with pytest.raises(Exception) as failure:
        save_atomic({"f": lambda: None}, previous)
    assert not isinstance(failure.value, CheckpointSaveError)
    assert previous.read_bytes() == old and sorted(p.name for p in previous.parent.iterdir()) == ["current.pth"]
