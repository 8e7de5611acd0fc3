"""Writing an output file whole or not at all: ``write_atomic`` (temp file, fsync, rename) for every file the
project produces (checkpoints, pictures, JSON, converted weights), and ``check_writable`` to find out before a
long computation that the result could not be written.

Standard library only, so any layer (and any tool) can use it. Failures are ``OutputWriteError``s whose message
is one line naming the file and the OS error; the previous file at that path, if any, is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class OutputWriteError(RuntimeError):
    """An output file that could not be written (disk full, folder removed, read-only, I/O error); one line."""


def os_error_reason(error: OSError) -> str:
    """``No space left on device [ENOSPC]``: the OS's text and the errno's name, which users search for."""
    reason = error.strerror or str(error)
    if error.errno in errno.errorcode:
        reason += f" [{errno.errorcode[error.errno]}]"
    return reason


def first_os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error`` (itself, or its cause or context): torch's writer wraps a failed write in a
    RuntimeError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def describe_failure(what: str, error: BaseException) -> str:
    """One line for a failed write: ``what: cannot write (No space left on device [ENOSPC])``."""
    os_error = first_os_error(error)
    if os_error is not None:
        reason = os_error_reason(os_error)
    else:
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"{what}: cannot write ({reason})"


def temp_name(path: Path) -> Path:
    """``.NAME.PID-RANDOM.tmp`` beside ``path``: hidden, unique, and matched by the run's stale-file cleanup."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    error_type: type[OutputWriteError] = OutputWriteError,
    verb: str = "write",
) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a resume after a crash) sees the old file or the new one, never a part. The new file gets the
    permissions the umask gives any new file (0o644 under umask 0o022), not mkstemp's 0o600. An OS failure raises
    ``error_type`` ("cannot VERB PATH: reason"); the old file is then intact and no temp file is left. An error
    that is not the disk's (an object that cannot be serialised: a bug) keeps its own type and traceback.
    """
    path = Path(path)
    tmp, replaced = None, False
    try:
        name = temp_name(path)
        # os.open applies the umask (and a default ACL) to 0o666; O_EXCL never opens another writer's file.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp, replaced = None, True
        _fsync_folder(path.parent)
    except (OSError, RuntimeError) as e:
        os_error = first_os_error(e)
        if os_error is None:
            raise
        raise error_type(_failure(path, os_error, replaced, verb)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``write_atomic`` of UTF-8 text (JSON, Markdown)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` itself, after checking that a file can be written there now: the folder exists, is writable and
    has room for a byte (a probe file, removed again). ``OutputWriteError`` (one line) otherwise.

    Call it before a long computation whose result goes to ``path``: a full or read-only disk then costs seconds,
    not the computation. A disk can still fill up meanwhile; ``write_atomic`` then fails cleanly.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputWriteError(f"cannot write {path}: it is a folder; give a file name")
    if not path.parent.is_dir():
        raise OutputWriteError(f"cannot write {path}: the folder {path.parent} does not exist")
    probe = temp_name(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"\0")  # a full disk refuses the first byte; creating an empty file may still succeed
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {os_error_reason(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Some network file systems cannot fsync a folder (EINVAL): nothing to do there."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(dir_fd)


def _failure(path: Path, error: OSError, replaced: bool, verb: str) -> str:
    reason = os_error_reason(error)
    if not os.path.isdir(path.parent):  # os.path's checks never raise: this runs while handling an error
        reason += f" (the folder {path.parent} no longer exists)"
    if replaced:
        done = "saved" if verb == "save" else "wrote"
        return f"{done} {path}, but its folder could not be synced to disk: {reason}"
    kept = f"; the previous {path.name} is unchanged" if os.path.exists(path) else ""
    return f"cannot {verb} {path}: {reason}{kept}"
