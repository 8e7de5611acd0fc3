"""Ending a run's process: its exit code from ``main``'s outcome, and an exit that waits on nothing."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_with_code_of(main: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> NoReturn:
    """``main(args)``, then exit with its code at once, waiting on nothing: a loader worker or a TensorBoard thread
    that a failure left behind cannot hold the process (workers die with it: ``utils.preemption.loader_worker_init``),
    and neither can a console that cannot be written (a SLURM log on the disk that just filled up)."""
    code = 1
    try:
        code = _exit_code_of(main, args)
    finally:
        for finish in (logging.shutdown, sys.stdout.flush, sys.stderr.flush):  # log.txt, then the console
            with contextlib.suppress(Exception):
                finish()
        os._exit(code)


def _exit_code_of(function: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """``function(args)``'s exit code, its message or traceback printed as the interpreter would (if it can)."""
    try:
        function(args)
    except SystemExit as e:
        if isinstance(e.code, str):  # SystemExit("message"): printed, and exit code 1
            with contextlib.suppress(OSError):
                print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # a bug: its traceback
        with contextlib.suppress(OSError):
            traceback.print_exc()
        return 1
    return 0
