"""torchrun, with the changes that let a job script requeue a preempted run (used by pretrain.sh).

- Preemption signals are passed on to the workers, which save and exit 75: SIGUSR1 and SIGTERM as they are,
  Ctrl-C (SIGINT) as SIGTERM (torchrun starts each worker in a session of its own, so a terminal's Ctrl-C reaches
  this process alone; a scheduler that signals every process may reach the workers too, and two SIGINTs would stop
  a worker unsaved). A second Ctrl-C stops the workers at once, without saving (SIGKILL), and exits 130; both say
  so. Plain torchrun dies of SIGUSR1, leaving its workers on their own, and answers SIGTERM and SIGINT by stopping
  the workers itself, with SIGKILL 30 s later, whatever they were doing.
- The handlers are in place before torch is imported (seconds), and a signal that arrives before the workers
  exist reaches them as soon as they do: a preemption at any moment ends in 75, never in the default action.
- Its exit code is the workers' when all workers that failed by themselves exited with the same code, and 75 when
  this process was preempted and the workers stopped with 75 or died of the signal (during their own start-up);
  torchrun itself exits 1 on any failure, which would hide main_pretrain.py's 75 ("saved current.pth; requeue me")
  from the job script.

Everything else, arguments included, is torchrun's: ``python scripts/torchrun.py --nproc_per_node=8 main_pretrain.py``.
Restarts (``--max-restarts``) treat an exit 75 as a crash and restart the workers: leave them at 0 for runs that
should stop on SIGUSR1.
"""

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

EXIT_PREEMPTED = 75
EXIT_ABORTED = 130  # 128 + SIGINT: a second Ctrl-C
_received: list[int] = []  # the preemption signals this process got, in order
_delivered: dict[int, set[int]] = {}  # worker pid -> the signals passed on to it


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


def _pass_on() -> None:
    """Send every signal received so far to every worker that has not had it yet."""
    for pid in _children():
        for index, signum in enumerate(_received):
            if index not in _delivered.setdefault(pid, set()):
                _delivered[pid].add(index)
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # os.write: safe inside a handler that may interrupt a print
        os.write(2, f"scripts/torchrun.py: {text}\n".encode())


def _handle(signum: int, frame) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _received:
        _say("second Ctrl-C: stopping the workers now, without saving; current.pth keeps the last save")
        for pid in _children():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # each worker leads its own group: its loader workers too
        os._exit(EXIT_ABORTED)
    _received.append(signum)
    if signum == signal.SIGINT:
        _say(
            f"Ctrl-C: the workers finish their step, save current.pth and exit with {EXIT_PREEMPTED} (press Ctrl-C "
            "again to stop them at once, without saving)"
        )
    _pass_on()


def _late_delivery() -> None:
    """Workers started after a signal get it too (torchrun starts them seconds after this process)."""
    while True:
        time.sleep(0.2)
        if _received:
            _pass_on()


def exit_code(failure_codes: list[int], preempted: bool) -> int:
    """The code for the job script from the workers' exit codes (negative: killed by that signal)."""
    own = {code for code in failure_codes if code > 0}
    if preempted and own <= {EXIT_PREEMPTED}:
        return EXIT_PREEMPTED  # saved and stopped, or killed by the signal before they could handle it
    return own.pop() if len(own) == 1 else 1


if __name__ == "__main__":
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handle)
    # torchrun would replace the SIGTERM and SIGINT handlers with its own when it starts the workers (the default of
    # its --signals-to-handle, which it reads from this variable).
    os.environ["PET_SIGNALS_TO_HANDLE"] = "SIGHUP,SIGQUIT"
    threading.Thread(target=_late_delivery, daemon=True).start()

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main()
    except ChildFailedError as e:
        # Workers that exited by themselves; torchrun then stops the rest with SIGTERM (negative codes).
        sys.exit(exit_code([failure.exitcode for failure in e.failures.values()], bool(_received)))
