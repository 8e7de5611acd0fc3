"""transfer/vit_weights.py and the ViT transfer configs: the exported trunk inside mmsegmentation and detectron2.

mmseg tests are marked ``transfer`` (requirements-transfer.txt; mmcv-lite runs with transfer/segmentation/mmcv_ext.py
standing in for the compiled ops); detectron2 tests skip where it is not importable. Each compares a library's own
forward pass with the trunk's, so a misplaced tensor (e.g. two LayerNorms swapped) fails: the trunk's weights are
all perturbed from their initial values first.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.vit import VIT_ARCHS, ViTTrunk, build_vit, vit_spec
from tests.transfer_helpers import one_line_exit, tiny_demo_sets
from transfer import vit_weights
from transfer.segmentation.mmcv_ext import install as install_mmcv_ext

pytestmark = [pytest.mark.transfer, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]
SEG_CONFIGS = REPO / "transfer" / "segmentation" / "configs"
D2_DIR = REPO / "transfer" / "detection"
VITDET_CONFIGS = D2_DIR / "configs" / "ViTDet"
DEMO_VITDET = VITDET_CONFIGS / "Demo_mask_rcnn_vitdet_t_SlotCon.py"


@pytest.fixture(scope="module")
def trunk() -> ViTTrunk:
    """A vit_tiny whose every tensor differs from its init (LayerNorms are no longer all ones and zeros)."""
    torch.manual_seed(0)
    model = build_vit("vit_tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def mmseg_models():
    install_mmcv_ext()
    pytest.importorskip("mmseg", reason="needs requirements-transfer.txt")
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return MODELS


@pytest.fixture(scope="module")
def d2():
    return pytest.importorskip("detectron2", reason="needs detectron2: bash transfer/detection/install_detectron2.sh")


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory) -> dict:
    return tiny_demo_sets(tmp_path_factory.mktemp("vit_demo"), num_train=4, num_eval=2)


def _block_outputs(trunk: ViTTrunk, x: torch.Tensor, blocks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """The trunk's token sequences after the given blocks (forward hooks), as [B, D, h, w] patch maps."""
    seen: dict[int, torch.Tensor] = {}
    handles = [trunk.blocks[i].register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out)) for i in blocks]
    try:
        with torch.no_grad():
            trunk(x)
    finally:
        for handle in handles:
            handle.remove()
    rows, cols = x.shape[-2] // trunk.output_stride, x.shape[-1] // trunk.output_stride
    return {i: out[:, 1:].reshape(x.shape[0], rows, cols, -1).permute(0, 3, 1, 2) for i, out in seen.items()}


def test_mmseg_vit_takes_the_export_key_for_key_and_computes_the_trunks_features(trunk, mmseg_models):
    state = trunk.state_dict()
    x = torch.randn(2, 3, 64, 64)
    backbone = mmseg_models.build(vit_weights.mmseg_backbone_config("vit_tiny", img_size=64))
    mapped = vit_weights.timm_to_mmseg(state, pos_grid=(4, 4))
    result = backbone.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(mapped) == len(state) == len(backbone.state_dict())
    assert torch.equal(mapped["layers.3.ln2.weight"], state["blocks.3.norm2.weight"])
    assert torch.equal(mapped["ln1.bias"], state["norm.bias"])
    backbone.eval()
    with torch.no_grad():
        outs = backbone(x)
        dense = trunk(x)
    assert [tuple(o.shape) for o in outs] == [(2, 192, 4, 4)] * 4
    torch.testing.assert_close(outs[3], dense, atol=2e-5, rtol=1e-4)  # final norm: the dense map itself
    blocks = _block_outputs(trunk, x, (2, 5, 8))
    for out, block in zip(outs[:3], (2, 5, 8), strict=True):  # un-normed intermediate blocks for the neck
        torch.testing.assert_close(out, blocks[block], atol=2e-5, rtol=1e-4)
    # Without pos_grid the 224 px table is kept and loads into a 224 px backbone just as strictly.
    default = mmseg_models.build(vit_weights.mmseg_backbone_config("vit_tiny", img_size=224))
    assert not default.load_state_dict(vit_weights.timm_to_mmseg(state), strict=True).missing_keys
    assert torch.equal(default.pos_embed, state["pos_embed"])


def test_mmseg_vit_configs_are_the_documented_backbone(mmseg_models):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    expected = {
        "ade20k/upernet_vit-b16-ln_mln_512x512_160k_ade20k.py": ("vit_base", {}),
        "ade20k/upernet_vit-s16-ln_mln_512x512_160k_ade20k.py": ("vit_small", {}),
        "ade20k/linear_vit-s16_512x512_160k_ade20k.py": ("vit_small", {"out_indices": (11,)}),
        "demo/upernet_vit-t16_128x128_demo.py": ("vit_tiny", {"img_size": 128}),
        "demo/linear_vit-t16_128x128_demo.py": ("vit_tiny", {"img_size": 128, "out_indices": (11,)}),
    }
    for name, (arch, kwargs) in expected.items():
        cfg = Config.fromfile(SEG_CONFIGS / name)
        backbone = cfg.model.backbone.to_dict()
        assert backbone.pop("init_cfg")["checkpoint"].startswith("SET_ME"), name  # never a silent fallback
        assert backbone == vit_weights.mmseg_backbone_config(arch, **kwargs), name
        width = vit_spec(arch)["embed_dim"]
        head = cfg.model.decode_head
        assert head.in_channels == ([cfg.model.neck.out_channels] * 4 if cfg.model.neck else width), name
    ade = Config.fromfile(SEG_CONFIGS / "ade20k/upernet_vit-b16-ln_mln_512x512_160k_ade20k.py")
    assert ade.train_cfg.max_iters == 160000 and ade.train_dataloader.batch_size * 8 == 16
    assert ade.optim_wrapper.optimizer.type == "AdamW" and ade.optim_wrapper.optimizer.lr == 6e-5
    # mmseg's 'norm' custom key matches no parameter of its ViT (LayerNorms are ln1/ln2), as the schedule says.
    demo = Config.fromfile(SEG_CONFIGS / "demo/upernet_vit-t16_128x128_demo.py")
    demo.model.backbone.init_cfg = None
    model = mmseg_models.build(demo.model)
    groups = build_optim_wrapper(model, demo.optim_wrapper).optimizer.param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {id(model.backbone.pos_embed), id(model.backbone.cls_token)}


def test_linear_demo_head_reads_exactly_the_trunks_dense_map(trunk, mmseg_models, tmp_path):
    from mmengine.config import Config

    weights = tmp_path / "vit_tiny_mm.pth"
    torch.save({"state_dict": vit_weights.timm_to_mmseg(trunk.state_dict(), pos_grid=(8, 8))}, weights)
    cfg = Config.fromfile(SEG_CONFIGS / "demo/linear_vit-t16_128x128_demo.py")
    cfg.model.backbone.init_cfg.checkpoint = str(weights)
    model = mmseg_models.build(cfg.model)
    model.init_weights()  # mmseg's own Pretrained loading, from the file
    model.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        features = model.extract_feat(x)
        logits = model.decode_head(features)
        dense = trunk(x)
    assert len(features) == 1
    torch.testing.assert_close(features[0], dense, atol=2e-5, rtol=1e-4)
    assert logits.shape == (1, 11, 8, 8)


def test_upernet_demo_trains_and_validates_from_an_exported_vit_tiny(trunk, mmseg_models, demo_sets, tmp_path):
    """As a user runs it: a SlotCon checkpoint, the original converter, this folder's train.py on the demo sets."""
    from transfer.segmentation import convert_pretrain_to_mm, train

    checkpoint = tmp_path / "vit_tiny.pth"
    state = {f"module.encoder_k.{k}": v for k, v in trunk.state_dict().items()}
    torch.save({"args": {"arch": "vit_tiny"}, "model": state}, checkpoint)
    weights = tmp_path / "vit_tiny_mm.pth"
    convert_pretrain_to_mm.main([str(checkpoint), str(weights)])
    exported = torch.load(weights, weights_only=True)["state_dict"]
    splits = demo_sets["splits"]
    classes = Path(splits["train"]["seg_list"]).parent / "classes.txt"
    work = tmp_path / "work"
    quick = ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
             "train_dataloader.batch_size=2", "log_level=WARNING"]  # fmt: skip
    for loader in ("train_dataloader", "val_dataloader"):
        quick += [f"{loader}.num_workers=0", f"{loader}.persistent_workers=False"]
    config = str(SEG_CONFIGS / "demo/upernet_vit-t16_128x128_demo.py")
    train.main([
        config, "--pretrained", str(weights), "--work-dir", str(work),
        "--classes", str(classes), "--train-images", splits["train"]["images"], "--train-labels",
        splits["train"]["labels"], "--train-list", splits["train"]["seg_list"], "--val-images", splits["val"]["images"],
        "--val-labels", splits["val"]["labels"], "--cfg-options", *quick,
    ])  # fmt: skip
    scores = json.loads((work / "results.json").read_text())
    assert 0 <= scores["mIoU"] <= 100 and 0 <= scores["aAcc"] <= 100
    saved = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)["state_dict"]
    for name in ("patch_embed.projection.weight", "layers.11.attn.attn.in_proj_weight", "ln1.weight"):
        moved = (saved[f"backbone.{name}"] - exported[name]).abs().max()
        assert 0 < moved < 1e-3, name  # trained two (warm-up) steps from the exported weights, not from scratch
    # pos_embed was resized from the 224 px grid (1 + 14 x 14) to the config's 128 px one (1 + 8 x 8) at load time.
    assert saved["backbone.pos_embed"].shape == (1, 65, 192)

    small = tmp_path / "vit_small.pth"
    other = build_vit("vit_small").state_dict()
    torch.save({"args": {"arch": "vit_small"}, "model": {f"module.encoder_k.{k}": v for k, v in other.items()}}, small)
    convert_pretrain_to_mm.main([str(small), str(tmp_path / "vit_small_mm.pth")])
    with pytest.raises(SystemExit) as excinfo:
        train.main([str(SEG_CONFIGS / "demo/upernet_vit-t16_128x128_demo.py"), "--pretrained",
                    str(tmp_path / "vit_small_mm.pth"), "--work-dir", str(work)])  # fmt: skip
    one_line_exit(excinfo, "vit_small_mm.pth", "(384, 3, 16, 16)", "(192, 3, 16, 16)")


def test_foreign_state_dicts_are_refused_and_archs_recognised(trunk):
    for arch in VIT_ARCHS:
        with torch.device("meta"):
            state = build_vit(arch).state_dict()
        assert vit_weights.arch_of(state) == arch
    state = trunk.state_dict()
    with pytest.raises(ValueError, match="'reg_token' is not a tensor of a plain timm VisionTransformer"):
        vit_weights.timm_to_mmseg({**state, "reg_token": torch.zeros(1, 4, 192)})
    with pytest.raises(ValueError, match="width 192, 12 blocks; the detectron2 ViT has patch 16, width 384"):
        vit_weights.timm_to_detectron2(state, vit_weights.detectron2_vit_kwargs("vit_small"))
    with pytest.raises(ValueError, match="residual"):
        vit_weights.timm_to_detectron2(
            state, {**vit_weights.detectron2_vit_kwargs("vit_tiny"), "residual_block_indexes": [2]}
        )
    # The ViTDet layout: global attention in every third block, windows elsewhere.
    assert vit_weights.vitdet_window_blocks(12) == [0, 1, 3, 4, 6, 7, 9, 10]


def test_detectron2_vit_takes_the_export_and_computes_the_trunk_without_cls_token(trunk, d2):
    from detectron2.modeling import ViT

    state = trunk.state_dict()

    def strip(mapped: dict) -> dict:
        assert all(k.startswith("backbone.net.") for k in mapped)
        return {k.removeprefix("backbone.net."): v for k, v in mapped.items()}

    # ViTDet's recipe at its size: 1024 px, 14 x 14 windows in 8 blocks, relative position tables everywhere.
    recipe = vit_weights.detectron2_vit_kwargs("vit_tiny")
    net = ViT(**recipe)
    mapped = strip(vit_weights.timm_to_detectron2(state, recipe))
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not {"cls_token", "norm.weight", "norm.bias"} & set(mapped)
    assert torch.equal(net.pos_embed, state["pos_embed"])  # 224 px table with its CLS slot, as pretrained
    assert mapped["blocks.0.attn.rel_pos_h"].shape == (2 * 14 - 1, 64)  # window block
    assert mapped["blocks.2.attn.rel_pos_w"].shape == (2 * 64 - 1, 64)  # global block: 1024 / 16
    assert not any(v.any() for k, v in mapped.items() if "rel_pos" in k)
    # Where it is comparable: global attention, the table resampled for 64 px, no CLS token, no final norm.
    small = vit_weights.detectron2_vit_kwargs("vit_tiny", img_size=64, pretrain_img_size=64, window_block_indexes=[])
    net = ViT(**small)
    assert not net.load_state_dict(strip(vit_weights.timm_to_detectron2(state, small)), strict=True).missing_keys
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)["last_feat"]
        tokens = trunk.patch_embed(x)  # [B, h, w, D] with dynamic_img_size
        batch, rows, cols, width = tokens.shape
        positions = vit_weights.resample_pos_embed(trunk.pos_embed, (rows, cols))[:, 1:]  # the trunk's own rule
        expected = trunk.blocks(tokens.reshape(batch, -1, width) + positions)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(batch, width, rows, cols), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("config", "arch"),
    [
        ("COCO_mask_rcnn_vitdet_b_100ep_SlotCon.py", "vit_base"),
        ("COCO_mask_rcnn_vitdet_s_100ep_SlotCon.py", "vit_small"),
    ],
)
def test_coco_vitdet_configs_build_the_vit_the_export_describes(d2, config, arch):
    """Names and shapes only: the trunk on the meta device costs nothing, the detectron2 ViT a second or two."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(VITDET_CONFIGS / config))
    with torch.device("meta"):
        state = build_vit(arch).state_dict()
    mapped = vit_weights.timm_to_detectron2(state, cfg.model.backbone.net)
    net = instantiate(cfg.model.backbone.net)
    assert {k: v.shape for k, v in mapped.items()} == {
        f"backbone.net.{k}": v.shape for k, v in net.state_dict().items()
    }
    # The ViTDet-B recipe (projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py).
    assert cfg.model.backbone.net.use_rel_pos and cfg.model.backbone.net.window_size == 14
    assert cfg.optimizer.params.lr_factor_func.keywords == {"num_layers": 12, "lr_decay_rate": 0.7}
    assert (cfg.train.max_iter, cfg.dataloader.train.total_batch_size) == (184375, 64)


def test_demo_vitdet_config_loads_the_export_with_every_backbone_tensor(trunk, d2, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from transfer.detection import lazy_train_net

    cfg = LazyConfig.load(str(DEMO_VITDET))
    mapped = vit_weights.timm_to_detectron2(trunk.state_dict(), cfg.model.backbone.net)
    weights = tmp_path / "vit_tiny_d2.pth"
    torch.save({"model": mapped}, weights)
    cfg.train.init_checkpoint = str(weights)
    lazy_train_net.check_weights(cfg, resume=False)  # passes: exactly the config's tensors
    model = instantiate(cfg.model)
    DetectionCheckpointer(model).load(str(weights))
    own = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.net.")}
    assert set(own) == set(mapped)  # 0 missing, 0 unexpected
    assert all(torch.equal(own[k], mapped[k]) for k in own)


def test_lazy_train_net_stops_bad_input_with_one_line(trunk, d2, demo_sets, tmp_path):
    from detectron2.data import DatasetCatalog

    from transfer.detection import lazy_train_net as ltn

    def load(*argv: str):
        return ltn.load_config(ltn.parse_args(["--config-file", str(DEMO_VITDET), *argv]))

    for argv, fragments in (
        (["train.max_itr=3"], ("no key 'train.max_itr'",)),
        (["train.max_iter"], ("expected key=value",)),
        (["--train-json", demo_sets["splits"]["train"]["coco_json"]], ("--train-json and --train-images go together",)),
        (["--train-json", str(tmp_path / "nope.json"), "--train-images", str(tmp_path)], ("nope.json: no such file",)),
    ):
        with pytest.raises(SystemExit) as excinfo:
            load(*argv)
        one_line_exit(excinfo, *fragments)
    with pytest.raises(SystemExit) as excinfo:
        ltn.load_config(ltn.parse_args(["--config-file", str(tmp_path / "none.py")]))
    one_line_exit(excinfo, "none.py: no such config file")

    cfg = load()
    with pytest.raises(SystemExit) as excinfo:  # the placeholder
        ltn.check_weights(cfg, resume=False)
    one_line_exit(excinfo, "train.init_checkpoint 'SET_ME", "python -m transfer.export")
    other = build_vit("vit_tiny_p8")  # another arch's export: patch 8 shapes, not the config's patch 16
    wrong = tmp_path / "vit_tiny_p8_d2.pth"
    kwargs = vit_weights.detectron2_vit_kwargs("vit_tiny_p8", img_size=128, window_size=4)
    torch.save({"model": vit_weights.timm_to_detectron2(other.state_dict(), kwargs)}, wrong)
    with pytest.raises(SystemExit) as excinfo:
        ltn.check_weights(load(f"train.init_checkpoint={wrong}"), resume=False)
    fragments = ("does not fit the config's model.backbone.net", "of other shapes", "net.patch_embed.proj.weight")
    one_line_exit(excinfo, *fragments)
    # No dataset given: the demo's placeholders are not registered, as in a fresh process (an earlier test in this
    # one may have registered them: set aside meanwhile).
    registered = {name: DatasetCatalog.pop(name) for name in (ltn.TRAIN_SET, ltn.VAL_SET) if name in DatasetCatalog}
    try:
        with pytest.raises(SystemExit) as excinfo:
            ltn.check_datasets(load())
    finally:
        DatasetCatalog.update(registered)
    one_line_exit(excinfo, "'custom_train'", "--train-json")
    if torch.cuda.device_count() == 0:
        with pytest.raises(SystemExit) as excinfo:
            ltn.check_devices(ltn.parse_args(["--config-file", "x.py"]), load(), ["lazy_train_net.py"])
        one_line_exit(excinfo, "no GPU", "run instead: python lazy_train_net.py train.device=cpu")
    with pytest.raises(SystemExit) as excinfo:
        ltn.check_devices(ltn.parse_args([]), load("train.device=cpu", "train.amp.enabled=True"), ["l.py"])
    one_line_exit(excinfo, "AMPTrainer", "train.amp.enabled=False")


def test_vitdet_demo_trains_then_evaluates_the_same_from_the_export(trunk, d2, demo_sets, tmp_path):
    from detectron2.config import LazyConfig

    from transfer.detection import convert_pretrain_to_d2
    from transfer.detection.lazy_train_net import read_weights

    cfg = LazyConfig.load(str(DEMO_VITDET))
    checkpoint, weights = tmp_path / "vit_tiny.pth", tmp_path / "vit_tiny_d2.pkl"
    state = {f"module.encoder_k.{k}": v for k, v in trunk.state_dict().items()}
    torch.save({"args": {"arch": "vit_tiny"}, "model": state}, checkpoint)
    # As a user exports it: the original converter, at the demo config's size and windows.
    convert_pretrain_to_d2.main([str(checkpoint), str(weights), "--image-size", "128", "--window-size", "4"])
    assert {k: tuple(v.shape) for k, v in read_weights(str(weights)).items()} == {
        k: tuple(v.shape) for k, v in vit_weights.timm_to_detectron2(trunk.state_dict(), cfg.model.backbone.net).items()
    }
    train, val = demo_sets["splits"]["train"], demo_sets["splits"]["val"]
    out = tmp_path / "run"
    data = ["--train-json", train["coco_json"], "--train-images", train["images"]]
    data += ["--val-json", val["coco_json"], "--val-images", val["images"]]
    flags = [sys.executable, "lazy_train_net.py", "--config-file", str(DEMO_VITDET), *data]  # flags first
    overrides = [f"train.output_dir={out}", "train.device=cpu", "dataloader.train.total_batch_size=2"]
    overrides += ["dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    command = [*flags, *overrides, f"train.init_checkpoint={weights}", "train.max_iter=3"]
    trained = subprocess.run(command, cwd=D2_DIR, capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Loading from {weights}" in log and "Starting training from iteration 0" in log
    after_training = json.loads((out / "results.json").read_text())
    assert set(after_training) == {"bbox", "segm"}
    # NaN: detectron2's "no predictions" (three iterations may find nothing)
    assert all(math.isnan(ap) or 0 <= ap <= 100 for ap in (after_training[t]["AP"] for t in ("bbox", "segm")))
    (out / "results.json").unlink()
    command = [*flags, "--eval-only", *overrides, f"train.init_checkpoint={out / 'model_final.pth'}"]
    evaluated = subprocess.run(command, cwd=D2_DIR, capture_output=True, text=True, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # model_final.pth is the trained model: evaluating it alone gives the numbers of the run's last evaluation.
    assert json.dumps(json.loads((out / "results.json").read_text())) == json.dumps(after_training)  # NaN-safe
