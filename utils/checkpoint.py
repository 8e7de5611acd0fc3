"""Checkpoint files: atomic writes and safe loads (what is inside them is ``models/weights.py``'s business).

Our checkpoints hold only tensors and plain Python types, so they load with ``weights_only=True``.
Official SlotCon checkpoints pickle an ``argparse.Namespace`` under ``args``; we allow-list exactly that
class instead of ever unpickling arbitrary objects.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from utils.atomic import OutputWriteError, write_atomic


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class CheckpointSaveError(OutputWriteError):
    """A checkpoint that could not be written (disk full, folder removed, read-only, I/O error).

    The message is one line naming the file and the OS error. The previous file at that path is unchanged, except
    after a failed sync of the folder, when the message says that the new file is already in place.
    """


# sysexits.h EX_IOERR: the exit code of a run stopped by a checkpoint it could not write. Not 75 (EX_TEMPFAIL),
# which tells a job script to requeue: a full disk stays full.
EXIT_SAVE_FAILED = 74


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` by ``utils.atomic.write_atomic`` (temp file, fsync, rename).

    A reader (or a resume after a crash) sees either the old file or the new one, never a partial one. Any OS
    failure raises ``CheckpointSaveError``; the old file is then intact and no temp file is left. The temp file is
    ``.NAME.PID-RANDOM.tmp`` (a kill mid-write leaves it behind; see ``RunLock.remove_stale``).
    """
    write_atomic(path, lambda f: torch.save(obj, f), CheckpointSaveError, verb="save")


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (ours, or an official SlotCon one).

    ``mmap``: map the tensors instead of reading them (cheap when only the plain entries are wanted).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_refused_objects(path, str(e))) from None
    except Exception as e:  # torch raises several types for corrupt or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if isinstance(obj.get("args"), argparse.Namespace):
        obj["args"] = vars(obj["args"])
    return obj


def _refused_objects(path: Path, torch_message: str) -> str:
    """The one line for a file the safe loader refused. torch's own text advises loading it unsafely, which would
    run whatever code the file carries: never repeat that advice."""
    found = re.search(r"GLOBAL (\S+)", torch_message)
    what = f" ({found.group(1)})" if found else ""
    return (
        f"{path}: not a loadable checkpoint: it holds Python objects{what} that this project never writes into a "
        "checkpoint; it was not loaded, since loading such objects can run code from the file"
    )


def check_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``CheckpointError`` naming the first missing key, unexpected key or shape mismatch of ``state`` against
    ``model`` (torch's own error is several lines, the first of which names none of them). Dtypes may differ:
    loading casts float16, bfloat16 and float64 weights to the model's."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"the weights lack {missing[0]!r} ({len(missing)} of the model's tensors are missing)")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise CheckpointError(
            f"the weights hold {unexpected[0]!r}, which the model does not have ({len(unexpected)} such)"
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{key!r} is a {type(value).__name__}, not a tensor")
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{key!r} has shape {tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the model"
            )


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
