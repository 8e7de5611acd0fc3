"""Checkpoint files: atomic writes and safe loads (what is inside them is ``models/weights.py``'s business).

Our checkpoints hold only tensors and plain Python types, so they load with ``weights_only=True``.
Official SlotCon checkpoints pickle an ``argparse.Namespace`` under ``args``; we allow-list exactly that
class instead of ever unpickling arbitrary objects.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``torch.save(obj)`` to a temp file in the same folder, fsync it, then rename over ``path``.

    A reader (or a resume after a crash) sees either the old file or the new one, never a partial one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    return [name for key, value in items
            for name in nonfinite_tensors(value, f"{prefix}/{key}" if prefix else str(key))]
