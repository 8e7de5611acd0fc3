import math

import pytest
import torch
from torch import nn

from models.resnet import ARCHS, build_backbone


@pytest.mark.parametrize(
    "arch, channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("wide_resnet50_2", 2048)]
)
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


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_output_stride_keeps_every_weight_and_refines_the_map(arch, output_stride):
    strided, dilated = build_backbone(arch), build_backbone(arch, output_stride).eval()
    assert [(k, v.shape) for k, v in dilated.state_dict().items()] == [
        (k, v.shape) for k, v in strided.state_dict().items()
    ]
    assert dilated(torch.randn(1, 3, 64, 96)).shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert dilated.output_stride == output_stride


def test_output_stride_8_is_torchvisions_dilated_resnet50():
    """Same weights and BN statistics in torchvision's own replace_stride_with_dilation network: same C5 map."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ours = build_backbone("resnet50", 8).eval()
    for m in ours.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial BN so that every block contributes
            nn.init.normal_(m.weight)
            m.running_var.uniform_(0.5, 2.0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    reference.load_state_dict({**ours.state_dict(), "fc.weight": reference.fc.weight, "fc.bias": reference.fc.bias})
    trunk = nn.Sequential(*list(reference.children())[:-2])
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), trunk(x))


def test_basic_block_dilation_follows_the_deeplab_rule():
    net = build_backbone("resnet18", 8)
    # layer3: first block at the previous rate (1), then 2; layer4: first block at 2, then 4. No stride left.
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in (*net.layer3, *net.layer4)] == [
        (1, 1),
        (2, 2),
        (2, 2),
        (4, 4),
    ]
    assert all(c.padding == c.dilation for b in (*net.layer3, *net.layer4) for c in (b.conv1, b.conv2))
    assert all(
        m.stride == (1, 1) for layer in (net.layer3, net.layer4) for m in layer.modules() if isinstance(m, nn.Conv2d)
    )


def test_unknown_output_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="--output-stride 4"):
        build_backbone("resnet18", 4)
