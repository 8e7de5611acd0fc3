"""transfer/detection/train_net.py with a real detectron2 (skipped where it is not importable).

Install it with ``bash transfer/detection/install_detectron2.sh [SOURCE]`` (``make test D2_SOURCE=...``;
.ci/run does so from ../shared/vendor/ when that exists). Trainings here run a few iterations of small
images on the CPU; what they check is that the pieces fit (weights, data, evaluation), not accuracy.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.transfer_helpers import one_line_exit, save_slotcon_checkpoint, tiny_demo_sets, torchvision_name
from transfer.detection import convert_pretrain_to_d2

pytest.importorskip("detectron2", reason="needs detectron2: bash transfer/detection/install_detectron2.sh")
from transfer.detection import train_net  # imports detectron2

REPO = Path(__file__).resolve().parents[1]
D2_DIR = REPO / "transfer" / "detection"
SLOTCON_CONFIG = D2_DIR / "configs" / "COCO_R_50_FPN_1x_SlotCon.yaml"
DEMO_CONFIG = D2_DIR / "configs" / "Demo_R_18_FPN_SlotCon.yaml"
# Small images, few RoIs and anchors, and no worker processes keep an R50 iteration at about a second on a CPU.
TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "128",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "16",
    "TEST.PRECISE_BN.NUM_ITER",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
]


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=cwd, env=dict(os.environ, PYTHONWARNINGS="ignore", **env)
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """arch -> (SlotCon checkpoint, converted .pkl, teacher backbone)."""
    root = tmp_path_factory.mktemp("d2_ckpt")
    out = {}
    for arch, seed in (("resnet18", 3), ("resnet50", 4)):
        nets = save_slotcon_checkpoint(root / f"{arch}.pth", arch, seed)
        convert_pretrain_to_d2.main([str(root / f"{arch}.pth"), str(root / f"{arch}.pkl")])
        out[arch] = (root / f"{arch}.pth", root / f"{arch}.pkl", nets["teacher"])
    return out


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory) -> dict:
    return tiny_demo_sets(tmp_path_factory.mktemp("d2_demo"))


def _own_data_flags(sets: dict) -> list[str]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    return [
        "--train-json",
        train["coco_json"],
        "--train-images",
        train["images"],
        "--val-json",
        val["coco_json"],
        "--val-images",
        val["images"],
    ]


@pytest.mark.parametrize(
    ("arch", "config", "overrides"),
    [
        ("resnet50", SLOTCON_CONFIG, []),
        ("resnet18", DEMO_CONFIG, []),
        ("resnet18", SLOTCON_CONFIG, ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]),
    ],
    ids=["r50", "r18-demo", "r18-overrides"],
)
def test_converted_backbone_loads_into_detectron2_with_every_tensor(checkpoints, arch, config, overrides):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    _, pkl, teacher = checkpoints[arch]
    cfg = train_net.load_config(
        train_net.parse_args(
            ["--config-file", str(config), "MODEL.WEIGHTS", str(pkl), "MODEL.DEVICE", "cpu", *overrides]
        )
    )
    train_net.check_weights(cfg, resume=False)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(pkl))
    loaded = model.backbone.bottom_up.state_dict()
    with open(pkl, "rb") as f:
        names = set(pickle.load(f)["model"])
    assert set(loaded) == names  # 0 missing, 0 unused
    for name, value in loaded.items():
        assert torch.equal(value, teacher[torchvision_name(name)]), name


def test_depth_mismatch_and_basicblock_settings_give_one_line(checkpoints):
    _, pkl18, _ = checkpoints["resnet18"]
    cfg = train_net.load_config(
        train_net.parse_args(["--config-file", str(SLOTCON_CONFIG), "MODEL.WEIGHTS", str(pkl18), "MODEL.DEVICE", "cpu"])
    )
    with pytest.raises(SystemExit) as excinfo:
        train_net.check_weights(cfg, resume=False)
    one_line_exit(excinfo, "ResNet-18", "ResNet-50", "MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    cfg = train_net.load_config(
        train_net.parse_args(["--config-file", str(SLOTCON_CONFIG), "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "34"])
    )
    with pytest.raises(SystemExit) as excinfo:
        train_net.check_weights(cfg, resume=False)
    one_line_exit(excinfo, "RES2_OUT_CHANNELS 64")


def test_bad_config_overrides_give_one_line():
    for opts, fragment in (
        (["SOLVER.MAX_ITER"], "odd length"),
        (["SOLVER.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
        (["SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER"),
    ):
        with pytest.raises(SystemExit) as excinfo:
            train_net.load_config(train_net.parse_args(["--config-file", str(SLOTCON_CONFIG), *opts]))
        one_line_exit(excinfo, "config overrides", fragment)


def test_own_dataset_flags_check_their_files(demo_sets, tmp_path):
    flags = _own_data_flags(demo_sets)
    args = train_net.parse_args(["--config-file", str(DEMO_CONFIG), *flags])
    overrides = train_net.register_own_datasets(args)
    assert overrides == [
        "DATASETS.TRAIN",
        "('custom_train',)",
        "DATASETS.TEST",
        "('custom_val',)",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "10",
    ]
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("custom_val").thing_classes == demo_sets["thing_classes"]
    coco = json.loads(Path(demo_sets["splits"]["val"]["coco_json"]).read_text())
    broken = {
        "one_class_less": dict(coco, categories=coco["categories"][:-1]),
        "missing_image": dict(
            coco, images=[*coco["images"], {"id": 999, "file_name": "nope.png", "height": 64, "width": 64}]
        ),
    }
    for name, content in broken.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        bad = [*flags[:6], "--val-json", str(path), "--val-images", flags[-1]]
        with pytest.raises(SystemExit) as excinfo:
            train_net.register_own_datasets(train_net.parse_args(["--config-file", str(DEMO_CONFIG), *bad]))
        one_line_exit(excinfo, "different categories" if name == "one_class_less" else "nope.png")


def test_train_net_trains_then_evaluates_the_demo_sets_the_same_both_ways(checkpoints, demo_sets, tmp_path):
    _, pkl, _ = checkpoints["resnet18"]
    out = tmp_path / "run"
    common = [
        "--config-file",
        str(DEMO_CONFIG),
        *_own_data_flags(demo_sets),
        "MODEL.DEVICE",
        "cpu",
        *TINY,
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "OUTPUT_DIR",
        str(out),
    ]
    trained = _run(
        [
            sys.executable,
            "train_net.py",
            *common,
            "MODEL.WEIGHTS",
            str(pkl),
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.STEPS",
            "(2,)",
        ],
        cwd=D2_DIR,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Loading from " + str(pkl) in log and "Starting training from iteration 0" in log
    after_training = json.loads((out / "results.json").read_text())
    assert set(after_training) == {"bbox", "segm"}
    # NaN: detectron2's "no predictions" (three iterations from a random-valued backbone may find nothing)
    assert all(math.isnan(ap) or 0 <= ap <= 100 for ap in (after_training[t]["AP"] for t in ("bbox", "segm")))
    (out / "results.json").unlink()
    evaluated = _run(
        [sys.executable, "train_net.py", "--eval-only", *common, "MODEL.WEIGHTS", str(out / "model_final.pth")],
        cwd=D2_DIR,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # model_final.pth holds the precise-BN statistics the last evaluation used: the same model, the same AP.
    assert json.dumps(json.loads((out / "results.json").read_text())) == json.dumps(after_training)  # NaN-safe


def test_original_eight_gpu_command_says_what_to_run_here_and_that_runs(checkpoints, tmp_path):
    """The reference README's command, verbatim, from transfer/detection with COCO linked at datasets/coco."""
    import cv2
    import numpy as np
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]  # COCO's 80

    _, pkl, _ = checkpoints["resnet50"]
    exp = "slotcon_test"
    root = tmp_path / "repo"  # a mirror of the repository layout, so the command's ../../ paths stay in tmp_path
    (root / "transfer" / "detection").mkdir(parents=True)
    for name in ("train_net.py", "configs"):
        (root / "transfer" / "detection" / name).symlink_to(D2_DIR / name)
    (root / f"{exp}.pkl").symlink_to(pkl)
    coco = root / "transfer" / "detection" / "datasets" / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (coco / split).mkdir()
        images, annotations = [], []
        for i in range(2):
            image = np.full((64, 80, 3), 40 + 100 * i, np.uint8)
            cv2.rectangle(image, (10 + 5 * i, 12), (50, 40 + 5 * i), (200, 30, 90), -1)
            cv2.imwrite(str(coco / split / f"{i:012d}.jpg"), image)
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 64, "width": 80})
            x0, y0, x1, y1 = 10 + 5 * i, 12, 50, 40 + 5 * i
            annotations.append(
                {
                    "id": i + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": (x1 - x0 + 1) * (y1 - y0 + 1),
                    "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                    "segmentation": [[x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1]],
                }
            )
        (coco / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    command = (
        f"python train_net.py --config-file configs/COCO_R_50_FPN_1x_SlotCon.yaml --num-gpus 8 --resume "
        f"MODEL.WEIGHTS ../../{exp}.pkl OUTPUT_DIR ../../output/COCO_R_50_FPN_1x_{exp}"
    )
    argv = shlex.split(command)
    cwd = root / "transfer" / "detection"
    env = {"DETECTRON2_DATASETS": "datasets"} if "DETECTRON2_DATASETS" in os.environ else {}
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs: the command would run as it is")
    result = _run([sys.executable, *argv[1:]], cwd=cwd, **env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "run instead: " in line, line
    suggested = shlex.split(line.split("run instead: ", 1)[1])
    assert suggested[:2] == ["python", "train_net.py"]
    assert "SOLVER.REFERENCE_WORLD_SIZE" in suggested  # the same experiment, scaled to this machine
    # Run what it says (with a tiny schedule and tiny images): training from the pkl, then COCO evaluation.
    # REFERENCE_WORLD_SIZE 8 on one process: 2 images per iteration and 8x the iterations (1 -> 8).
    result = _run(
        [
            sys.executable,
            *suggested[1:],
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.STEPS",
            "()",
            "SOLVER.WARMUP_ITERS",
            "0",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            *TINY,
        ],
        cwd=cwd,
        **env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "output" / f"COCO_R_50_FPN_1x_{exp}"
    assert set(json.loads((out / "results.json").read_text())) == {"bbox", "segm"}
    log = (out / "log.txt").read_text()
    assert f"Loading from ../../{exp}.pkl" in log and "coco_2017_val" in log
    assert "Auto-scaling the config to batch_size=2, learning_rate=0.0025, max_iter=8" in log
