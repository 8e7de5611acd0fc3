"""hubconf.py: torch.hub.load(REPO, "slotcon_ARCH", weights=..., source="local") returns the teacher's backbone."""

import argparse
from pathlib import Path

import pytest
import torch

from tests.transfer_helpers import save_slotcon_checkpoint
from transfer import export

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "r18.pth"
    return path, save_slotcon_checkpoint(path, "resnet18", seed=2)


def _load(name: str, **kwargs):
    return torch.hub.load(str(REPO), name, source="local", trust_repo=True, **kwargs)


def _assert_teacher(model: torch.nn.Module, teacher: dict) -> None:
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, teacher[name]), name


def test_every_arch_has_an_entry_point():
    import hubconf
    from models.backbones import ARCHS

    names = {n for n in dir(hubconf) if n.startswith("slotcon_") and callable(getattr(hubconf, n))}
    assert names == {f"slotcon_{arch}" for arch in ARCHS}


def test_a_training_checkpoint_an_official_one_and_an_export_give_the_teacher(resnet18, tmp_path):
    path, nets = resnet18
    _assert_teacher(_load("slotcon_resnet18", weights=str(path)), nets["teacher"])
    _assert_teacher(_load("slotcon_resnet18", weights=str(path), student=True), nets["student"])
    official = tmp_path / "official.pth"
    checkpoint = torch.load(path, weights_only=True)
    torch.save(dict(checkpoint, args=argparse.Namespace(arch="resnet18")), official)
    _assert_teacher(_load("slotcon_resnet18", weights=str(official)), nets["teacher"])
    export.export(path, "safetensors", tmp_path / "r18.safetensors")
    model = _load("slotcon_resnet18", weights=str(tmp_path / "r18.safetensors"))
    _assert_teacher(model, nets["teacher"])
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_a_url_downloads_once_into_the_hub_cache(resnet18, tmp_path, monkeypatch):
    path, nets = resnet18
    hub_dir = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    _assert_teacher(_load("slotcon_resnet18", weights=path.as_uri()), nets["teacher"])
    assert (hub_dir / "checkpoints" / path.name).read_bytes() == path.read_bytes()


def test_a_vit_entry_point_and_a_wrong_arch(tmp_path):
    path = tmp_path / "vit.pth"
    nets = save_slotcon_checkpoint(path, "vit_tiny", seed=3)
    model = _load("slotcon_vit_tiny", weights=str(path))
    _assert_teacher(model, nets["teacher"])
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 192, 2, 3)
    with pytest.raises(ValueError, match=r"vit\.pth: it holds a vit_tiny backbone, not a resnet50"):
        _load("slotcon_resnet50", weights=str(path))
    assert _load("slotcon_vit_small").num_channels == 384  # no weights: random, for a quick look
