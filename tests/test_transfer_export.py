"""transfer/export.py: every format, both backbone families, loaded back by the libraries that read them."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.transfer_helpers import one_line_exit, save_slotcon_checkpoint
from transfer import export

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        arch: (root / f"{arch}.pth", save_slotcon_checkpoint(root / f"{arch}.pth", arch, seed=1))
        for arch in ("resnet18", "vit_tiny")
    }


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_safetensors_load_strictly_into_timm_and_compute_the_teachers_features(arch, checkpoints, tmp_path):
    path, nets = checkpoints[arch]
    out = tmp_path / f"{arch}.safetensors"
    record = export.export(path, "safetensors", out)
    build = record["timm"]
    model = timm.create_model(build["name"], pretrained=False, **build["kwargs"]).eval()
    result = model.load_state_dict(safetensors_torch.load_file(out), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in nets["teacher"].items():  # the teacher, not the student
        assert torch.equal(model.state_dict()[name], value.float()), name
    assert safetensors_torch.safe_open(str(out), "pt").metadata()["arch"] == arch

    from models.backbones import build_backbone

    trunk = build_backbone(arch).eval()
    trunk.load_state_dict(nets["teacher"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = trunk(images)
        theirs = model.forward_features(images)
        if arch.startswith("vit"):  # patch tokens after the final norm, as a grid
            theirs = theirs[:, model.num_prefix_tokens :].transpose(1, 2).reshape(ours.shape)
    torch.testing.assert_close(theirs, ours)


def test_the_sidecar_says_what_the_file_is(checkpoints, tmp_path):
    path, _ = checkpoints["vit_tiny"]
    (path.parent / "eval.json").write_text(json.dumps({"models": {"current.pth": {"summary": {"fg_ari": 0.5}}}}))
    out = tmp_path / "vit.pth"
    export.main([str(path), "--to", "mmseg", str(out)])
    record = json.loads((tmp_path / "vit.pth.json").read_text())
    assert record["arch"] == "vit_tiny" and record["family"] == "vit" and record["patch_size"] == 16
    assert record["output_stride"] == 16 and record["names"] == "mmseg" and record["format"] == "mmseg"
    assert record["network"] == "teacher (encoder_k)" and record["checkpoint"]["epochs_done"] == 1
    assert record["config"]["batch_size"] == 8 and record["eval"]["models"]["current.pth"]["summary"]["fg_ari"] == 0.5
    state = torch.load(out, weights_only=True)["state_dict"]
    assert record["tensors"] == len(state) and "layers.11.attn.attn.in_proj_weight" in state


def test_a_vit_goes_to_mmseg_and_detectron2_with_every_key(checkpoints, tmp_path):
    from transfer import vit_weights
    from transfer.segmentation.mmcv_ext import install as install_mmcv_ext

    install_mmcv_ext()  # mmseg imports mmcv's compiled ops; mmcv-lite has none
    pytest.importorskip("mmseg")
    pytest.importorskip("detectron2")
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    path, nets = checkpoints["vit_tiny"]
    export.export(path, "mmseg", tmp_path / "mm.pth", image_size=64)
    backbone = MODELS.build(vit_weights.mmseg_backbone_config("vit_tiny", img_size=64))
    result = backbone.load_state_dict(torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    from detectron2.modeling import ViT

    export.export(path, "detectron2", tmp_path / "d2.pkl", image_size=128, window_size=4)
    with open(tmp_path / "d2.pkl", "rb") as f:
        model = pickle.load(f)["model"]
    kwargs = vit_weights.detectron2_vit_kwargs("vit_tiny", img_size=128, window_size=4)
    net = ViT(**kwargs)
    prefix = vit_weights.DETECTRON2_PREFIX
    result = net.load_state_dict({k[len(prefix) :]: torch.from_numpy(v) for k, v in model.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(net.blocks[3].mlp.fc1.weight, nets["teacher"]["blocks.3.mlp.fc1.weight"])


def test_the_original_converters_take_a_vit_by_path(checkpoints, tmp_path):
    path, _ = checkpoints["vit_tiny"]
    out = tmp_path / "vit.pkl"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "transfer/detection/convert_pretrain_to_d2.py"),
            str(path),
            str(out),
            "--image-size",
            "128",
            "--window-size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "vit_tiny backbone" in done.stdout and (tmp_path / "vit.pkl.json").is_file()
    with open(out, "rb") as f:
        assert "backbone.net.blocks.0.attn.rel_pos_h" in pickle.load(f)["model"]


def test_bfloat16_weights_export_as_float32(checkpoints, tmp_path):
    path, nets = checkpoints["resnet18"]
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = {k: v.bfloat16() if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, tmp_path / "bf16.pth")
    export.export(tmp_path / "bf16.pth", "detectron2", tmp_path / "bf16.pkl")
    with open(tmp_path / "bf16.pkl", "rb") as f:
        model = pickle.load(f)["model"]
    assert model["stem.conv1.weight"].dtype.name == "float32"
    expected = nets["teacher"]["conv1.weight"].bfloat16().float().numpy()
    assert (model["stem.conv1.weight"] == expected).all()


def test_bad_input_is_one_line(checkpoints, tmp_path):
    path, _ = checkpoints["vit_tiny"]
    with pytest.raises(SystemExit) as excinfo:
        export.main([str(path), "--to", "mmseg", str(tmp_path / "x.pth"), "--image-size", "100"])
    one_line_exit(excinfo, "--image-size 100", "patch size 16")
    broken = torch.load(path, weights_only=True)
    broken["model"] = {k: v for k, v in broken["model"].items() if "blocks.11." not in k}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(SystemExit) as excinfo:
        export.main([str(tmp_path / "broken.pth"), "--to", "safetensors", str(tmp_path / "x.safetensors")])
    one_line_exit(excinfo, str(tmp_path / "broken.pth"), "not a complete vit_tiny", "missing")
    assert not (tmp_path / "x.safetensors").exists()
