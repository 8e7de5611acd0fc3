"""Interruptions as a user and a cluster deliver them, with the defaults a user gets (TensorBoard on, loader
workers): Ctrl-C to the whole process group is a preemption (save, exit 75) and a resume logs every iteration
once; a second Ctrl-C stops at once and says so; a preemption signal during start-up (while torch is imported)
still ends in 75, in main_pretrain.py and in scripts/torchrun.py. Each test fails without its mechanism."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pretrain_helpers import ROOT, TINY, logged_iterations, make_images, run
from utils.checkpoint import load_checkpoint
from utils.preemption import EXIT_ABORTED, EXIT_PREEMPTED

pytestmark = pytest.mark.slow
AS_A_USER = [*TINY[: TINY.index("--no-tensorboard")], "--tensorboard", "--num-workers", "2", "--epochs", "2"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def _start(
    args: list[str], stderr: Path, command: tuple[str, ...] = ("main_pretrain.py",), stdout: Path | None = None
) -> subprocess.Popen:
    """A run in its own session (its process group is what a terminal's Ctrl-C reaches), stderr to a file."""
    with open(stderr, "w") as err, open(stdout or os.devnull, "w") as out:
        return subprocess.Popen(
            [sys.executable, *command, *args], cwd=ROOT, stdout=out, stderr=err, start_new_session=True
        )


def _wait(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {what}"
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.02)


def _session_is_gone(session: int, timeout: float = 10) -> bool:
    """Whether every process of the session (the run and its loader workers) has ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # field 6: session id
                alive.append(stat.parent.name)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_to_the_process_group_saves_exits_75_and_the_resume_logs_each_iteration_once(image_dir, tmp_path):
    out, err = tmp_path / "run", tmp_path / "stderr"
    common = [*AS_A_USER, "--epochs", "1", "--data-dir", str(image_dir), "--output-dir", str(out)]
    proc = _start(common, err)
    _wait(lambda: logged_iterations(out) >= 1, proc, "a logged iteration")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the run and its loader workers
    assert proc.wait(timeout=300) == EXIT_PREEMPTED, err.read_text()[-3000:]
    stderr = err.read_text()
    assert "Traceback" not in stderr and "Ctrl-C: finishing this step" in stderr, stderr[-3000:]
    saved = load_checkpoint(out / "current.pth")["scheduler"]["iteration"]
    assert saved == logged_iterations(out)  # the step in flight finished, was logged and saved
    assert "preempted: saved" in (out / "log.txt").read_text()

    # What a run killed after logging one more step (before its next save) leaves behind.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": saved, "epoch": 0, "loss": 0.0}) + "\n")
    resumed = run([*common, "--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(3))
    assert json.loads((out / "metrics.discarded.jsonl").read_text())["loss"] == 0.0


def test_a_second_ctrl_c_stops_at_once_and_says_so(image_dir, tmp_path):
    out, err = tmp_path / "run", tmp_path / "stderr"
    proc = _start([*AS_A_USER, "--data-dir", str(image_dir), "--output-dir", str(out)], err)
    _wait(lambda: logged_iterations(out) >= 1, proc, "a logged iteration")
    os.killpg(proc.pid, signal.SIGINT)
    _wait(lambda: "Ctrl-C: finishing this step" in err.read_text(), proc, "the first Ctrl-C's message", 60)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == EXIT_ABORTED
    stderr = err.read_text()
    assert "second Ctrl-C: stopping now without saving" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert _session_is_gone(proc.pid), "loader workers outlived the run"


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (sig - 1) & 1)


def _importing_numpy_or_torch(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "numpy" in maps or "torch" in maps


def _signal_during_start_up(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` as soon as the process handles it, and at the latest once it loads numpy or torch (whose imports
    take seconds): a handler installed only after them is too late, and the signal's default action kills it."""
    _wait(lambda: _catches(proc.pid, sig) or _importing_numpy_or_torch(proc.pid), proc, "start-up", 60)
    os.kill(proc.pid, sig)


def test_a_preemption_signal_during_start_up_ends_in_75(image_dir, tmp_path):
    out, err = tmp_path / "run", tmp_path / "stderr"
    proc = _start([*AS_A_USER, "--epochs", "1", "--data-dir", str(image_dir), "--output-dir", str(out)], err)
    _signal_during_start_up(proc, signal.SIGUSR1)
    assert proc.wait(timeout=300) == EXIT_PREEMPTED, err.read_text()[-3000:]
    assert load_checkpoint(out / "current.pth")["scheduler"]["iteration"] == 1  # kept, acted on at the first step


def test_torchrun_keeps_a_signal_from_its_start_up_for_its_workers(tmp_path):
    worker = tmp_path / "worker.py"  # a worker that would run 60 s unless a preemption signal reaches it
    worker.write_text("import time\ntime.sleep(60)\n")
    err = tmp_path / "stderr"
    proc = _start(
        ["--standalone", "--nproc_per_node=1", str(worker)], err, command=(str(ROOT / "scripts" / "torchrun.py"),)
    )
    started = time.time()
    _signal_during_start_up(proc, signal.SIGUSR1)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED, err.read_text()[-3000:]
    assert time.time() - started < 50  # the worker got the signal; it did not sleep its minute out


WORKER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from utils.preemption import EXIT_PREEMPTED, PREEMPTION
PREEMPTION.install()
Path({ready!r}).write_text(str(os.getpid()))
while not PREEMPTION.raised:
    time.sleep(0.05)
Path({saving!r}).touch()
time.sleep(float(sys.argv[1]))  # the step and the save
sys.exit(EXIT_PREEMPTED)  # as main_pretrain.py does after its save
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_under_scripts_torchrun_is_a_preemption_and_a_second_one_stops_at_once(tmp_path, presses):
    worker, ready, saving, err = tmp_path / "worker.py", tmp_path / "ready", tmp_path / "saving", tmp_path / "stderr"
    worker.write_text(WORKER.format(root=str(ROOT), ready=str(ready), saving=str(saving)))
    save_seconds = "0" if presses == 1 else "60"
    torchrun = (str(ROOT / "scripts" / "torchrun.py"),)
    proc = _start(["--standalone", "--nproc_per_node=1", str(worker), save_seconds], err, command=torchrun)
    _wait(ready.exists, proc, "the worker", 120)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
    if presses == 2:
        _wait(saving.exists, proc, "the worker's save", 60)
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=45) == (EXIT_PREEMPTED if presses == 1 else EXIT_ABORTED), err.read_text()[-3000:]
    stderr = err.read_text()
    assert "Traceback" not in stderr  # before: torchrun's own handler raised SignalException
    assert "Ctrl-C: the workers finish their step" in stderr
    if presses == 2:
        assert "second Ctrl-C: stopping the workers now, without saving" in stderr
        assert _session_is_gone(int(ready.read_text()))  # the worker leads a session of its own
