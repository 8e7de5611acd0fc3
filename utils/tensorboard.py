"""TensorBoard for a training run whose writes may fail: ``CheckedSummaryWriter`` keeps the first failure instead of
raising it (from the caller's thread, or later from TensorBoard's own writer thread), so that the training loop
can stop the run the way a failed save does, after a final save, instead of dying with tracebacks mid-step.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from utils.atomic import describe_failure


def _quiet_writer_threads() -> None:
    """Leave a failure of TensorBoard's writer thread to ``CheckedSummaryWriter`` (it re-raises there at the next
    call and becomes the run's one line) instead of printing its traceback; other threads go to the hook before."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class CheckedSummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter``'s ``add_scalar``, ``add_images``, ``flush`` and ``close``, none of
    which raises: the first failure (a full disk, the folder removed) goes to ``failure`` and every later call is
    skipped. TensorBoard writes from a thread of its own and reports a failure there at the next call; ``flush``
    (at every epoch end) makes sure one is seen."""

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        self.log_dir = str(log_dir)
        self.failure = ""
        self._writer: Any = None
        _quiet_writer_threads()
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides what an earlier run logged from this step on (a resume redoes it).
            self._writer = SummaryWriter(self.log_dir, purge_step=purge_step)
        except Exception as e:  # a full disk fails already at the first event
            self.failure = describe_failure(f"{self.log_dir} (TensorBoard)", e)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._writer is None or self.failure:
            return
        try:
            getattr(self._writer, method)(*args, **kwargs)
        except Exception as e:  # whatever TensorBoard's writer raises, in its thread or ours
            self.failure = describe_failure(f"{self.log_dir} (TensorBoard)", e)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._call("add_scalar", tag, value, step)

    def add_images(self, tag: str, images: Any, step: int, dataformats: str = "NCHW") -> None:
        self._call("add_images", tag, images, step, dataformats=dataformats)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        """Write what is pending and stop TensorBoard's thread (a failure goes to ``failure``)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except Exception as e:
            if not self.failure:
                self.failure = describe_failure(f"{self.log_dir} (TensorBoard)", e)
