"""transfer/demo_table.py (`make transfer-demo`): both initialisations, both libraries, one table (CPU, tiny).

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


@pytest.mark.transfer
def test_table_compares_random_and_pretrained_on_the_demo_sets(tmp_path, capsys):
    pytest.importorskip("mmseg", reason="needs requirements-transfer.txt")
    from data.demo_scenes import generate_scenes

    generate_scenes(tmp_path / "demo", num_train=6, num_eval=3, size=64, workers=1)
    checkpoint = tmp_path / "current.pth"
    save_slotcon_checkpoint(checkpoint, "resnet18", seed=2)
    out = tmp_path / "table"
    demo_table.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--demo-dir",
            str(tmp_path / "demo"),
            "--out-dir",
            str(out),
            "--det-iters",
            "2",
            "--seg-iters",
            "2",
            "--det-batch",
            "2",
            "--seg-batch",
            "2",
            "--workers",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    rows = {
        m.group(1): [float(v) for v in m.group(2).split(" | ")]
        for m in re.finditer(r"^\| (random|SlotCon) \| ([\d. |]+) \|$", printed, flags=re.M)
    }
    assert set(rows) == {"random", "SlotCon"} and all(len(v) == 3 for v in rows.values())
    saved = json.loads((out / "table.json").read_text())
    for init, values in rows.items():  # the printed numbers are each run's own results, rounded
        det = json.loads((out / f"det_{init.lower()}" / "results.json").read_text())
        seg = json.loads((out / f"seg_{init.lower()}" / "results.json").read_text())
        ap = demo_table.average_precision
        expected = [ap(det, "bbox"), ap(det, "segm"), seg["mIoU"]]
        assert values == [round(v, 1) for v in expected]
        assert saved["rows"][init]["mIoU"] == seg["mIoU"]
    # Only the SlotCon rows start from the converted teacher backbone.
    seg_logs = {
        init: "".join(p.read_text() for p in (out / f"seg_{init}").rglob("*.log")) for init in ("random", "slotcon")
    }
    assert "backbone_mm.pth" in seg_logs["slotcon"] and "backbone_mm.pth" not in seg_logs["random"]
    # The first line of a run's log is its command; what follows is what the trainer itself reports.
    det_logs = {init: (out / f"det_{init}" / "run.log").read_text().split("\n", 1)[1] for init in ("random", "slotcon")}
    weights = "backbone_d2.pkl" if saved["detector"] == "detectron2" else str(checkpoint)
    assert weights in det_logs["slotcon"] and weights not in det_logs["random"]
