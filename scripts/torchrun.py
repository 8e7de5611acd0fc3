"""torchrun, with two changes that let a job script requeue a preempted run (used by pretrain.sh).

- Its exit code is the workers' when all workers that failed by themselves exited with the same code; torchrun
  itself exits 1 on any failure, which would hide main_pretrain.py's 75 ("saved current.pth; requeue me") from the
  job script.
- SIGUSR1 is passed on to the workers. torchrun does not handle it, so SIGUSR1 would kill torchrun and leave its
  workers running on their own.

Everything else, arguments included, is torchrun's: ``python scripts/torchrun.py --nproc_per_node=8 main_pretrain.py``.
Restarts (``--max-restarts``) treat an exit 75 as a crash and restart the workers: leave them at 0 for runs that
should stop on SIGUSR1.
"""

import contextlib
import os
import signal
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main


def _children() -> list[int]:
    """The pids of this process's children (the workers), from /proc."""
    me, children = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # field 4, after the command in (...)
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if parent == me:
            children.append(int(stat.parent.name))
    return children


def _pass_on(signum: int, frame) -> None:
    for pid in _children():
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signum)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _pass_on)
    try:
        main()
    except ChildFailedError as e:
        # Workers that exited by themselves; torchrun then stops the rest with SIGTERM (negative codes), ignored here.
        codes = {failure.exitcode for failure in e.failures.values() if failure.exitcode > 0}
        sys.exit(codes.pop() if len(codes) == 1 else 1)
