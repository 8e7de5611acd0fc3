"""torch.hub entry points: the teacher backbone of a SlotCon checkpoint, ready for dense features.

    model = torch.hub.load(REPO_DIR, "slotcon_resnet50", weights="output/run/current.pth", source="local")
    features = model(images)  # [B, C, H/s, W/s]: C5 for a ResNet, the patch tokens' grid for a ViT

``weights``: a training checkpoint of ours, an official full SlotCon checkpoint, or a ``python -m transfer.export
--to safetensors`` file; a path, or a URL that torch.hub downloads once into its cache (``torch.hub.get_dir()``).
None gives random weights. ``student=True`` takes the student from a training checkpoint. The entry point's arch
must be the checkpoint's; the output stride is the one it was trained with. There is one entry point per
``--arch`` of ``models.backbones``: ``slotcon_resnet18`` ... ``slotcon_resnet152``, ``slotcon_vit_tiny``,
``slotcon_vit_small``, ``slotcon_vit_base`` and their ``_p8`` variants.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from models.backbones import ARCHS, build_backbone
from models.weights import load_backbone

dependencies = ["torch", "torchvision", "timm", "safetensors"]


def _local(weights: str) -> Path:
    """A path as it is; a URL downloaded once into torch.hub's cache (``file://`` URLs included)."""
    if "://" not in weights:
        return Path(weights)
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights).path).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights, str(cached), progress=False)
    return cached


def _entry_point(arch: str):
    def load(weights: str | None = None, student: bool = False) -> nn.Module:
        if weights is None:
            return build_backbone(arch).eval()
        return load_backbone(_local(weights), student=student, arch=arch)

    load.__name__ = f"slotcon_{arch}"
    load.__doc__ = f"The SlotCon teacher's {arch} backbone (see the module docstring for ``weights``)."
    return load


for _arch in ARCHS:
    globals()[f"slotcon_{_arch}"] = _entry_point(_arch)
