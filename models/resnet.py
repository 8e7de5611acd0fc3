"""ResNet trunks that stop at C5 (stride 32), with torchvision parameter names.

The names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``) are what official SlotCon checkpoints,
detectron2/mmseg converters and torchvision's detection models expect, so we build on torchvision's
``ResNet`` and drop its classifier. torchvision's init is the one SlotCon uses: He fan-out normal for
convs, BN weight 1 / bias 0, and (``zero_init_residual``) a zero weight on the last BN of every block.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

# arch -> (block, blocks per stage, extra ResNet kwargs)
_ARCHS: dict[str, tuple[type[nn.Module], list[int], dict]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], {"groups": 32, "width_per_group": 8}),
}
ARCHS = tuple(_ARCHS)


class ResNetTrunk(ResNet):
    """A ResNet without global pooling and classifier: ``forward`` returns the C5 map [B, C, H/32, W/32]."""

    def __init__(self, block: type[nn.Module], layers: list[int], **kwargs) -> None:
        super().__init__(block, layers, zero_init_residual=True, **kwargs)
        del self.avgpool, self.fc
        # Read the width off the built network rather than a table of names.
        self.num_channels: int = [m for m in self.layer4.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(arch: str) -> ResNetTrunk:
    """Build a randomly initialised ResNet trunk by name (one of ``ARCHS``)."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    block, layers, kwargs = _ARCHS[arch]
    return ResNetTrunk(block, layers, **kwargs)
