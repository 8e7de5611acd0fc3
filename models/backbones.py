"""One factory for every backbone family (ResNets on torchvision, ViTs on timm): ``--arch`` names a trunk that
turns images into a dense feature map.

A trunk is an ``nn.Module`` whose ``forward`` maps images [B, 3, H, W] to a dense map [B, C, H/s, W/s] (the map
SlotCon groups), that carries ``num_channels`` (C) and ``output_stride`` (s), and whose
``check_input_size(height, width)`` raises a one-line ``ValueError`` for an input it cannot take (a ViT needs
sides that are multiples of its patch). Everything in the project that depends on the architecture asks this
module and nothing else: training's flags, SlotCon's heads, the evaluations and pictures, the checkpoint
readers, the converters and the benchmarks. ``backbone_spec(arch)`` says what an arch is before anything is
built; ``build_backbone`` builds it; ``backbone_shapes`` gives its parameter names and shapes without building
weights.

A new family adds its own module (the trunk), its ``BackboneSpec`` entries and builder here, and its names in the
converters' maps (``transfer/``); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

from models import resnet, vit


@dataclass(frozen=True)
class BackboneSpec:
    """What one ``--arch`` is, known before building it.

    ``output_strides``: the strides of the dense map it can give, the default first (ResNets dilate their last
    stages for 16 and 8; a ViT's is its patch size). ``weight_names``: whose parameter names the trunk's
    ``state_dict`` carries, the names the converters map from and an export writes ("torchvision" for ResNets,
    "timm" for ViTs).
    """

    arch: str
    family: str
    output_strides: tuple[int, ...]
    weight_names: str
    drop_path: bool = False  # whether its blocks take stochastic depth (``--drop-path``)
    # SlotCon's heads on this trunk: "bn" (the reference's BatchNorm MLPs, for ResNets) or "none" (plain MLPs, as
    # DINO's and SlotMIM's heads on ViTs: a LayerNorm network trained without any batch statistics).
    head_norm: str = "bn"

    @property
    def default_output_stride(self) -> int:
        return self.output_strides[0]


# family -> builder(arch, output_stride, drop_path_rate) of a randomly initialised trunk
_BUILDERS: dict[str, Callable[[str, int, float], nn.Module]] = {
    "resnet": lambda arch, stride, drop_path_rate: resnet.build_resnet(arch, stride),
    "vit": lambda arch, stride, drop_path_rate: vit.build_vit(arch, drop_path_rate),
}
SPECS: dict[str, BackboneSpec] = {
    **{arch: BackboneSpec(arch, "resnet", resnet.OUTPUT_STRIDES, "torchvision") for arch in resnet.RESNET_ARCHS},
    # A ViT's map has the stride of its patches.
    **{
        arch: BackboneSpec(arch, "vit", (vit.vit_spec(arch)["patch_size"],), "timm", drop_path=True, head_norm="none")
        for arch in vit.VIT_ARCHS
    },
}
ARCHS = tuple(SPECS)


def backbone_spec(arch: str) -> BackboneSpec:
    """The spec of ``arch``; ``ValueError`` (one line, naming the choices) for a name no family has."""
    try:
        return SPECS[arch]
    except KeyError:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}") from None


def resolve_output_stride(arch: str, output_stride: int | None = None) -> int:
    """``output_stride`` checked against what ``arch`` can give, or its default for None."""
    spec = backbone_spec(arch)
    if output_stride is None:
        return spec.default_output_stride
    if output_stride not in spec.output_strides:
        choices = ", ".join(map(str, spec.output_strides))
        raise ValueError(f"--output-stride {output_stride}: --arch {arch} gives {choices}")
    return output_stride


def build_backbone(arch: str, output_stride: int | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised trunk of ``arch`` whose dense map has ``output_stride`` (default: the arch's), with
    stochastic depth ``drop_path_rate`` where the family has it."""
    spec = backbone_spec(arch)
    if drop_path_rate and not spec.drop_path:
        raise ValueError(f"--drop-path {drop_path_rate}: --arch {arch} has no stochastic depth")
    return _BUILDERS[spec.family](arch, resolve_output_stride(arch, output_stride), drop_path_rate)


def build_reference_classifier(arch: str) -> nn.Module:
    """The library's own supervised classifier of ``arch`` (torchvision's ResNet with its fc layer, timm's ViT
    with its 1000-class head), randomly initialised: the plain step the benchmarks time ours against."""
    family = backbone_spec(arch).family
    if family == "resnet":
        return getattr(torchvision.models, arch)()
    trunk_kwargs = vit.ViTTrunk(arch).timm_kwargs if family == "vit" else {}
    return timm.create_model(
        vit.vit_spec(arch)["timm_name"],
        pretrained=False,
        **{**trunk_kwargs, "num_classes": 1000, "dynamic_img_size": False},
    )


def backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``arch``'s ``state_dict`` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        trunk = build_backbone(arch)
    return {name: tuple(value.shape) for name, value in trunk.state_dict().items()}
