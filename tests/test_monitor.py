"""eval/monitor.py end to end: TensorBoard pictures and the online evaluation, with TensorBoard on (the
default, with loader workers) and off."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from data.demo_scenes import generate_scenes
from tests.pretrain_helpers import TINY, make_images, run

pytestmark = pytest.mark.slow
DEFAULTS = [a for a in TINY if a != "--no-tensorboard"]  # TensorBoard on, --num-workers at its default
EVAL_KEYS = ("seg_hungarian_miou", "seg_hungarian_acc", "seg_majority_miou", "seg_majority_acc")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    images = make_images(root / "images", count=24)
    # First in sort order, so among the pictured images; unreadable, and its name is not valid UTF-8.
    Path(os.fsdecode(os.fsencode(images) + b"/a\xff.jpg")).write_bytes(b"not an image")
    scenes = root / "scenes"
    generate_scenes(scenes, num_train=2, num_eval=4, size=64, seed=0, workers=1)
    return images, scenes


def _logged_scores(log: str) -> dict[str, float]:
    line = re.search(r"eval after epoch 1: (.*)", log)
    assert line, log
    return {k: float(v) for k, v in (part.split(" ") for part in line.group(1).split(", "))}


def test_defaults_write_pictures_and_eval_scalars_to_tensorboard(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images, scenes = data
    out = tmp_path / "run"
    done = run(
        [
            *DEFAULTS,
            "--data-dir",
            str(images),
            "--epochs",
            "1",
            "--output-dir",
            str(out),
            "--eval-data",
            str(scenes),
            "--eval-freq",
            "1",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "TensorBoard pictures: leaving out" in log and "a\\xff.jpg: cannot read image" in log

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "teacher/assignments" in events.Tags()["images"]
    picture = events.Images("teacher/assignments")[-1]
    # 8 images are picked, the unreadable one is left out: 7 images of 64 x (64 image + 64 map) in a row.
    assert (picture.height, picture.width) == (64, 7 * 128)
    logged = _logged_scores(log)
    assert set(logged) == set(EVAL_KEYS)
    for key in EVAL_KEYS:
        value = events.Scalars(f"eval/{key}")[-1].value
        assert 0.0 <= value <= 1.0 and value == pytest.approx(logged[key], abs=1e-4)


def test_without_tensorboard_the_scores_reach_the_log(data, tmp_path):
    images, scenes = data
    out = tmp_path / "run"
    done = run(
        [
            *TINY,
            "--data-dir",
            str(images),
            "--epochs",
            "1",
            "--output-dir",
            str(out),
            "--num-workers",
            "0",
            "--eval-data",
            str(scenes),
            "--eval-freq",
            "1",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert not (out / "tensorboard").exists()
    scores = _logged_scores((out / "log.txt").read_text(encoding="utf-8"))
    assert set(scores) == set(EVAL_KEYS) and all(0.0 <= v <= 1.0 for v in scores.values())


def test_eval_data_that_is_no_demo_dataset_is_one_line(data, tmp_path):
    images, _ = data
    (tmp_path / "nothing").mkdir()  # a folder, but no demo scenes in it (a missing one is a flag check)
    done = run(
        [
            *TINY,
            "--data-dir",
            str(images),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path / "run"),
            "--num-workers",
            "0",
            "--eval-data",
            str(tmp_path / "nothing"),
        ]
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--eval-data: no demo dataset at" in done.stderr


def test_assignment_picture_is_each_image_beside_its_overlay():
    import torch
    import torch.nn.functional as F

    from eval.monitor import Monitor
    from eval.visualize import assignment_overlay, normalize, prototype_palette
    from models import SlotCon, SlotConTeacher

    torch.manual_seed(0)
    teacher = SlotConTeacher.from_slotcon(SlotCon("resnet18", dim_hidden=32, dim_out=16, num_prototypes=6)).eval()
    monitor = Monitor(None, np.array([]), 64, torch.device("cpu"), 0, None, 0)
    monitor.images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        picture = monitor.assignment_picture(teacher)
        dots = teacher(normalize(monitor.images, torch.device("cpu")))
    labels = F.interpolate(dots, size=(64, 64), mode="bilinear", align_corners=False).argmax(dim=1).numpy()
    assert picture.shape == (2, 64, 128, 3) and picture.dtype == np.uint8
    for i in range(2):
        np.testing.assert_array_equal(picture[i, :, :64], monitor.images[i])
        np.testing.assert_array_equal(
            picture[i, :, 64:], assignment_overlay(monitor.images[i], labels[i], prototype_palette(6))
        )
