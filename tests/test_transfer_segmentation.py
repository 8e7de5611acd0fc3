"""transfer/segmentation: your own image folders, other depths, random init, and the reference's launcher command.

Marked ``transfer`` (needs requirements-transfer.txt); mmcv-lite runs with transfer/segmentation/mmcv_ext.py
standing in for the compiled ops, as train.py does by itself.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.transfer_helpers import one_line_exit, save_slotcon_checkpoint, tiny_demo_sets
from transfer.segmentation import convert_pretrain_to_mm
from transfer.segmentation.mmcv_ext import install as install_mmcv_ext

pytestmark = pytest.mark.transfer
REPO = Path(__file__).resolve().parents[1]
SEG_DIR = REPO / "transfer" / "segmentation"
FOLDER_CONFIG = SEG_DIR / "configs" / "image_folder" / "fcn_r50-d8_512x512_20k_image_folder.py"


@pytest.fixture(scope="module")
def train():
    install_mmcv_ext()
    pytest.importorskip("mmseg", reason="needs requirements-transfer.txt")
    from mmseg.utils import register_all_modules

    from transfer.segmentation import train

    register_all_modules(init_default_scope=True)
    return train


@pytest.fixture(scope="module")
def r18_mm(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("seg_r18")
    teacher = save_slotcon_checkpoint(root / "r18.pth", "resnet18", seed=6)["teacher"]
    convert_pretrain_to_mm.main([str(root / "r18.pth"), str(root / "r18_mm.pth")])
    return root / "r18_mm.pth", teacher


def _folder_flags(sets: dict) -> list[str]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    classes = Path(train["seg_list"]).parent / "classes.txt"
    return [
        "--classes",
        str(classes),
        "--train-images",
        train["images"],
        "--train-labels",
        train["labels"],
        "--train-list",
        train["seg_list"],
        "--val-images",
        val["images"],
        "--val-labels",
        val["labels"],
    ]


def test_own_folders_and_the_weights_depth_shape_the_config(train, r18_mm, tmp_path):
    from mmseg.registry import DATASETS, MODELS

    sets = tiny_demo_sets(tmp_path, num_train=4, num_eval=2)
    weights, teacher = r18_mm
    cfg = train.build_config(train.parse_args([str(FOLDER_CONFIG), "--pretrained", str(weights), *_folder_flags(sets)]))
    dataset = cfg.train_dataloader.dataset
    assert dataset.data_prefix.img_path == sets["splits"]["train"]["images"] and dataset.img_suffix == ".png"
    assert list(dataset.metainfo.classes) == sets["seg_classes"] and cfg.model.decode_head.num_classes == 11
    # The weights are a ResNet-18: BasicBlock widths for the heads (stage 4: 512, stage 3: 256).
    assert cfg.model.backbone.depth == 18
    assert (cfg.model.decode_head.in_channels, cfg.model.auxiliary_head.in_channels) == (512, 256)
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN wants a process group
    model = MODELS.build(cfg.model)
    model.init_weights()
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in teacher.items())
    with torch.no_grad():
        logits = model.eval()(torch.zeros(1, 3, 64, 64), mode="tensor")
    assert logits.shape == (1, 11, 8, 8)
    train_set = DATASETS.build(cfg.train_dataloader.dataset)
    val_set = DATASETS.build(cfg.val_dataloader.dataset)
    assert (len(train_set), len(val_set)) == (4, 2)  # the list's 4 scenes; every image of the val folder
    sample = train_set.get_data_info(0)
    assert Path(sample["seg_map_path"]).parent == Path(sets["splits"]["train"]["labels"])

    with pytest.raises(SystemExit) as excinfo:  # weights and an explicit depth that disagree
        train.build_config(
            train.parse_args([str(FOLDER_CONFIG), "--pretrained", str(weights), "--depth", "50", *_folder_flags(sets)])
        )
    one_line_exit(excinfo, "ResNet-18", "--depth 18")
    random = train.build_config(
        train.parse_args([str(FOLDER_CONFIG), "--random-init", "--depth", "34", *_folder_flags(sets)])
    )
    assert random.model.backbone.init_cfg is None and random.model.backbone.depth == 34
    with pytest.raises(SystemExit) as excinfo:
        train.build_config(train.parse_args([str(FOLDER_CONFIG), "--random-init", *_folder_flags(sets)[2:]]))
    one_line_exit(excinfo, "--classes")


def _tiny_voc(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = np.zeros((48, 64), np.uint8)
        label[10:30, 20:40] = 15
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            Image.fromarray(label).save(root / folder / f"{name}.png")
    for split in ("train", "aug", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("a\nb\n")


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="the GPUs are there: the commands would run as written")
def test_original_launcher_commands_say_what_to_run_here_and_that_runs(train, tmp_path):
    """The reference README's mmseg commands, verbatim, from transfer/segmentation with data/ linked there."""
    r50 = tmp_path / "r50.pth"
    teacher = save_slotcon_checkpoint(r50, "resnet50", seed=7)["teacher"]
    exp = "slotcon_test"
    root = tmp_path / "repo"
    seg = root / "transfer" / "segmentation"
    seg.mkdir(parents=True)
    for name in ("configs", "dist_train.sh", "mim_dist_train.sh", "train.py"):
        (seg / name).symlink_to(SEG_DIR / name)
    convert_pretrain_to_mm.main([str(r50), str(root / f"{exp}.pth")])
    _tiny_voc(seg / "data" / "VOCdevkit" / "VOC2012")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT")}
    env.update(PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    originals = {
        "voc12aug/fcn_d6_r50-d16_513x513_30k_voc12aug_moco.py": 2,
        "cityscapes/fcn_d6_r50-d16_769x769_90k_cityscapes_moco.py": 2,
        "ade20k/fcn_r50-d8_512x512_80k_ade20k.py": 4,
    }
    suggestions = {}
    for config, gpus in originals.items():
        command = f"bash mim_dist_train.sh configs/{config} ../../{exp}.pth {gpus}"
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=seg, env=env)
        line = result.stderr.strip()
        assert result.returncode == 1 and "\n" not in line and "run instead: " in line, line
        suggestions[config] = shlex.split(line.split("run instead: ", 1)[1])
    voc = suggestions["voc12aug/fcn_d6_r50-d16_513x513_30k_voc12aug_moco.py"]
    if torch.cuda.device_count() == 0:
        assert voc[:2] == [sys.executable, "./train.py"] and "train_dataloader.batch_size=16" in voc
    # Run it with a tiny schedule and 64 px crops: one iteration from the converted backbone, then validation.
    tiny = [
        "train_cfg.max_iters=1",
        "train_cfg.val_interval=1",
        "default_hooks.checkpoint.interval=1",
        "train_dataloader.batch_size=2",
        "model.data_preprocessor.size=(64,64)",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
        "val_dataloader.dataset.pipeline.1.scale=(128,64)",
    ]
    for i in (0, 1):
        tiny += [
            f"train_dataloader.dataset.datasets.{i}.pipeline.2.scale=(128,64)",
            f"train_dataloader.dataset.datasets.{i}.pipeline.3.crop_size=(64,64)",
        ]
    result = subprocess.run([*voc, *tiny], capture_output=True, text=True, cwd=seg, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    work = seg / "work_dirs" / "voc12aug" / "fcn_d6_r50-d16_513x513_30k_voc12aug_moco" / exp
    results = json.loads((work / "results.json").read_text())
    assert 0 <= results["mIoU"] <= 100
    saved = torch.load(work / "iter_1.pth", map_location="cpu", weights_only=False)["state_dict"]
    # One SGD step at lr 0.003 moves the pretrained stem a little; a backbone that missed the weights would not match.
    assert (saved["backbone.conv1.weight"] - teacher["conv1.weight"]).abs().max() < 1e-2
