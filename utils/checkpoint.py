"""Checkpoint files: atomic writes and safe loads (what is inside them is ``models/weights.py``'s business).

Our checkpoints hold only tensors and plain Python types, so they load with ``weights_only=True``.
Official SlotCon checkpoints pickle an ``argparse.Namespace`` under ``args``; we allow-list exactly that
class instead of ever unpickling arbitrary objects.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint that could not be written (disk full, folder removed, read-only, I/O error).

    The message is one line naming the file and the OS error. The previous file at that path is unchanged, except
    after a failed sync of the folder, when the message says that the new file is already in place.
    """


# sysexits.h EX_IOERR: the exit code of a run stopped by a checkpoint it could not write. Not 75 (EX_TEMPFAIL),
# which tells a job script to requeue: a full disk stays full.
EXIT_SAVE_FAILED = 74


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``torch.save(obj)`` to a temp file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a resume after a crash) sees either the old file or the new one, never a partial one. The new file
    has the permissions the umask gives any new file (0o644 under umask 0o022, 0o664 under 0o002), not mkstemp's
    0o600. Any OS failure raises ``CheckpointSaveError``; the old file is then intact and no temp file is left.
    The temp file is ``.NAME.PID-RANDOM.tmp`` (a kill mid-write leaves it behind; see ``RunLock.remove_stale``).
    """
    path = Path(path)
    tmp, replaced = None, False
    try:
        name = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        # os.open applies the umask (and a default ACL) to 0o666; O_EXCL never opens another writer's file.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        tmp = name
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp, replaced = None, True
        _fsync_folder(path.parent)
    except (OSError, RuntimeError) as e:
        os_error = _first_os_error(e)  # torch's writer reports a failed write as a RuntimeError
        if os_error is None:
            raise  # not a failed write: a bug (e.g. an object torch cannot save) keeps its traceback
        raise CheckpointSaveError(_save_failure(path, os_error, replaced)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


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


def _first_os_error(error: BaseException | None) -> OSError | None:
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _save_failure(path: Path, error: OSError, replaced: bool) -> str:
    reason = error.strerror or str(error)
    if error.errno in errno.errorcode:
        reason += f" [{errno.errorcode[error.errno]}]"
    if not os.path.isdir(path.parent):  # os.path's checks never raise: this runs while handling an error
        reason += f" (the folder {path.parent} no longer exists)"
    if replaced:
        return f"saved {path}, but its folder could not be synced to disk: {reason}"
    kept = f"; the previous {path.name} is unchanged" if os.path.exists(path) else ""
    return f"cannot save {path}: {reason}{kept}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (ours, or an official SlotCon one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = vars(obj["args"])
    return obj


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The model weights of a checkpoint with any DDP ``module.`` prefix removed."""
    state = checkpoint.get("model", checkpoint.get("state_dict"))
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint has no 'model' (or 'state_dict') entry")
    return {k.removeprefix("module."): v for k, v in state.items()}


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """The names (``model/module.center``, ``optimizer/state/3/mu``...) of every floating-point tensor inside
    ``obj`` (nested dicts, lists and tuples) that holds a NaN or an infinity."""
    if isinstance(obj, Tensor):
        return [prefix] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    return [
        name for key, value in items for name in nonfinite_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    ]
