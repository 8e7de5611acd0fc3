"""Transfer: detectron2 / mmseg converters, torchvision Mask R-CNN client, mmseg 1.x configs and launcher (CPU).

The checkpoints are built like our trainer's (``module.`` + SlotCon state_dict) with a teacher that differs
from the student, so every "values equal" check also tells which network was exported. Tests that need
mmsegmentation are marked ``transfer`` and skip without it (pip install -r requirements-transfer.txt).
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.transfer_helpers import one_line_exit, save_slotcon_checkpoint, torchvision_name
from transfer.detection import convert_pretrain_to_d2
from transfer.detection.torchvision_maskrcnn import build_maskrcnn_from_checkpoint
from transfer.segmentation import convert_pretrain_to_mm
from transfer.segmentation.mmcv_ext import install as install_mmcv_ext_stub

REPO = Path(__file__).resolve().parents[1]
D2_KEYS_FILE = REPO / "tests" / "data" / "detectron2-r50-backbone-keys.txt"
SEG_CONFIGS = REPO / "transfer" / "segmentation" / "configs"
VOC_CONFIG = SEG_CONFIGS / "voc12aug" / "fcn_d6_r50-d16_513x513_30k_voc12aug_moco.py"
CITY_CONFIG = SEG_CONFIGS / "cityscapes" / "fcn_d6_r50-d16_769x769_90k_cityscapes_moco.py"
ADE_CONFIG = SEG_CONFIGS / "ade20k" / "fcn_r50-d8_512x512_80k_ade20k.py"


@pytest.fixture(scope="module")
def r50(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    path = tmp_path_factory.mktemp("r50") / "slotcon_r50.pth"
    return path, save_slotcon_checkpoint(path, "resnet50", seed=0)


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    path = tmp_path_factory.mktemp("r18") / "slotcon_r18.pth"
    return path, save_slotcon_checkpoint(path, "resnet18", seed=1)


@pytest.fixture(scope="module")
def r50_mm(r50, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mm") / "slotcon_r50_mm.pth"
    convert_pretrain_to_mm.main([str(r50[0]), str(out)])
    return out


def _read_d2(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def _d2_reference_keys() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in D2_KEYS_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return {name: ast.literal_eval(shape) for name, shape in rows}


# ---------------------------------------------------------------------------------------------------- detectron2


def test_d2_r50_teacher_has_exactly_detectron2_names_shapes_and_values(r50, tmp_path, capsys):
    path, nets = r50
    out = tmp_path / "r50.pkl"
    convert_pretrain_to_d2.main([str(path), str(out)])
    assert "318 tensors" in capsys.readouterr().out
    obj = _read_d2(out)
    assert obj["__author__"] and obj["matching_heuristics"] is True
    reference = _d2_reference_keys()
    assert len(reference) == 318
    assert set(obj["model"]) == set(reference)
    assert {k: v.shape for k, v in obj["model"].items()} == reference
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    # Spot-check the renaming against hand-written pairs, then every value against the teacher.
    teacher = nets["teacher"]
    pairs = {
        "stem.conv1.weight": "conv1.weight",
        "stem.conv1.norm.running_var": "bn1.running_var",
        "res2.0.conv3.norm.weight": "layer1.0.bn3.weight",
        "res2.0.shortcut.norm.bias": "layer1.0.downsample.1.bias",
        "res4.0.shortcut.weight": "layer3.0.downsample.0.weight",
        "res3.1.conv1.norm.num_batches_tracked": "layer2.1.bn1.num_batches_tracked",
    }
    for d2_name, tv_name in pairs.items():
        np.testing.assert_array_equal(obj["model"][d2_name], teacher[tv_name].numpy())
    for d2_name, value in obj["model"].items():
        np.testing.assert_array_equal(value, teacher[torchvision_name(d2_name)].numpy(), err_msg=d2_name)
    assert int(obj["model"]["stem.conv1.norm.num_batches_tracked"]) == 7  # the teacher's, not the student's 0


def test_d2_student_flag_exports_the_student(r50, tmp_path):
    path, nets = r50
    out = tmp_path / "student.pkl"
    convert_pretrain_to_d2.main([str(path), str(out), "--student"])
    model = _read_d2(out)["model"]
    np.testing.assert_array_equal(model["res3.1.conv2.weight"], nets["student"]["layer2.1.conv2.weight"].numpy())
    np.testing.assert_array_equal(model["stem.conv1.norm.running_mean"], nets["student"]["bn1.running_mean"].numpy())
    assert not np.array_equal(model["res3.1.conv2.weight"], nets["teacher"]["layer2.1.conv2.weight"].numpy())


def _expected_d2_basicblock_names(blocks_per_stage: list[int]) -> set[str]:
    """detectron2's names for a BasicBlock ResNet, written from its naming scheme (not from the converter)."""
    norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{p}" for p in norm}
    for stage, blocks in zip(range(2, 6), blocks_per_stage, strict=True):
        for block in range(blocks):
            convs = ["conv1", "conv2"] + (["shortcut"] if block == 0 and stage > 2 else [])
            for conv in convs:
                names |= {f"res{stage}.{block}.{conv}.weight"} | {f"res{stage}.{block}.{conv}.norm.{p}" for p in norm}
    return names


def test_d2_r18_gets_basicblock_names(r18, tmp_path):
    path, nets = r18
    out = tmp_path / "r18.pkl"
    convert_pretrain_to_d2.main([str(path), str(out)])
    model = _read_d2(out)["model"]
    assert set(model) == _expected_d2_basicblock_names([2, 2, 2, 2])
    assert model["res3.0.shortcut.weight"].shape == (128, 64, 1, 1)
    assert model["res5.1.conv2.norm.weight"].shape == (512,)
    np.testing.assert_array_equal(model["res4.0.conv1.weight"], nets["teacher"]["layer3.0.conv1.weight"].numpy())
    # Official checkpoints pickle their args as an argparse.Namespace; the converter must take them as they are.
    official = tmp_path / "official.pth"
    checkpoint = torch.load(path, weights_only=True)
    torch.save(dict(checkpoint, args=argparse.Namespace(arch="resnet18", dim_hidden=64)), official)
    convert_pretrain_to_d2.main([str(official), str(tmp_path / "official.pkl")])
    official_model = _read_d2(tmp_path / "official.pkl")["model"]
    assert official_model.keys() == model.keys()
    assert all(np.array_equal(official_model[k], model[k]) for k in model)


# ---------------------------------------------------------------------------------------------------- bad input


def _broken_checkpoints(tmp_path: Path, r18_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the one-line error must contain)."""
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint\n")
    full = torch.load(r18_path, weights_only=True)
    no_backbone = tmp_path / "no_backbone.pth"
    torch.save(
        {"args": {"arch": "resnet18"}, "model": {k: v for k, v in full["model"].items() if "encoder" not in k}},
        no_backbone,
    )
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": {k: v for k, v in full["model"].items() if ".layer4.1." not in k}}, truncated)
    reshaped = tmp_path / "reshaped.pth"
    model = dict(full["model"])
    model["module.encoder_k.layer2.0.conv1.weight"] = torch.zeros(256, 64, 3, 3)
    torch.save({"model": model}, reshaped)
    wrong_arch = tmp_path / "wrong_arch.pth"
    torch.save({"args": {"arch": "resnet34"}, "model": full["model"]}, wrong_arch)
    return {
        "garbage": (garbage, "not a loadable checkpoint"),
        "missing": (tmp_path / "missing.pth", "no such checkpoint file"),
        "no_backbone": (no_backbone, "no teacher (encoder_k) backbone"),
        "truncated": (truncated, "[2, 2, 2, 1]"),
        "reshaped": (reshaped, "layer2.0.conv1.weight"),
        "wrong_arch": (wrong_arch, "arch='resnet34'"),
    }


@pytest.mark.parametrize("converter", [convert_pretrain_to_d2, convert_pretrain_to_mm], ids=["d2", "mm"])
def test_converters_reject_bad_input_with_one_line(converter, r18, tmp_path):
    for name, (path, fragment) in _broken_checkpoints(tmp_path, r18[0]).items():
        out = tmp_path / f"{name}.out"
        with pytest.raises(SystemExit) as excinfo:
            converter.main([str(path), str(out)])
        one_line_exit(excinfo, str(path), fragment)
        assert not out.exists()
    with pytest.raises(SystemExit) as excinfo:
        converter.main([str(r18[0]), str(tmp_path / "no" / "such" / "dir.out")])
    one_line_exit(excinfo, "does not exist")


def test_converter_cli_prints_no_traceback(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "transfer" / "detection" / "convert_pretrain_to_d2.py"),
            str(garbage),
            str(tmp_path / "out.pkl"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(garbage) in result.stderr


# ---------------------------------------------------------------------------------------------------- mmseg files


def test_mm_converter_writes_weights_only_torchvision_names(r50, r50_mm):
    obj = torch.load(r50_mm, weights_only=True)
    assert set(obj) == {"state_dict"}
    state = obj["state_dict"]
    with torch.device("meta"):
        reference = torchvision.models.resnet50().state_dict()
    expected = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    assert len(state) == len(expected) == 318
    assert {k: v.shape for k, v in state.items()} == expected
    for key, value in r50[1]["teacher"].items():
        assert torch.equal(state[key], value), key


def test_d2_configs_chain_to_the_slotcon_settings():
    yaml = pytest.importorskip("yaml")

    def load(path: Path) -> dict:
        cfg = yaml.safe_load(path.read_text())
        base = cfg.pop("_BASE_", None)
        return merge(load(path.parent / base), cfg) if base else cfg

    def merge(base: dict, override: dict) -> dict:
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
        return out

    cfg = load(REPO / "transfer" / "detection" / "configs" / "COCO_R_50_FPN_1x_SlotCon.yaml")
    model = cfg["MODEL"]
    assert model["MASK_ON"] is True and model["BACKBONE"] == {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0}
    assert model["RESNETS"]["NORM"] == model["FPN"]["NORM"] == model["ROI_MASK_HEAD"]["NORM"] == "SyncBN"
    assert model["RESNETS"]["DEPTH"] == 50 and model["RESNETS"]["STRIDE_IN_1X1"] is False
    assert (model["ROI_BOX_HEAD"]["NUM_CONV"], model["ROI_BOX_HEAD"]["NUM_FC"], model["ROI_BOX_HEAD"]["NORM"]) == (
        4,
        1,
        "SyncBN",
    )
    assert model["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and model["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert not Path(model["WEIGHTS"]).exists()  # a placeholder that train_net.py refuses
    assert cfg["INPUT"]["FORMAT"] == "RGB" and cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert (cfg["SOLVER"]["MAX_ITER"], cfg["SOLVER"]["STEPS"], cfg["SOLVER"]["IMS_PER_BATCH"]) == (
        90000,
        "(60000, 80000)",
        16,
    )  # yacs reads tuples from their string form
    assert cfg["VERSION"] == 2


def test_train_net_without_detectron2_says_how_to_install(tmp_path):
    try:
        import detectron2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("detectron2 is installed")
    result = subprocess.run(
        [sys.executable, str(REPO / "transfer" / "detection" / "train_net.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    assert "detectron2" in result.stderr and "install" in result.stderr


def test_dist_train_derives_work_dir_and_forwards_overrides(r50_mm, tmp_path):
    script = REPO / "transfer" / "segmentation" / "dist_train.sh"
    env = dict(os.environ, DRY_RUN="1")
    config = "configs/voc12aug/fcn_d6_r50-d16_513x513_30k_voc12aug_moco.py"
    result = subprocess.run(
        ["bash", str(script), config, str(r50_mm), "8", "train_dataloader.batch_size=2"],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert "--nproc_per_node=8" in words and words[words.index("--launcher") + 1] == "pytorch"
    assert words[words.index("--work-dir") + 1] == (
        "work_dirs/voc12aug/fcn_d6_r50-d16_513x513_30k_voc12aug_moco/slotcon_r50_mm"
    )
    assert words[words.index("--pretrained") + 1] == str(r50_mm)
    assert words[words.index("--cfg-options") + 1 :] == ["train_dataloader.batch_size=2"]
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    missing = subprocess.run(
        ["bash", str(script), config, str(tmp_path / "nope.pth"), "2"],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env=env,
    )
    assert missing.returncode == 1 and "nope.pth" in missing.stderr


# ---------------------------------------------------------------------------------------------------- torchvision


def test_torchvision_maskrcnn_gets_every_backbone_key_and_trains(r50, r18):
    path, nets = r50
    torch.manual_seed(0)
    # Small images and few sampled anchors/proposals keep one CPU step at a few seconds.
    model = build_maskrcnn_from_checkpoint(
        path,
        num_classes=3,
        min_size=128,
        max_size=160,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
    )
    body = model.backbone.body.state_dict()
    teacher = nets["teacher"]
    assert set(body) == set(teacher)  # 0 missing, 0 unexpected
    assert all(torch.equal(body[k], teacher[k]) for k in teacher)

    def box_and_mask(h: int, w: int, box: list[int]) -> dict[str, torch.Tensor]:
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[0, box[1] : box[3], box[0] : box[2]] = 1
        return {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([1]), "masks": mask}

    images = [torch.rand(3, 128, 160), torch.rand(3, 144, 128)]
    targets = [box_and_mask(128, 160, [20, 30, 90, 100]), box_and_mask(144, 128, [10, 40, 70, 120])]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0  # the pretrained stem is trained, not frozen
    optimizer.step()
    assert not torch.equal(model.backbone.body.conv1.weight.detach(), teacher["conv1.weight"])

    # Other depths get the same FPN layout on their own stage widths (BasicBlock: 64..512 channels).
    model18 = build_maskrcnn_from_checkpoint(r18[0], num_classes=3)
    body18 = model18.backbone.body.state_dict()
    teacher18 = r18[1]["teacher"]
    assert set(body18) == set(teacher18) and all(torch.equal(body18[k], v) for k, v in teacher18.items())
    assert [m.in_channels for m in model18.backbone.fpn.inner_blocks.modules() if isinstance(m, torch.nn.Conv2d)] == [
        64,
        128,
        256,
        512,
    ]


# ---------------------------------------------------------------------------------------------------- mmsegmentation


@pytest.fixture(scope="module")
def mmseg():
    install_mmcv_ext_stub()  # mmcv-lite lacks compiled ops; mmseg imports them at import time
    mmseg = pytest.importorskip("mmseg", reason="needs requirements-transfer.txt")
    pytest.importorskip("mmseg.models")
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmseg


def _config(path: Path, bn: bool = False):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    if bn:  # SyncBN needs a process group and a GPU; plain BN is the same layer on one CPU process
        for part in ("backbone", "decode_head", "auxiliary_head"):
            if cfg.model.get(part):
                cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)
    return cfg


@pytest.mark.transfer
def test_mmcv_ext_stub_ops(mmseg):
    from mmcv.ops import nms, roi_align

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # IoU(0, 1) = 81/119 > 0.5, box 2 is disjoint
    features = torch.full((1, 2, 8, 8), 3.0, requires_grad=True)
    pooled = roi_align(features, torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]]), (2, 2), 1.0, 0, "avg", True)
    assert torch.allclose(pooled, torch.full((1, 2, 2, 2), 3.0))
    pooled.sum().backward()  # every output bin averages samples inside the map: gradients sum to the bin count
    assert math.isclose(features.grad.sum().item(), 2 * 2 * 2, rel_tol=1e-5)
    import mmcv._ext as ext

    with pytest.raises(NotImplementedError, match="deform_conv_forward"):
        ext.deform_conv_forward(torch.zeros(1))


@pytest.mark.transfer
def test_converted_backbone_initialises_mmseg_resnet50_exactly(mmseg, r50, r50_mm):
    from mmseg.registry import MODELS

    backbone_cfg = copy.deepcopy(_config(VOC_CONFIG, bn=True).model.backbone)
    backbone_cfg.init_cfg = dict(type="Pretrained", checkpoint=str(r50_mm))
    backbone = MODELS.build(backbone_cfg)
    assert type(backbone).__name__ == "ResNet" and backbone.depth == 50
    own = backbone.state_dict()
    loaded = torch.load(r50_mm, weights_only=True)["state_dict"]
    assert sorted(set(own) - set(loaded)) == []  # missing
    assert sorted(set(loaded) - set(own)) == []  # unexpected
    assert not torch.equal(own["layer3.0.conv2.weight"], loaded["layer3.0.conv2.weight"])  # random before init
    backbone.init_weights()
    own = backbone.state_dict()
    for key, value in r50[1]["teacher"].items():
        assert torch.equal(own[key], value), key


@pytest.mark.transfer
@pytest.mark.parametrize(
    ("config", "classes", "aux", "stride", "lr", "mode", "mean0", "crop", "batch"),
    [
        (VOC_CONFIG, 21, False, 16, 0.003, "whole", 0.485, (513, 513), 8),
        (CITY_CONFIG, 19, False, 16, 0.01, "slide", 0.485, (769, 769), 8),
        (ADE_CONFIG, 150, True, 8, 0.01, "whole", 123.675, (512, 512), 4),
    ],
    ids=["voc", "cityscapes", "ade20k"],
)
def test_configs_build_the_reference_segmentors(mmseg, config, classes, aux, stride, lr, mode, mean0, crop, batch):
    from mmseg.registry import MODELS

    cfg = _config(config)
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "EncoderDecoder"
    assert model.decode_head.num_classes == classes and model.with_auxiliary_head == aux
    assert not Path(cfg.model.backbone.init_cfg.checkpoint).exists()  # placeholder, never supervised weights
    assert cfg.optim_wrapper.optimizer.lr == lr and cfg.model.test_cfg.mode == mode
    assert cfg.model.data_preprocessor.mean[0] == mean0 and tuple(cfg.model.data_preprocessor.size) == crop
    assert cfg.train_dataloader.batch_size == batch  # per GPU; x GPUs = 16
    # The output stride the dilations promise: C5 of a 64 px image is 64 / stride wide.
    model = MODELS.build(_config(config, bn=True).model).eval()
    with torch.no_grad():
        c5 = model.extract_feat(torch.zeros(1, 3, 64, 64))[-1]
    assert c5.shape == (1, 2048, 64 // stride, 64 // stride)


@pytest.mark.transfer
def test_voc_config_trains_one_iteration_from_the_converted_backbone(mmseg, r50_mm):
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = _config(VOC_CONFIG, bn=True)
    cfg.model.backbone.init_cfg.checkpoint = str(r50_mm)
    cfg.model.data_preprocessor.size = (64, 64)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper.optimizer).__name__ == "SGD"
    generator = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for height in (64, 56):  # the second image is padded to 64 by the data preprocessor (label 255 there)
        inputs.append(torch.randint(0, 256, (3, height, 64), dtype=torch.uint8, generator=generator))
        label = torch.randint(0, 21, (1, height, 64), generator=generator)
        label[:, :8] = 255
        sample = SegDataSample(metainfo={"img_shape": (height, 64), "ori_shape": (height, 64)})
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    before = model.backbone.conv1.weight.detach().clone()
    log_vars = model.train_step({"inputs": inputs, "data_samples": samples}, optim_wrapper)
    loss = float(log_vars["loss"].detach())
    assert math.isfinite(loss)
    # conv_seg starts at N(0, 0.01) with zero bias, so the logits are near zero and CE ~ log 21 per labelled pixel.
    # mmseg (like the 0.x reference) averages over all pixels, ignored ones included: 8 ignored rows per image
    # plus the second image's 8 padded rows leave (128 - 24) / 128 of the pixels labelled.
    assert abs(loss - math.log(21) * (128 - 24) / 128) < 0.1, loss
    assert not torch.equal(model.backbone.conv1.weight, before)


def _write_tiny_voc(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = ["img_a", "img_b"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = np.zeros((48, 64), np.uint8)
        label[10:30, 20:40] = 12
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            Image.fromarray(label).save(root / folder / f"{name}.png")
    for split in ("train", "aug", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


@pytest.mark.transfer
def test_train_script_runs_one_iteration_and_validates(mmseg, r50, r50_mm, tmp_path, monkeypatch):
    from mmengine.runner import Runner

    from transfer.segmentation import train

    root = tmp_path / "VOC2012"
    _write_tiny_voc(root)
    monkeypatch.setenv("VOC_ROOT", str(root))  # the configs read their data roots from the environment
    args = train.parse_args(
        [
            str(VOC_CONFIG),
            "--pretrained",
            str(r50_mm),
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            "train_cfg.max_iters=1",
            "train_cfg.val_interval=1",
            "default_hooks.checkpoint.interval=1",
            "train_dataloader.batch_size=2",
        ]
    )
    cfg = train.build_config(args)
    # Shrink the data so one R50 iteration takes seconds on a CPU; the pipeline types stay the config's.
    cfg.model.data_preprocessor.size = (64, 64)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.num_workers, loader.persistent_workers = 0, False
    for dataset in cfg.train_dataloader.dataset.datasets:
        assert dataset.data_root == str(root)
        dataset.pipeline[2].scale, dataset.pipeline[3].crop_size = (128, 64), (64, 64)
    assert cfg.val_dataloader.dataset.data_root == str(root)
    cfg.val_dataloader.dataset.pipeline[1].scale = (128, 64)
    Runner.from_cfg(cfg).train()

    saved = torch.load(tmp_path / "work" / "iter_1.pth", map_location="cpu", weights_only=False)["state_dict"]
    teacher_stem = r50[1]["teacher"]["conv1.weight"]
    # One SGD step at lr 0.003 moves the pretrained stem a little; a backbone that missed the weights would not match.
    assert (saved["backbone.conv1.weight"] - teacher_stem).abs().max() < 1e-2
    logs = "".join(p.read_text() for p in (tmp_path / "work").rglob("*.log"))
    assert "mIoU" in logs


@pytest.mark.transfer
def test_train_script_refuses_missing_or_unconverted_weights(mmseg, r50, tmp_path):
    from transfer.segmentation import train

    with pytest.raises(SystemExit) as excinfo:
        train.build_config(train.parse_args([str(VOC_CONFIG)]))
    one_line_exit(excinfo, "SET_ME", "convert_pretrain_to_mm.py")
    with pytest.raises(SystemExit) as excinfo:
        train.build_config(train.parse_args([str(ADE_CONFIG), "--pretrained", str(r50[0])]))
    one_line_exit(excinfo, str(r50[0]), "convert it first")
    with pytest.raises(SystemExit) as excinfo:
        train.build_config(train.parse_args([str(ADE_CONFIG), "--pretrained", "torchvision://resnet50"]))
    one_line_exit(excinfo, "refusing")
