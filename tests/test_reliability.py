"""Faults a long pretraining run meets, and what must survive them (each test fails without its mechanism)."""

import argparse
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from main_pretrain import EXIT_PREEMPTED, check_args, get_args_parser
from tests.pretrain_helpers import ROOT, TINY, logged_iterations, make_images, metrics, run, run_with_faults, start
from utils.checkpoint import CheckpointError, load_checkpoint, nonfinite_tensors, save_atomic

pytestmark = pytest.mark.slow
EPOCHS_2 = [*TINY, "--epochs", "2", "--save-every-minutes", "0.0001"]  # current.pth after every step


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def uninterrupted(image_dir, tmp_path_factory):
    """Per-iteration losses and final weights of a run nobody disturbed."""
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run([*EPOCHS_2, "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0"])
    assert done.returncode == 0, done.stderr
    return out


def _kill_after(proc: subprocess.Popen, out: Path, iterations: int, sig: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if logged_iterations(out) >= iterations:
            proc.send_signal(sig)
            return
        time.sleep(0.05)
    raise AssertionError(f"the run ended (code {proc.returncode}) before {iterations} iterations were logged")


def _assert_same_run(reference: Path, resumed: Path, note: str) -> None:
    expected, got = metrics(reference), metrics(resumed)
    assert sorted(got) == sorted(expected), note
    for it, record in expected.items():
        for key in ("loss", "loss_group", "loss_slot", "lr", "momentum"):
            # Same ops on the same data in the same order on the CPU: equal up to float rounding.
            assert got[it][key] == pytest.approx(record[key], rel=1e-6, abs=1e-9), (it, key, note)
    final_a = load_checkpoint(reference / "current.pth")["model"]
    final_b = load_checkpoint(resumed / "current.pth")["model"]
    for key in (
        "module.center",
        "module.encoder_k.conv1.weight",
        "module.encoder_k.bn1.running_mean",
        "module.predictor_slot.mlp.0.weight",
        "module.grouping_k.slot_embed.weight",
    ):
        torch.testing.assert_close(final_b[key], final_a[key], rtol=1e-5, atol=1e-7)


def test_sigkill_then_auto_resume_reproduces_every_loss(image_dir, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    kill_after = random.Random().randint(1, 4)
    common = [*EPOCHS_2, "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "2"]
    proc = start(common)
    _kill_after(proc, out, kill_after, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = run([*common, "--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(uninterrupted, out, f"killed after {kill_after} logged iterations")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_and_exits_with_its_code(image_dir, uninterrupted, tmp_path, sig):
    out = tmp_path / "preempted"
    common = [*TINY, "--epochs", "2", "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0"]
    proc = start(common)  # no time-based saves: only the signal handler can save mid-epoch
    _kill_after(proc, out, 2, sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    stopped_at = load_checkpoint(out / "current.pth")["scheduler"]["iteration"]
    assert stopped_at == logged_iterations(out)  # the step in flight finished and was saved
    resumed = run([*common, "--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(uninterrupted, out, f"preempted at iteration {stopped_at}")


def test_torchrun_restarts_a_killed_worker_and_training_completes(image_dir, tmp_path):
    out = tmp_path / "elastic"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=2",
        "main_pretrain.py",
        *EPOCHS_2,
        "--epochs",
        "3",
        "--data-dir",
        str(image_dir),
        "--output-dir",
        str(out),
        "--num-workers",
        "0",
        "--auto-resume",
    ]
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while logged_iterations(out) < 2 and time.time() < deadline and agent.poll() is None:
        time.sleep(0.05)
    victim = _worker_pid(rank=1, marker=str(out))
    assert victim is not None, "no rank-1 worker found"
    os.kill(victim, signal.SIGKILL)
    try:
        output, _ = agent.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        agent.kill()
        for pid in filter(None, (_worker_pid(r, str(out)) for r in (0, 1))):
            os.kill(pid, signal.SIGKILL)
        raise
    assert agent.returncode == 0, output[-3000:]
    final = load_checkpoint(out / "current.pth")
    assert final["epoch"] == 3 and final["scheduler"]["iteration"] == 9
    assert "resumed from" in (out / "log.txt").read_text()
    assert sorted(metrics(out)) == list(range(9))


def _worker_pid(rank: int, marker: str) -> int | None:
    """The pid of the main_pretrain worker with RANK=rank whose command line holds ``marker`` (from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        is_worker = b"main_pretrain.py" in cmdline and b"torch.distributed.run" not in cmdline
        if is_worker and marker.encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_unreadable_images_are_skipped_and_too_many_stop_the_run(tmp_path):
    images = make_images(tmp_path / "mixed", count=40)
    (images / "part0" / "empty.jpg").write_bytes(b"")
    (images / "part1" / "text.jpg").write_text("not an image")
    good = (images / "part0" / "000.jpg").read_bytes()
    (images / "part1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    few = run(
        [
            *TINY,
            "--epochs",
            "2",
            "--data-dir",
            str(images),
            "--output-dir",
            str(tmp_path / "few"),
            "--num-workers",
            "2",
            "--max-bad-image-fraction",
            "0.5",
        ]
    )
    assert few.returncode == 0, few.stderr
    log = (tmp_path / "few" / "log.txt").read_text()
    assert "skipping unreadable image" in few.stderr + log or "unreadable images skipped" in log
    assert "empty.jpg" in log and "text.jpg" in log

    bad = tmp_path / "bad"
    for i in range(30):
        (bad / "x").mkdir(parents=True, exist_ok=True)
        (bad / "x" / f"{i}.jpg").write_bytes(b"\xff\xd8 garbage" * i)
    make_images(bad / "ok", count=10)
    stopped = run(
        [
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(bad),
            "--output-dir",
            str(tmp_path / "stop"),
            "--num-workers",
            "0",
            "--max-bad-image-fraction",
            "0.01",
        ]
    )
    assert stopped.returncode != 0
    assert "were unreadable" in stopped.stderr and "Traceback" not in stopped.stderr
    # Saved first, as for a preemption: the steps trained before the limit are not lost.
    saved = load_checkpoint(tmp_path / "stop" / "current.pth")["scheduler"]["iteration"]
    assert saved >= 1 and f"saved {tmp_path / 'stop' / 'current.pth'} at iteration {saved}" in stopped.stderr


def test_nonfinite_losses_and_updates_are_undone_and_too_many_stop(image_dir, tmp_path):
    out = tmp_path / "nan"
    common = [*TINY, "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "0", "--save-freq", "1"]
    # Epoch 1 trains normally; every step of epoch 2 (iterations 3-5) is poisoned: NaN losses at 3 and 5, and at 4
    # a finite loss whose update (an infinite learning rate) leaves the weights and the optimizer non-finite.
    done = run_with_faults([*common, "--epochs", "2"], nan_loss_at=[3, 5], inf_lr_at=[4])
    assert done.returncode == 0, done.stderr
    log = (out / "log.txt").read_text()
    assert log.count("non-finite loss; the step was undone") == 2
    assert log.count("non-finite update (the loss was finite); the step was undone") == 1
    after_1 = load_checkpoint(out / "ckpt_epoch_1.pth")
    after_2 = load_checkpoint(out / "ckpt_epoch_2.pth")
    for key, value in after_1["model"].items():  # no step, no EMA, and the centre and BN statistics as before
        torch.testing.assert_close(after_2["model"][key], value, rtol=0, atol=0, msg=key)
    for state_1, state_2 in zip(
        after_1["optimizer"]["state"].values(), after_2["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(state_1["mu"], state_2["mu"])

    # As a user runs it: TensorBoard on, loader workers.
    stop = run_with_faults(
        [
            *common,
            "--epochs",
            "3",
            "--auto-resume",
            "--max-nonfinite-steps",
            "2",
            "--tensorboard",
            "--num-workers",
            "2",
        ],
        inf_lr_at=[6, 7],
    )
    assert stop.returncode != 0
    assert "2 non-finite steps in a row" in stop.stderr and "Traceback" not in stop.stderr
    named = re.search(r"The last good checkpoint is (\S+) ", stop.stderr)
    assert named and Path(named.group(1)) == out / "current.pth", stop.stderr
    last_good = load_checkpoint(out / "current.pth")
    assert last_good["epoch"] == 2 and not nonfinite_tensors(last_good)


def _saver(path: str, big: bool, atomic: bool) -> None:
    payload = {"model": {f"w{i}": torch.full((256, 1024), float(i)) for i in range(40 if big else 1)}}
    save = save_atomic if atomic else torch.save
    save(payload, path)  # one complete file first: what is judged is only what a kill mid-write leaves
    print("saving", flush=True)
    while True:
        save(payload, path)


def _kill_savers(tmp_path: Path, atomic: bool, rounds: int = 12) -> int:
    """Kill a process that keeps saving, at random moments; count how often the file was unreadable after."""
    path = tmp_path / ("atomic.pth" if atomic else "plain.pth")
    broken = 0
    rng = random.Random(0)
    for _ in range(rounds):
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_reliability import _saver; "
            f"_saver({str(path)!r}, True, {atomic})"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        try:
            load_checkpoint(path)
        except CheckpointError:
            broken += 1
    return broken


def test_checkpoints_survive_a_kill_mid_save(tmp_path):
    assert _kill_savers(tmp_path, atomic=False) > 0  # the kills do land mid-write...
    assert _kill_savers(tmp_path, atomic=True) == 0  # ...and the atomic writer never leaves a broken file


def test_keep_last_prunes_old_epoch_files(image_dir, tmp_path):
    out = tmp_path / "keep"
    done = run(
        [
            *TINY,
            "--epochs",
            "4",
            "--save-freq",
            "1",
            "--keep-last",
            "2",
            "--data-dir",
            str(image_dir),
            "--output-dir",
            str(out),
            "--num-workers",
            "0",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("ckpt_epoch_*.pth")) == ["ckpt_epoch_3.pth", "ckpt_epoch_4.pth"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_runs_no_pickled_code_but_reads_official_checkpoints(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": _Exploit(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    # An official checkpoint pickles an argparse.Namespace: allowed, and turned into a dict.
    official = tmp_path / "official.pth"
    torch.save({"model": {"module.center": torch.zeros(1, 4)}, "args": argparse.Namespace(arch="resnet50")}, official)
    assert load_checkpoint(official)["args"] == {"arch": "resnet50"}
    with pytest.raises(pickle.UnpicklingError):  # plain torch.load would refuse it too: we never pass False
        torch.load(evil, weights_only=True)


@pytest.mark.parametrize(
    "flags, world, message",
    [
        (["--batch-size", "10"], 4, "not divisible by the 4 processes"),
        (["--image-size", "100"], 1, "multiple of --output-stride 32"),
        (["--image-size", "100", "--output-stride", "8"], 1, "multiple of --output-stride 8"),
    ],
)
def test_bad_flags_are_rejected_before_work(flags, world, message, tmp_path):
    args = get_args_parser().parse_args([*flags, "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=message):
        check_args(args, world)


def test_bad_paths_and_checkpoints_give_one_line_errors(image_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o1")], "no such directory"),
        (["--data-dir", str(image_dir), "--output-dir", str(a_file / "sub")], "not writable"),
        (
            ["--data-dir", str(image_dir), "--output-dir", str(tmp_path / "o2"), "--resume", str(a_file)],
            "not a loadable checkpoint",
        ),
    ]
    trained = tmp_path / "r18"
    assert (
        run(
            [*TINY, "--epochs", "1", "--data-dir", str(image_dir), "--output-dir", str(trained), "--num-workers", "0"]
        ).returncode
        == 0
    )
    cases.append(
        (
            ["--data-dir", str(image_dir), "--output-dir", str(trained), "--auto-resume", "--arch", "resnet34"],
            "trained with --arch resnet18",
        )
    )
    for flags, message in cases:
        done = run([*TINY, "--epochs", "1", "--num-workers", "0", *flags])
        assert done.returncode != 0
        assert message in done.stderr, (flags, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_whole_process_group_saves_despite_loader_workers(image_dir, tmp_path, sig):
    # SLURM (--signal, scancel) and `kill -- -PGID` signal the loader workers too; one killed by it made PyTorch
    # raise in the main process ("DataLoader worker ... is killed by signal: Terminated") before it could save.
    out = tmp_path / "group"
    proc = subprocess.Popen(
        [
            sys.executable,
            "main_pretrain.py",
            *TINY,
            "--epochs",
            "50",
            "--data-dir",
            str(image_dir),
            "--output-dir",
            str(out),
            "--num-workers",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while logged_iterations(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED and "Traceback" not in stderr, stderr[-3000:]
    assert load_checkpoint(out / "current.pth")["scheduler"]["iteration"] >= 2
