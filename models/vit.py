"""Vision Transformer trunks for SlotCon, built with timm, that return a dense patch-feature map.

SlotCon groups *pixels* of a feature map, so a ViT must hand over a map, not a class token. ``forward(x)``
runs timm's ``forward_features`` (patch embedding, absolute position embedding, the blocks, the final
LayerNorm) and returns its patch tokens, without the prefix tokens (the CLS token; timm's register tokens
where a model has them, ``num_prefix_tokens`` in all), laid out as the image grid:

    dense map [B, D, H/p, W/p],  map[b, :, i, j] = norm(z_L)[b, prefix + i * (W/p) + j]

for patch size p, embedding width D and the last block's output z_L (timm flattens the patch grid row by
row). The map's stride is the patch size, the ResNet trunks' ``output_stride``.

Why the final norm is included: it is what timm, and the self-supervised ViTs built on it (DINO, iBOT,
MoCo v3), call the patch features, so evaluations written for those models read the same tensor. A pre-norm
transformer's residual stream is not normalised: its scale grows with depth and a few channels dominate,
while the projector after the trunk (like the one after a ResNet's C5, whose last op is a BN + ReLU) expects
features on a common scale. And every parameter then takes part in pretraining: a final norm left out of the
forward pass would get no gradient (DDP would need ``find_unused_parameters``) and would be exported
untrained. mmsegmentation's ``VisionTransformer(final_norm=True)`` applies the same norm to its last output,
so the transfer configs see the map pretraining saw (transfer/vit_weights.py).

Each trunk is a timm ``VisionTransformer`` built as ``timm.create_model(timm_name, num_classes=0,
dynamic_img_size=True, ...)`` builds it, so its state_dict has exactly timm's names (``cls_token``,
``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``). ``dynamic_img_size=True`` lets any crop whose sides are multiples of the patch size through:
``pos_embed`` keeps timm's 224 px grid (14x14 for patch 16, 28x28 for patch 8) and timm resamples it to the
input's grid (bicubic, antialiased) on every call. Weights come from scratch here (no hub downloads).

Architectures (timm ``vit_*`` registry entries; patch 8 is for small images, where a 16 px grid is too coarse):

    arch          timm model              patch  width  depth  heads
    vit_tiny      vit_tiny_patch16_224     16     192    12     3
    vit_small     vit_small_patch16_224    16     384    12     6
    vit_base      vit_base_patch16_224     16     768    12    12
    vit_tiny_p8   vit_tiny_patch16_224      8     192    12     3   (timm has no tiny/8: tiny/16, patch_size=8)
    vit_small_p8  vit_small_patch8_224      8     384    12     6
    vit_base_p8   vit_base_patch8_224       8     768    12    12
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor


@dataclass(frozen=True)
class _Arch:
    """One row of the table above: the timm entry and the shape arguments its registry function passes."""

    timm_name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    # True where the timm entry has another patch size and create_model needs patch_size=... to match.
    patch_override: bool = False


_ARCHS: dict[str, _Arch] = {
    "vit_tiny": _Arch("vit_tiny_patch16_224", 16, 192, 12, 3),
    "vit_small": _Arch("vit_small_patch16_224", 16, 384, 12, 6),
    "vit_base": _Arch("vit_base_patch16_224", 16, 768, 12, 12),
    "vit_tiny_p8": _Arch("vit_tiny_patch16_224", 8, 192, 12, 3, patch_override=True),
    "vit_small_p8": _Arch("vit_small_patch8_224", 8, 384, 12, 6),
    "vit_base_p8": _Arch("vit_base_patch8_224", 8, 768, 12, 12),
}
VIT_ARCHS = tuple(_ARCHS)
# The grid pos_embed is stored at: every timm entry above is a 224 px model.
PRETRAIN_IMG_SIZE = 224


class ViTTrunk(VisionTransformer):
    """A timm ViT (``num_classes=0``, ``dynamic_img_size=True``) whose ``forward`` returns the dense map.

    Attributes: ``arch``, ``num_channels`` (the embedding width D), ``output_stride`` (the patch size),
    ``num_heads``, ``depth``, ``timm_name`` and ``timm_kwargs``, with which
    ``timm.create_model(timm_name, pretrained=False, **timm_kwargs)`` builds the same network (same names,
    shapes and forward pass). Everything else (``forward_features``, ``no_weight_decay``,
    ``set_grad_checkpointing``...) is timm's.
    """

    def __init__(self, arch: str, drop_path_rate: float = 0.0) -> None:
        if arch not in _ARCHS:
            raise ValueError(f"unknown ViT arch {arch!r}; choose one of {', '.join(VIT_ARCHS)}")
        spec = _ARCHS[arch]
        timm_kwargs: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, "drop_path_rate": drop_path_rate}
        if spec.patch_override:
            timm_kwargs["patch_size"] = spec.patch_size
        # What timm's registry function passes (its model_args), with our kwargs on top: the rest of
        # VisionTransformer's defaults (qkv bias, CLS token, final norm, timm's init) are the same either way.
        super().__init__(
            img_size=PRETRAIN_IMG_SIZE,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
        )
        self.arch = arch
        self.timm_name = spec.timm_name
        self.timm_kwargs = timm_kwargs
        self.num_channels: int = spec.embed_dim
        self.output_stride: int = spec.patch_size
        self.num_heads: int = spec.num_heads
        self.depth: int = spec.depth

    def check_input_size(self, height: int, width: int) -> None:
        """ValueError unless both sides are positive multiples of the patch size (timm would assert)."""
        patch = self.output_stride
        bad = [side for side in (height, width) if side < patch or side % patch]
        if bad:
            side = bad[0]
            below = side // patch * patch
            sizes = f"{below} or {below + patch}" if below else f"{patch}"
            raise ValueError(
                f"{self.arch}: input {height}x{width} px is not a grid of {patch} px patches; crop "
                f"sides must be multiples of the patch size {patch} (e.g. {sizes} instead of {side})"
            )

    def forward(self, x: Tensor) -> Tensor:
        """The dense map [B, D, H/p, W/p]: ``forward_features``' final-normed patch tokens, prefix tokens dropped."""
        height, width = x.shape[-2:]
        self.check_input_size(height, width)
        tokens = self.forward_features(x)[:, self.num_prefix_tokens :]
        grid = (height // self.output_stride, width // self.output_stride)
        # timm orders patch tokens row-major over the grid: [B, h*w, D] -> [B, D, h, w]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.num_channels, *grid)


def build_vit(arch: str, drop_path_rate: float = 0.0) -> ViTTrunk:
    """A randomly initialised ViT trunk by name (one of ``VIT_ARCHS``), stochastic depth up to ``drop_path_rate``.

    timm spreads the drop-path rate linearly over the blocks, from 0 at the first to ``drop_path_rate`` at
    the last; it is active in ``train()`` mode only.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(VIT_ARCHS)}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate {drop_path_rate}: must be in [0, 1)")
    return ViTTrunk(arch, drop_path_rate=drop_path_rate)


def vit_spec(arch: str) -> dict[str, Any]:
    """The shape of ``arch`` without building it: timm_name, patch_size, embed_dim, depth, num_heads."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown ViT arch {arch!r}; choose one of {', '.join(VIT_ARCHS)}")
    spec = _ARCHS[arch]
    return {
        "timm_name": spec.timm_name,
        "patch_size": spec.patch_size,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
    }
