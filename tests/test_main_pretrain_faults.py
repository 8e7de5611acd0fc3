"""main_pretrain.py as a user runs it into trouble: bad flags, data that changed under a resume, a folder of
files none of which is an image (each test fails without its mechanism)."""

import pytest

from tests.pretrain_helpers import TINY, make_images, metrics, run
from utils.checkpoint import load_checkpoint
from utils.schedules import warmup_cosine_lr

pytestmark = pytest.mark.slow


def test_a_bad_flag_stops_with_one_line_before_any_work(tmp_path):
    out = tmp_path / "out"
    done = run([*TINY, "--save-freq", "0", "--data-dir", str(tmp_path), "--output-dir", str(out)])
    assert done.returncode != 0
    assert done.stderr.strip() == "--save-freq 0: must be an integer >= 1"
    assert not out.exists()


def test_resume_after_the_data_changed_stops_unless_accepted_then_continues_by_epochs(tmp_path):
    images = make_images(tmp_path / "images")  # 24 images: 3 iterations of 8 per epoch
    out = tmp_path / "run"
    common = [*TINY, "--data-dir", str(images), "--output-dir", str(out), "--epochs", "2"]
    first = run([*common, "--epochs", "1", "--num-workers", "0"])
    assert first.returncode == 0, first.stderr
    saved = (out / "current.pth").read_bytes()
    make_images(images / "more", count=16)  # now 40 images: 5 iterations per epoch

    refused = run([*common, "--auto-resume", "--num-workers", "0"])
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1, refused.stderr
    assert "3 iterations over 24 images" in line and "5 over 40" in line and "--accept-data-change" in line
    assert (out / "current.pth").read_bytes() == saved and "training done" not in refused.stdout

    # As a user runs it: TensorBoard on, loader workers.
    accepted = run([*common, "--auto-resume", "--accept-data-change", "--tensorboard", "--num-workers", "2"])
    assert accepted.returncode == 0, accepted.stderr
    assert "iteration 3 becomes 5" in accepted.stdout
    final = load_checkpoint(out / "current.pth")
    assert final["epoch"] == 2 and final["scheduler"] == {"iteration": 10, "iters_per_epoch": 5}
    assert final["args"]["num_instances"] == 40
    logged = metrics(out)
    assert sorted(logged) == [0, 1, 2, 5, 6, 7, 8, 9]  # epoch 1 as it was, then a whole epoch of the new length
    lr = warmup_cosine_lr(0.5 * 8 / 256, epochs=2, iters_per_epoch=5, warmup_epochs=1)
    for it in range(5, 10):
        assert logged[it]["lr"] == pytest.approx(lr[it], rel=1e-12)


def test_a_folder_of_only_unreadable_files_stops_with_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(12):
        (bad / f"{i:02d}.jpg").write_bytes(b"not a jpeg " * i)
    done = run(
        [
            *TINY,
            "--epochs",
            "1",
            "--data-dir",
            str(bad),
            "--output-dir",
            str(tmp_path / "out"),
            "--num-workers",
            "2",
            "--tensorboard",
            "--tb-image-freq",
            "0",
        ]
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"--data-dir {bad}" in done.stderr and "could not be read" in done.stderr
