"""ResNet trunks that stop at C5, with torchvision parameter names and an optional dilated output stride.

The names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``) are what official SlotCon checkpoints,
detectron2/mmseg converters and torchvision's detection models expect, so we build on torchvision's
``ResNet`` and drop its classifier. torchvision's init is the one SlotCon uses: He fan-out normal for
convs, BN weight 1 / bias 0, and (``zero_init_residual``) a zero weight on the last BN of every block.

``output_stride`` 16 or 8 dilates the last one or two stages instead of striding them, as dense-prediction
backbones (DeepLab, mmseg's ``-d8``/``-d16`` models) do: every weight keeps its name and shape, so
checkpoints and converters do not change, and the C5 map gets 2x or 4x the resolution.
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
RESNET_ARCHS = tuple(_ARCHS)
OUTPUT_STRIDES = (32, 16, 8)  # the first is the default


def _dilate_stage(stage: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a stride-2 stage into a stride-1 one whose 3x3 convs are dilated by ``dilation``.

    As torchvision's ``replace_stride_with_dilation``, which BasicBlock does not support: the first
    block's 3x3 convs keep the previous stage's dilation, the later blocks take the new one, and the
    padding equals the dilation so the map size is kept. Both 3x3 convs of a BasicBlock are dilated,
    so every conv sees the image region it would see in the strided network.
    """
    for index, block in enumerate(stage):
        rate = previous_dilation if index == 0 else dilation
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)


class ResNetTrunk(ResNet):
    """A ResNet without global pooling and classifier: ``forward`` returns the C5 map
    [B, C, H/s, W/s] for output stride s (32 by default)."""

    def __init__(self, block: type[nn.Module], layers: list[int], output_stride: int = 32, **kwargs) -> None:
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"--output-stride {output_stride}: choose one of {', '.join(map(str, OUTPUT_STRIDES))}")
        super().__init__(block, layers, zero_init_residual=True, **kwargs)
        del self.avgpool, self.fc
        self.output_stride = output_stride
        # Stride 16 dilates layer4 (rate 2); stride 8 also layer3 (rates 2, then 4).
        dilation = 1
        for stage in {32: (), 16: (self.layer4,), 8: (self.layer3, self.layer4)}[output_stride]:
            _dilate_stage(stage, 2 * dilation, dilation)
            dilation *= 2
        # Read the width off the built network rather than a table of names.
        self.num_channels: int = [m for m in self.layer4.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    def check_input_size(self, height: int, width: int) -> None:
        """Any size works (the map rounds up); the trunk protocol of ``models.backbones`` asks every trunk."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_resnet(arch: str, output_stride: int = 32) -> ResNetTrunk:
    """A randomly initialised ResNet trunk by name (one of ``RESNET_ARCHS``) with C5 at ``output_stride``.

    Called through ``models.backbones.build_backbone``, which checks the name and the stride first.
    """
    block, layers, kwargs = _ARCHS[arch]
    return ResNetTrunk(block, layers, output_stride=output_stride, **kwargs)
