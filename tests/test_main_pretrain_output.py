"""main_pretrain.py and its output directory: one run per directory, and a save that cannot be written."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pretrain_helpers import ROOT, TINY, logged_iterations, make_images, run, start
from utils.checkpoint import EXIT_SAVE_FAILED

pytestmark = pytest.mark.slow
LONG = [*TINY, "--epochs", "200", "--num-workers", "0"]  # runs until the test stops it


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def _wait_for_steps(proc: subprocess.Popen, out: Path, steps: int) -> None:
    deadline = time.time() + 300
    while logged_iterations(out) < steps:
        assert proc.poll() is None, f"the run ended early (code {proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no progress in 300 s"
        time.sleep(0.05)


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no message"
    return lines[-1]


def test_a_second_run_on_a_live_output_dir_stops_naming_it_and_a_killed_one_blocks_nothing(image_dir, tmp_path):
    out = tmp_path / "run"
    first = start([*LONG, "--data-dir", str(image_dir), "--output-dir", str(out)])
    try:
        _wait_for_steps(first, out, 2)
        log_before = (out / "log.txt").read_text()
        second = run([*TINY, "--epochs", "1", "--data-dir", str(image_dir), "--output-dir", str(out), "--auto-resume"])
        assert second.returncode == 1
        message = _one_line_error(second.stderr)
        assert f"--output-dir {out} is in use by another run (pid {first.pid}" in message
        assert "main_pretrain.py" in message  # the holder's command
        assert (out / "log.txt").read_text().startswith(log_before)  # the second run wrote nothing into it
        assert "in use" not in (out / "log.txt").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel freed the dead holder's lock: --auto-resume goes on, and removes the temp file a killed save left.
    stale = out / ".current.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = run(
        [
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(image_dir),
            "--output-dir",
            str(out),
            "--auto-resume",
            "--num-workers",
            "0",
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not stale.exists()


def test_a_save_that_fails_keeps_nothing_half_written_and_exits_with_its_code(image_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "current.pth").mkdir()  # the rename onto it fails (EISDIR) as a real I/O error would
    done = run([*TINY, "--epochs", "2", "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0"])
    assert done.returncode == EXIT_SAVE_FAILED, done.stderr[-3000:]
    message = _one_line_error(done.stderr)
    assert "current.pth" in message
    assert list(out.glob(".*.tmp")) == []
    assert not (out / "ckpt_epoch_1.pth").exists()  # it stopped at the first failed save
    assert message.split("error: ", 1)[-1] in (out / "log.txt").read_text()


def test_checkpoints_take_the_umask_mode(image_dir, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'umask 002 && exec {sys.executable} main_pretrain.py "$@"',
            "-",
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(image_dir),
            "--output-dir",
            str(out),
            "--num-workers",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("current.pth", "ckpt_epoch_1.pth"):
        assert (out / name).stat().st_mode & 0o777 == 0o664, name


def test_an_output_dir_removed_mid_run_stops_it_with_one_line_and_its_code(image_dir, tmp_path):
    out = tmp_path / "run"
    proc = start([*LONG, "--data-dir", str(image_dir), "--output-dir", str(out)])
    try:
        _wait_for_steps(proc, out, 2)
        shutil.rmtree(out)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_SAVE_FAILED, stderr[-3000:]
    assert str(out) in _one_line_error(stderr)


def test_two_processes_stop_together_when_rank_0_cannot_save(image_dir, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    (out / "current.pth").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "scripts/torchrun.py",
            "--standalone",
            "--nproc_per_node=2",
            "main_pretrain.py",
            *TINY,
            "--epochs",
            "2",
            "--data-dir",
            str(image_dir),
            "--output-dir",
            str(out),
            "--num-workers",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    # Both ranks learn of the failure at the save (no rank waits forever in a collective) and exit 74.
    assert done.returncode == EXIT_SAVE_FAILED, (done.stdout + done.stderr)[-3000:]
    assert "current.pth" in done.stderr
    assert not (out / "ckpt_epoch_1.pth").exists()
