import math

import pytest
import torch
from torch import nn

from models.resnet import ARCHS, build_backbone


@pytest.mark.parametrize("arch, channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                                            ("wide_resnet50_2", 2048)])
def test_c5_map_has_stride_32_and_reported_width(arch, channels):
    net = build_backbone(arch).eval()
    out = net(torch.randn(1, 3, 96, 64))
    assert out.shape == (1, channels, 3, 2)
    assert net.num_channels == channels


def test_every_arch_builds_without_classifier():
    for arch in ARCHS:
        names = [n for n, _ in build_backbone(arch).named_parameters()]
        assert not any(n.startswith(("fc.", "avgpool")) for n in names), arch


def test_last_bn_of_each_block_is_zero_and_convs_are_he_fan_out():
    torch.manual_seed(0)
    net = build_backbone("resnet50")
    for name, module in net.named_modules():
        if name.endswith("bn3"):
            assert torch.count_nonzero(module.weight) == 0, name
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    conv = net.layer3[0].conv2  # 256 -> 256, 3x3: fan_out = 9 * 256
    expected_std = math.sqrt(2 / (3 * 3 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


def test_basic_block_zero_init_is_bn2():
    net = build_backbone("resnet18")
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for layer in (net.layer1, net.layer4) for block in layer)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown --arch"):
        build_backbone("resnet18_d")
