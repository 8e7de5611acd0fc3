"""transfer/demo_table.py (`make transfer-demo`): both initialisations, both libraries, the colour rows, one table
(CPU, tiny).

With detectron2 installed, the detection rows come from detectron2's Mask R-CNN, otherwise from torchvision's;
the segmentation rows always from mmseg (needs requirements-transfer.txt, marker ``transfer``).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.transfer_helpers import one_line_exit, save_slotcon_checkpoint
from transfer import demo_table


def test_missing_checkpoint_says_to_run_make_demo(tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        demo_table.main(["--checkpoint", str(tmp_path / "current.pth"), "--out-dir", str(tmp_path / "out")])
    one_line_exit(excinfo, str(tmp_path / "current.pth"), "make demo")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--seed", "0", "1"], ["one seed per --checkpoint", "2 seeds for 1 checkpoints"]),
        (["--label-fractions", "1", "0"], ["--label-fractions", "(0, 1]", "got 0"]),
        (["--label-fractions", "1.5"], ["got 1.5"]),
        (["--num-train", "0"], ["must be positive"]),
    ],
)
def test_bad_options_are_one_line(tmp_path, argv, fragments):
    with pytest.raises(SystemExit) as excinfo:
        demo_table.main(["--checkpoint", str(tmp_path / "current.pth"), "--out-dir", str(tmp_path / "out"), *argv])
    one_line_exit(excinfo, *fragments)


def test_cells_and_folders():
    assert demo_table.spread_cell([]) == "-" and demo_table.spread_cell([2.04]) == "2.0"
    assert demo_table.spread_cell([1.0, 2.0, 6.0]) == "3.0 (1.0-6.0)"
    assert [demo_table.labels_name(f) for f in (1.0, 0.2, 0.05)] == ["labels100", "labels20", "labels5"]


@pytest.mark.transfer
def test_table_compares_random_pretrained_and_colour_on_the_demo_sets(tmp_path, capsys):
    pytest.importorskip("mmseg", reason="needs requirements-transfer.txt")
    from data.demo_scenes import SceneConfig, generate_scenes

    generate_scenes(tmp_path / "demo", SceneConfig(size=64), num_train=6, num_eval=3, workers=1)
    checkpoint = tmp_path / "current.pth"
    save_slotcon_checkpoint(checkpoint, "resnet18", seed=2)
    out = tmp_path / "table"
    argv = ["--checkpoint", str(checkpoint), "--demo-dir", str(tmp_path / "demo"), "--out-dir", str(out)]
    argv += ["--det-iters", "2", "--seg-iters", "2", "--det-batch", "2", "--seg-batch", "2", "--workers", "0"]
    # Half of the labelled scenes: 3 of --num-train 6.
    demo_table.main([*argv, "--num-train", "6", "--label-fractions", "0.5", "--seed", "3"])
    printed = capsys.readouterr().out
    rows = {
        m.group(1): [None if v == "-" else float(v) for v in m.group(2).split(" | ")]
        for m in re.finditer(
            r"^\| 3 \(50%\), (random|SlotCon|colour|colour-hist)(?:, no network)? \| ([\d. |-]+) \|$", printed, re.M
        )
    }
    assert set(rows) == {"random", "SlotCon", "colour", "colour-hist"} and all(len(v) == 3 for v in rows.values())
    runs = out / "labels50" / "seed3"
    saved = json.loads((out / "table.json").read_text())
    for init in ("random", "SlotCon"):  # the printed numbers are each run's own results, rounded
        det = json.loads((runs / f"det_{init.lower()}" / "results.json").read_text())
        seg = json.loads((runs / f"seg_{init.lower()}" / "results.json").read_text())
        ap = demo_table.average_precision
        expected = [ap(det, "bbox"), ap(det, "segm"), seg["mIoU"]]
        assert rows[init] == [round(v, 1) for v in expected]
        assert saved["rows"][f"3 (50%), {init}"]["3"]["mIoU"] == seg["mIoU"]
    for baseline in ("colour", "colour-hist"):  # segmentation only, from the project's probe on the same scenes
        probe = json.loads((runs / baseline / "results.json").read_text())
        assert rows[baseline][:2] == [None, None] and rows[baseline][2] == round(100 * probe["miou"], 1)
        assert probe["num_train_images"] == 3 and probe["num_eval_images"] == 3
    assert len(json.loads((out / "data" / "labels50" / "coco" / "train.json").read_text())["images"]) == 3
    # Only the SlotCon rows start from the converted teacher backbone.
    seg_logs = {
        init: "".join(p.read_text() for p in (runs / f"seg_{init}").rglob("*.log")) for init in ("random", "slotcon")
    }
    assert "backbone_mm.pth" in seg_logs["slotcon"] and "backbone_mm.pth" not in seg_logs["random"]
    # The first line of a run's log is its command; what follows is what the trainer itself reports.
    det_logs = {
        init: (runs / f"det_{init}" / "run.log").read_text().split("\n", 1)[1] for init in ("random", "slotcon")
    }
    weights = "backbone_d2.pkl" if saved["detector"] == "detectron2" else str(checkpoint)
    assert weights in det_logs["slotcon"] and weights not in det_logs["random"]

    # Run again: every finished run is reused, and the table is the same.
    demo_table.main([*argv, "--num-train", "6", "--label-fractions", "0.5", "--seed", "3"])
    again = capsys.readouterr().out
    assert again.count("reusing the finished run") == 6
    assert again.split("Demo transfer")[1].split("\n", 1)[1] == printed.split("Demo transfer")[1].split("\n", 1)[1]
