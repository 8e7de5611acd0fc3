"""A writer that fails (TensorBoard's thread, log.txt, metrics.jsonl) ends the run as a failed save does: one line,
exit 74, a final save first, and nothing left waiting (each test fails without its mechanism)."""

import errno
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from tests.pretrain_helpers import logged_iterations, make_images
from tests.test_interrupts import AS_A_USER, _session_is_gone, _start, _wait
from utils.checkpoint import EXIT_SAVE_FAILED, load_checkpoint
from utils.logger import log_file_failure, setup_logger
from utils.tensorboard import CheckedSummaryWriter


class _FullStream:
    """A log file's stream on a full disk."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        pass


def test_a_log_file_on_a_full_disk_is_kept_as_the_failure_not_printed(tmp_path, capsys):
    logger = setup_logger(tmp_path, rank=0, name="test_full_log")
    handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))
    handler.stream = _FullStream()
    logger.info("a line the disk refuses")
    logger.info("and another")
    assert log_file_failure(logger) == f"{tmp_path / 'log.txt'}: cannot write (No space left on device [ENOSPC])"
    assert "Traceback" not in capsys.readouterr().err


def test_tensorboard_failing_in_its_own_thread_is_kept_as_the_failure(tmp_path, monkeypatch):
    printed = []  # what the process's thread-exception hook is given: it would print a traceback
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.thread))
    writer = CheckedSummaryWriter(tmp_path / "tensorboard")
    writer.add_scalar("x", 1.0, 0)
    writer.flush()
    assert writer.failure == ""
    shutil.rmtree(tmp_path / "tensorboard")  # its thread reopens the event file for every event
    for step in range(1, 4):
        writer.add_scalar("x", float(step), step)
        writer.flush()
    writer.close()
    assert writer.failure.startswith(f"{tmp_path / 'tensorboard'} (TensorBoard): cannot write (No such file")
    assert printed == []  # the writer thread's own traceback is not printed


@pytest.mark.slow
def test_tensorboard_removed_mid_run_with_loader_workers_stops_with_74_after_saving(tmp_path):
    images = make_images(tmp_path / "images")
    out, err = tmp_path / "run", tmp_path / "stderr"
    proc = _start([*AS_A_USER, "--epochs", "5", "--data-dir", str(images), "--output-dir", str(out)], err)
    try:
        _wait(lambda: logged_iterations(out) >= 2, proc, "two logged iterations")
        shutil.rmtree(out / "tensorboard")
        code = proc.wait(timeout=300)  # before: tracebacks, then a hang of over ten minutes on the loader workers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = err.read_text()
    assert code == EXIT_SAVE_FAILED, stderr[-3000:]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    saved = load_checkpoint(out / "current.pth")["scheduler"]["iteration"]
    line = stderr.strip()
    assert line.startswith(
        f"error: {out / 'tensorboard'} (TensorBoard): cannot write (No such file or directory [ENOENT]); "
    ), line
    # Found mid-epoch: "saved current.pth at iteration N before stopping"; at an epoch end, after its save: "The last
    # good checkpoint is current.pth (iteration N, ...)".
    assert (
        f"{out / 'current.pth'} at iteration {saved} " in line or f"{out / 'current.pth'} (iteration {saved}," in line
    )
    assert saved == logged_iterations(out)
    assert _session_is_gone(proc.pid), "loader workers outlived the run"


@pytest.mark.slow
def test_a_bug_mid_run_with_loader_workers_and_the_console_on_a_full_disk_exits_at_once(tmp_path):
    """No exit path waits on the loader workers: before, an exception left the process joining workers that ignore
    the SIGTERM Python stops them with at exit, for ever; so did a console on a full disk (a SLURM log beside the
    output), on which printing the message raised again."""
    images = make_images(tmp_path / "images")
    full = Path("/dev/full")  # every write is ENOSPC
    flags = [*AS_A_USER, "--data-dir", str(images), "--output-dir", str(tmp_path / "run")]
    proc = _start(["-m", "tests.faults", "--bug-at", "1", "--", *flags], full, command=(), stdout=full)
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 1
    assert _session_is_gone(proc.pid), "loader workers outlived the run"
