"""A stand-in for ``mmcv._ext``, the compiled-op library that mmcv-lite does not ship, for CPU runs and tests.

mmsegmentation imports ``mmcv.ops`` at import time, and every ``mmcv.ops`` module asserts that the names
it needs exist in ``mmcv._ext``. The ResNet backbones and FCN heads our transfer configs use call none of
them, so a module that answers every name is enough to import and train them with mmcv-lite (train.py
installs it when full mmcv is absent, and says so). NMS and average RoIAlign are forwarded to torchvision
(same box conventions); every other op raises ``NotImplementedError`` when called, so a model that reaches
a compiled op fails loudly instead of computing garbage.

``install()`` leaves a real ``mmcv._ext`` alone, so full mmcv always wins.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import Tensor

STUB_NAME = "mmcv._ext"


def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    if offset != 0:
        # mmcv's legacy "+1" box area convention has no torchvision equivalent.
        raise NotImplementedError("mmcv._ext stub: nms with offset=1 is not available without full mmcv")
    from torchvision.ops import nms

    return nms(boxes.float(), scores.float(), float(iou_threshold))


def _roi_align_forward(
    input: Tensor,
    rois: Tensor,
    output: Tensor,
    argmax_y: Tensor,
    argmax_x: Tensor,
    *,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    if pool_mode != 1:
        raise NotImplementedError("mmcv._ext stub: only average RoIAlign (pool_mode='avg') is available")
    from torchvision.ops import roi_align

    # mmcv's contract is to fill the preallocated output in place.
    output.copy_(
        roi_align(input, rois.to(input.dtype), (aligned_height, aligned_width), spatial_scale, sampling_ratio, aligned)
    )


def _roi_align_backward(
    grad_output: Tensor,
    rois: Tensor,
    argmax_y: Tensor,
    argmax_x: Tensor,
    grad_input: Tensor,
    *,
    aligned_height: int,
    aligned_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    pool_mode: int,
    aligned: bool,
) -> None:
    if pool_mode != 1:
        raise NotImplementedError("mmcv._ext stub: only average RoIAlign (pool_mode='avg') is available")
    batch, channels, height, width = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output,
        rois.to(grad_output.dtype),
        spatial_scale,
        aligned_height,
        aligned_width,
        batch,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
    )
    grad_input.copy_(grad)


_IMPLEMENTED = {"nms": _nms, "roi_align_forward": _roi_align_forward, "roi_align_backward": _roi_align_backward}


def _missing_op(name: str):
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"mmcv._ext stub: compiled op {name!r} needs full mmcv (pip install mmcv==2.1.0)")

    call.__name__ = name
    return call


class _ExtStub(types.ModuleType):
    """Answers every attribute, so mmcv's import-time ``hasattr`` checks pass."""

    is_stub = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # keep Python's own module protocol (e.g. __path__, __file__) honest
            raise AttributeError(name)
        return _IMPLEMENTED.get(name) or _missing_op(name)


def install() -> bool:
    """Register the stand-in as ``mmcv._ext`` unless a real compiled one is importable. True if installed."""
    if STUB_NAME in sys.modules:
        return bool(getattr(sys.modules[STUB_NAME], "is_stub", False))
    try:
        real = importlib.util.find_spec(STUB_NAME)
    except ModuleNotFoundError:  # mmcv itself is absent: nothing to stand in for
        return False
    if real is not None:
        return False
    stub = _ExtStub(STUB_NAME)
    # A spec without a loader: mmengine's "is full mmcv available?" probe then answers no, as it should.
    stub.__spec__ = importlib.machinery.ModuleSpec(STUB_NAME, loader=None)
    sys.modules[STUB_NAME] = stub
    return True
