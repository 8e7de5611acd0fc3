"""Preemption signals of a training process: SIGTERM, SIGUSR1 (a cluster's time limit or preemption) and SIGINT
(Ctrl-C) all ask the run to finish its step, save ``current.pth`` and exit with ``EXIT_PREEMPTED``; a second
Ctrl-C stops at once, without saving, with ``EXIT_ABORTED``.

Standard library only: ``main_pretrain.py`` installs the handlers on its first lines, before numpy and torch,
whose imports take seconds during which a signal's default action would kill the job unsaved (and a job script
that requeues only on 75 would end the job for good). A signal kept then is acted on at the first step.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a preemption signal after saving; requeue the job to continue
EXIT_ABORTED = 130  # 128 + SIGINT, the shell's code for a Ctrl-C: stopped at once, nothing saved
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def _say(text: str) -> None:
    """One line on stderr from a signal handler: os.write, since the handler may run inside a print to the same
    stream (a reentrant buffered write raises). Under torchrun only rank 0 speaks."""
    if os.environ.get("RANK", "0") == "0":
        with contextlib.suppress(OSError):
            os.write(2, (text + "\n").encode())


class Preemption:
    """Which preemption signals this process received; ``install`` makes it their handler."""

    def __init__(self) -> None:
        self.received: list[int] = []

    @property
    def raised(self) -> bool:
        return bool(self.received)

    def install(self) -> None:
        """Handle SIGTERM, SIGUSR1 and SIGINT from now on (again and again: idempotent)."""
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self.received:
            _say(
                "second Ctrl-C: stopping now without saving (exit code 130); current.pth keeps the last save, "
                "and --auto-resume continues from it"
            )
            os._exit(EXIT_ABORTED)  # loader workers die with us (loader_worker_init); a temp file is cleaned later
        self.received.append(signum)
        if signum == signal.SIGINT:
            _say(
                f"Ctrl-C: finishing this step, then saving current.pth and exiting with code {EXIT_PREEMPTED} "
                "(press Ctrl-C again to stop at once, without saving)"
            )


# The process's one record: main_pretrain.py installs it before its heavy imports, ``main`` again (idempotent).
PREEMPTION = Preemption()


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``. SLURM, ``kill -- -PGID`` and a terminal's Ctrl-C signal every process,
    loader workers included: a worker killed by the signal would make PyTorch raise in the main process before it
    saves, so workers ignore the signals and leave them to the main process. Since they then ignore the SIGTERM
    with which Python stops them at exit, they are also tied to the main process's life (the kernel kills them
    when it ends, however it ends): no exit path can wait on them."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); a no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent ended before the request: nobody would send the signal
        os._exit(1)
