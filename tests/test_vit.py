"""models/vit.py: the ViT trunks are timm's networks, and their dense map is timm's final patch tokens on the grid."""

from __future__ import annotations

import pytest
import timm
import torch

from models.vit import VIT_ARCHS, ViTTrunk, build_vit, vit_spec

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_ARCHS = ("vit_tiny", "vit_tiny_p8")  # full-size networks, cheap enough to run at 32-64 px


@pytest.fixture(scope="module")
def trunks() -> dict[str, ViTTrunk]:
    torch.manual_seed(0)
    return {arch: build_vit(arch, drop_path_rate=0.1).eval() for arch in SMALL_ARCHS}


def _timm_twin(trunk: ViTTrunk) -> torch.nn.Module:
    """timm's own model of the same name, holding the trunk's weights (strict load)."""
    model = timm.create_model(trunk.timm_name, pretrained=False, **trunk.timm_kwargs)
    result = model.load_state_dict(trunk.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_dense_map_is_timms_final_patch_tokens_on_the_grid(trunks, arch):
    trunk = trunks[arch]
    twin = _timm_twin(trunk)
    assert trunk.timm_kwargs["num_classes"] == 0 and trunk.timm_kwargs["dynamic_img_size"] is True
    x = torch.randn(2, 3, 48, 32)  # not square: rows and columns must not be swapped
    patch = trunk.output_stride
    with torch.no_grad():
        dense = trunk(x)
        tokens = twin.forward_features(x)
    rows, cols = 48 // patch, 32 // patch
    assert dense.shape == (2, trunk.num_channels, rows, cols)
    assert tokens.shape == (2, 1 + rows * cols, trunk.num_channels)  # one CLS token, then the patches row by row
    for i in range(rows):
        for j in range(cols):
            assert torch.equal(dense[:, :, i, j], tokens[:, 1 + i * cols + j])
    # The final LayerNorm is included (at its initial weight 1, bias 0): every token has mean 0 and variance 1.
    assert torch.equal(twin.norm.weight, torch.ones(trunk.num_channels)) and not twin.norm.bias.any()
    torch.testing.assert_close(dense.mean(dim=1), torch.zeros(2, rows, cols), atol=1e-5, rtol=0)
    torch.testing.assert_close(dense.var(dim=1, unbiased=False), torch.ones(2, rows, cols), atol=1e-3, rtol=0)


@pytest.mark.parametrize("arch", VIT_ARCHS)
def test_state_dict_is_timms_for_every_arch(arch):
    """Names and shapes equal those of timm.create_model(timm_name, num_classes=0, ...) (built on the meta device)."""
    spec = vit_spec(arch)
    with torch.device("meta"):
        trunk = build_vit(arch)
        twin = timm.create_model(trunk.timm_name, pretrained=False, **trunk.timm_kwargs)
    ours = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    patch, width = spec["patch_size"], spec["embed_dim"]
    assert (trunk.output_stride, trunk.num_channels) == (patch, width)
    assert ours["patch_embed.proj.weight"] == (width, 3, patch, patch)
    assert ours["pos_embed"] == (1, 1 + (224 // patch) ** 2, width)  # timm's 224 px grid and the CLS slot
    assert not any(k.startswith(("head", "fc_norm")) for k in ours) and "norm.weight" in ours
    assert trunk.timm_name.endswith(f"patch{patch}_224") or arch == "vit_tiny_p8"


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_crops_that_are_multiples_of_the_patch_work_and_others_say_why_not(trunks, arch):
    trunk = trunks[arch]
    patch = trunk.output_stride
    with torch.no_grad():
        for height, width in ((32, 32), (48, 48), (64, 64), (64, 32)):
            assert trunk(torch.zeros(1, 3, height, width)).shape == (
                1,
                trunk.num_channels,
                height // patch,
                width // patch,
            )
    for height, width in ((40 if patch == 16 else 36, 64), (64, patch // 2)):
        with pytest.raises(ValueError, match=f"multiples of the patch size {patch}") as excinfo:
            trunk(torch.zeros(1, 3, height, width))
        assert f"{height}x{width}" in str(excinfo.value)
    with pytest.raises(ValueError, match=r"e\.g\. 32 or 48 instead of 40"):
        trunks["vit_tiny"](torch.zeros(1, 3, 40, 32))


def test_every_parameter_gets_a_gradient_and_drop_path_follows_the_rate(trunks):
    """The final norm and the CLS token are in the forward pass (no unused parameters under DDP)."""
    trunk = trunks["vit_tiny"].train()
    try:
        trunk(torch.randn(2, 3, 32, 32)).square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())
    finally:
        trunk.zero_grad(set_to_none=True)
        trunk.eval()
    # timm's stochastic depth rule: linear from 0 (first block, no DropPath) to the rate (last block).
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in trunk.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 12), rtol=0, atol=1e-7)
    assert trunk.timm_kwargs["drop_path_rate"] == 0.1


def test_unknown_arch_and_bad_rate_are_refused():
    with pytest.raises(ValueError, match="unknown --arch 'vit_huge'; choose one of vit_tiny, vit_small"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match=r"drop_path_rate 1\.5"):
        build_vit("vit_tiny", drop_path_rate=1.5)
