"""A pretrained ViT trunk's weights (timm names) under mmsegmentation's and detectron2's names, and their configs.

Pure functions on state dicts: reading checkpoints and writing files is the converters' job. The input is
what ``models.vit.ViTTrunk.state_dict()`` holds, i.e. timm's names for a ``VisionTransformer`` with
``num_classes=0``::

    cls_token [1, 1, D]   pos_embed [1, 1 + (224/p)^2, D]   patch_embed.proj.{weight [D, 3, p, p], bias}
    blocks.N.norm1.*  blocks.N.attn.qkv.*  blocks.N.attn.proj.*  blocks.N.norm2.*  blocks.N.mlp.fc1.*
    blocks.N.mlp.fc2.*  norm.*

**mmsegmentation 1.x** ``mmseg.models.backbones.VisionTransformer`` (mmseg/models/backbones/vit.py, 1.2.2)
holds the same tensors under other names (mmcv's ``MultiheadAttention`` wraps ``nn.MultiheadAttention``,
whose ``in_proj`` is timm's ``qkv`` with the same q, k, v row blocks; its ``FFN`` is
``Sequential(Sequential(fc1, act, drop), fc2, drop)``)::

    patch_embed.proj       -> patch_embed.projection      (needs patch_bias=True: mmseg's default is False)
    blocks.N.norm1/norm2   -> layers.N.ln1/ln2
    blocks.N.attn.qkv.w/b  -> layers.N.attn.attn.in_proj_weight/in_proj_bias
    blocks.N.attn.proj     -> layers.N.attn.attn.out_proj
    blocks.N.mlp.fc1/fc2   -> layers.N.ffn.layers.0.0 / layers.N.ffn.layers.1
    norm                   -> ln1                          (needs final_norm=True)
    cls_token, pos_embed   -> unchanged                    (with_cls_token=True: pos_embed has the CLS slot)

With ``patch_bias=True``, ``final_norm=True`` and LayerNorm eps 1e-6 (timm's), every tensor loads: 0 missing,
0 unexpected, and the last output equals the trunk's dense map (``mmseg_backbone_config``).

**detectron2** ViTDet (``detectron2.modeling.ViT`` inside ``SimpleFeaturePyramid``, names under
``backbone.net.``) uses timm's block names unchanged (its blocks are built from timm's ``Mlp``) but differs
in three ways, and this is what the export and the shipped configs do about each:

* No CLS token and no final norm. ViTDet feeds patch tokens only and hands the last block's output to the
  feature pyramid, whose stages have their own LayerNorms. ``cls_token`` and ``norm.*`` are left out of the
  export (``DETECTRON2_DROPPED``) instead of being reported as unused; ``pos_embed`` keeps its CLS slot,
  which ``pretrain_use_cls_token=True`` expects and drops itself.
* Relative position biases (``use_rel_pos=True``: ``blocks.N.attn.rel_pos_h/w``, [2 s - 1, head dim] with s
  the window size in window blocks and img_size / patch in global ones), which our weights lack. The shipped
  configs keep them, as the ViTDet recipe does (detectron2's ``common/models/mask_rcnn_vitdet.py``), and the
  export writes them as zeros. That is the network ViTDet fine-tunes from weights without them (MAE's):
  detectron2 zero-initialises the tables itself (``rel_pos_zero_init=True``), and a zero bias leaves every
  attention weight as the pretrained blocks compute it; written out, they also make the load complete
  (0 missing, 0 unexpected) so that a real mismatch cannot hide among expected warnings. Dropping them
  (``use_rel_pos=False``) would leave the recipe. The tables' shapes follow the config (``img_size``,
  ``window_size``, ``window_block_indexes``): export with the kwargs of the config you train
  (``detectron2_vit_kwargs``, or the LazyConfig's ``model.backbone.net``). With ``use_rel_pos=False`` no
  tables are written.
* ``pos_embed`` is stored for ``pretrain_img_size`` (224 by default) and interpolated to each input's grid.

Position embeddings at another size: the trunk resamples its 224 px grid with timm's rule (bicubic,
antialiased); mmseg (when ``img_size`` differs from the checkpoint's grid, at load and at inference) and
detectron2 (on every forward) use plain bicubic interpolation, which gives other values. ``pos_grid``
(mmseg) and ``pretrain_img_size`` (detectron2) store the table already resampled by timm's rule for a grid,
so the fine-tuned network starts from exactly the positions the trunk uses at that size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from models.vit import PRETRAIN_IMG_SIZE, VIT_ARCHS, vit_spec

# timm name (inside blocks.N.) -> mmseg name (inside layers.N.)
_MMSEG_BLOCK_NAMES = {
    "norm1.weight": "ln1.weight",
    "norm1.bias": "ln1.bias",
    "attn.qkv.weight": "attn.attn.in_proj_weight",
    "attn.qkv.bias": "attn.attn.in_proj_bias",
    "attn.proj.weight": "attn.attn.out_proj.weight",
    "attn.proj.bias": "attn.attn.out_proj.bias",
    "norm2.weight": "ln2.weight",
    "norm2.bias": "ln2.bias",
    "mlp.fc1.weight": "ffn.layers.0.0.weight",
    "mlp.fc1.bias": "ffn.layers.0.0.bias",
    "mlp.fc2.weight": "ffn.layers.1.weight",
    "mlp.fc2.bias": "ffn.layers.1.bias",
}
_MMSEG_TOP_NAMES = {
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "patch_embed.proj.weight": "patch_embed.projection.weight",
    "patch_embed.proj.bias": "patch_embed.projection.bias",
    "norm.weight": "ln1.weight",
    "norm.bias": "ln1.bias",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
DETECTRON2_PREFIX = "backbone.net."
# timm tensors ViTDet has no place for (see the module docstring).
DETECTRON2_DROPPED = ("cls_token", "norm.weight", "norm.bias")
# ViTDet-B's global-attention blocks are 2, 5, 8 and 11 of 12 (common/models/mask_rcnn_vitdet.py): windows elsewhere.
_VITDET_GLOBAL_EVERY = 3


def _check_plain_vit(state: Mapping[str, Tensor]) -> None:
    """ValueError for a name that is not one of a plain timm ViT's (register tokens, layer scale, qk-norm...)."""
    for name in state:
        block = _BLOCK_KEY.match(name)
        if (block and block.group(2) not in _MMSEG_BLOCK_NAMES) or (not block and name not in _MMSEG_TOP_NAMES):
            raise ValueError(f"{name!r} is not a tensor of a plain timm VisionTransformer (num_classes=0)")
    missing = [name for name in ("pos_embed", "patch_embed.proj.weight") if name not in state]
    if missing:
        raise ValueError(f"not a timm ViT state dict: no {missing[0]!r}")


def arch_of(state: Mapping[str, Tensor]) -> str:
    """The ``models.vit`` arch of a timm-named ViT state dict, from its patch size, width and depth."""
    _check_plain_vit(state)
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = len({int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m})
    for arch in VIT_ARCHS:
        spec = vit_spec(arch)
        if (spec["patch_size"], spec["embed_dim"], spec["depth"]) == (patch, width, depth):
            return arch
    raise ValueError(f"a ViT with patch {patch}, width {width} and {depth} blocks is none of {', '.join(VIT_ARCHS)}")


def pos_grid_of(pos_embed: Tensor, num_prefix_tokens: int = 1) -> tuple[int, int]:
    """The (square) patch grid a [1, prefix + h*w, D] position table is stored for."""
    side = math.isqrt(pos_embed.shape[1] - num_prefix_tokens)
    if side * side != pos_embed.shape[1] - num_prefix_tokens:
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)} is not a square grid plus {num_prefix_tokens} prefix")
    return side, side


def resample_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """The position table for another patch grid, computed as the trunk computes it on the fly.

    timm's ``resample_abs_pos_embed`` (bicubic, antialiased; prefix slots copied), the call ``ViTTrunk``
    makes inside ``forward_features`` with ``dynamic_img_size=True``. Returns ``pos_embed`` itself when the
    grid is already ``grid``.
    """
    from timm.layers import resample_abs_pos_embed

    old = pos_grid_of(pos_embed, num_prefix_tokens)
    if tuple(grid) == old:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=list(grid), old_size=list(old), num_prefix_tokens=num_prefix_tokens
    )


def timm_to_mmseg(state: Mapping[str, Tensor], pos_grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """mmseg ``VisionTransformer`` names for a timm ViT state dict (same tensors; the table in the module docstring).

    ``pos_grid`` (rows, columns of patches): store ``pos_embed`` resampled by timm's rule for that grid,
    e.g. (32, 32) for 512 px crops at patch 16; the mmseg backbone then needs ``img_size`` = grid x patch.
    ``None`` keeps the 224 px grid (mmseg resizes it at load time to its ``img_size``, bicubic).
    """
    _check_plain_vit(state)
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        block = _BLOCK_KEY.match(name)
        if block:
            out[f"layers.{block.group(1)}.{_MMSEG_BLOCK_NAMES[block.group(2)]}"] = tensor
        else:
            out[_MMSEG_TOP_NAMES[name]] = tensor
    if pos_grid is not None:
        out["pos_embed"] = resample_pos_embed(state["pos_embed"], pos_grid)
    return out


def timm_to_detectron2(state: Mapping[str, Tensor], vit_kwargs: Mapping[str, Any]) -> dict[str, Tensor]:
    """detectron2 ViTDet names (``backbone.net.*``) for a timm ViT state dict, for the ViT built with ``vit_kwargs``.

    ``vit_kwargs`` are the ``detectron2.modeling.ViT`` arguments of the config (``detectron2_vit_kwargs``, or
    a LazyConfig's ``model.backbone.net``). Drops ``cls_token`` and the final ``norm``; keeps ``pos_embed``
    with its CLS slot, resampled by timm's rule when ``pretrain_img_size`` is not 224; adds zero
    ``rel_pos_h/w`` tables sized for the config when ``use_rel_pos`` (see the module docstring).
    """
    _check_plain_vit(state)
    patch = int(vit_kwargs.get("patch_size", 16))
    width = int(vit_kwargs.get("embed_dim", 768))
    depth = int(vit_kwargs.get("depth", 12))
    heads = int(vit_kwargs.get("num_heads", 12))
    found = (
        state["patch_embed.proj.weight"].shape[-1],
        state["patch_embed.proj.weight"].shape[0],
        len({int(m.group(1)) for m in map(_BLOCK_KEY.match, state) if m}),
    )
    if found != (patch, width, depth):
        raise ValueError(
            f"the weights are a ViT with patch {found[0]}, width {found[1]}, {found[2]} blocks; the "
            f"detectron2 ViT has patch {patch}, width {width}, {depth} blocks"
        )
    if list(vit_kwargs.get("residual_block_indexes", ())):
        raise ValueError("residual_block_indexes: the pretrained ViT has no residual (conv) blocks; use ()")
    if not vit_kwargs.get("pretrain_use_cls_token", True):
        raise ValueError("pretrain_use_cls_token=False: the pretrained pos_embed has a CLS slot; keep it True")
    if not vit_kwargs.get("use_abs_pos", True):
        raise ValueError("use_abs_pos=False would drop the pretrained position table; keep it True")
    out = {DETECTRON2_PREFIX + name: tensor for name, tensor in state.items() if name not in DETECTRON2_DROPPED}
    pretrain_img_size = int(vit_kwargs.get("pretrain_img_size", PRETRAIN_IMG_SIZE))
    grid = pretrain_img_size // patch
    out[DETECTRON2_PREFIX + "pos_embed"] = resample_pos_embed(state["pos_embed"], (grid, grid))
    if vit_kwargs.get("use_rel_pos", False):
        img_grid = int(vit_kwargs.get("img_size", 1024)) // patch
        window = int(vit_kwargs.get("window_size", 0))
        windowed = {int(i) for i in vit_kwargs.get("window_block_indexes", ())}
        dtype = state["pos_embed"].dtype
        for block in range(depth):
            # detectron2's Attention sizes its tables for the window in window blocks, the whole grid elsewhere.
            side = window if block in windowed and window > 0 else img_grid
            for axis in ("h", "w"):
                out[f"{DETECTRON2_PREFIX}blocks.{block}.attn.rel_pos_{axis}"] = torch.zeros(
                    2 * side - 1, width // heads, dtype=dtype
                )
    return out


def mmseg_backbone_config(
    arch: str,
    img_size: int | tuple[int, int] = 512,
    out_indices: Sequence[int] = (2, 5, 8, 11),
    drop_path_rate: float = 0.1,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """The mmseg ``VisionTransformer`` config dict that takes ``timm_to_mmseg``'s output key for key.

    Facts from mmseg 1.2.2's ``configs/_base_/models/upernet_vit-b16_ln_mln.py`` with the ``-ln`` variants'
    ``final_norm=True`` (``configs/vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py``:
    drop_path_rate 0.1): LN eps 1e-6, GELU, qkv bias, CLS token, bicubic position resizing, out_indices
    (2, 5, 8, 11) for UperNet. Ours adds ``patch_bias=True`` (timm's patch embedding has a bias, mmseg's
    default has none) and the width, heads and patch size of ``arch``. ``checkpoint``: a converted file for
    ``init_cfg`` (mmseg's backbone loads it itself, resizing ``pos_embed`` to ``img_size`` if needed).
    """
    spec = vit_spec(arch)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    config: dict[str, Any] = dict(
        type="VisionTransformer",
        img_size=size,
        patch_size=spec["patch_size"],
        patch_bias=True,
        in_channels=3,
        embed_dims=spec["embed_dim"],
        num_layers=spec["depth"],
        num_heads=spec["num_heads"],
        mlp_ratio=4,
        out_indices=tuple(out_indices),
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=drop_path_rate,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type="LN", eps=1e-6),
        act_cfg=dict(type="GELU"),
        norm_eval=False,
        interpolate_mode="bicubic",
    )
    if checkpoint is not None:
        config["init_cfg"] = dict(type="Pretrained", checkpoint=checkpoint)
    return config


def check_mmseg_vit(state: Mapping[str, Tensor], embed_dims: int, num_layers: int, patch_size: int) -> None:
    """ValueError naming the first problem unless ``state`` (mmseg names, ``timm_to_mmseg``'s output) has every
    tensor of an mmseg ``VisionTransformer`` with this width, depth and patch size."""
    expected = {f"layers.{i}.{name}" for i in range(num_layers) for name in _MMSEG_BLOCK_NAMES.values()}
    expected |= set(_MMSEG_TOP_NAMES.values())
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{len(missing)} tensors of the config's ViT are missing (e.g. {missing[0]})")
    patch = tuple(state["patch_embed.projection.weight"].shape)
    if patch != (embed_dims, 3, patch_size, patch_size):
        raise ValueError(
            f"its patch embedding is {patch}; the config's ViT needs ({embed_dims}, 3, {patch_size}, {patch_size}) "
            f"(another arch: set model.backbone.embed_dims / num_heads / patch_size, or export the right one)"
        )
    extra = sorted(set(state) - expected)
    if extra:
        raise ValueError(f"{len(extra)} tensors the config's ViT has no place for (e.g. {extra[0]}): a deeper ViT?")


def vitdet_window_blocks(depth: int) -> list[int]:
    """ViTDet's window-attention blocks: all but every third (2, 5, 8, 11 of 12 are global), as for ViT-B."""
    return [i for i in range(depth) if (i + 1) % _VITDET_GLOBAL_EVERY]


def detectron2_vit_kwargs(
    arch: str,
    img_size: int = 1024,
    window_size: int = 14,
    use_rel_pos: bool = True,
    drop_path_rate: float = 0.1,
    pretrain_img_size: int = PRETRAIN_IMG_SIZE,
    window_block_indexes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """``detectron2.modeling.ViT`` arguments for ``arch``, ViTDet's recipe otherwise.

    Facts from detectron2's ``configs/common/models/mask_rcnn_vitdet.py`` (ViT-B): img_size 1024, window 14
    in blocks 0, 1, 3, 4, 6, 7, 9, 10 (global in 2, 5, 8, 11), relative position biases, drop path 0.1,
    LayerNorm eps 1e-6, qkv bias, mlp ratio 4, no residual blocks, a 224 px pretraining grid with a CLS
    slot, output ``last_feat``. The width, depth, heads and patch size are ``arch``'s.
    """
    spec = vit_spec(arch)
    windows = vitdet_window_blocks(spec["depth"]) if window_block_indexes is None else list(window_block_indexes)
    return dict(
        img_size=img_size,
        patch_size=spec["patch_size"],
        embed_dim=spec["embed_dim"],
        depth=spec["depth"],
        num_heads=spec["num_heads"],
        drop_path_rate=drop_path_rate,
        window_size=window_size,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=windows,
        residual_block_indexes=[],
        use_rel_pos=use_rel_pos,
        pretrain_img_size=pretrain_img_size,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
    )
