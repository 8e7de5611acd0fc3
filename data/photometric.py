"""The photometric half of SlotCon's augmentation, batched, with per-sample random parameters.

Per view (BYOL-style asymmetric pipeline of the reference):
  colour jitter with p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in a random order),
  grayscale with p=0.2, Gaussian blur sigma ~ U(0.1, 2) with p=1.0 (view 1) / 0.1 (view 2),
  solarize (threshold 128) with p=0 (view 1) / 0.2 (view 2), then ImageNet normalisation.
The distributions are torchvision's ``ColorJitter`` / ``RandomGrayscale`` and the reference's blur and
solarize. Samples a transform does not apply to get its identity parameters.

Two forms compute the same images: on a GPU every op runs on the whole batch with fixed shapes (no host
synchronisation; ``torch.compile`` fuses it), on a CPU each image runs only the ops it drew, in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
_BLUR_MAX_SIGMA = 2.0
_BLUR_RADIUS = 6  # 3 sigma at the largest sigma
SOLARIZE_THRESHOLD = 128 / 255  # PIL's solarize inverts pixels >= 128
# Jitter ops in the index order used by ``order``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class ViewAugmentation:
    """Probabilities and ranges of one view's photometric augmentation."""

    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, _BLUR_MAX_SIGMA)
    solarize_prob: float = 0.0


VIEW1 = ViewAugmentation(blur_prob=1.0, solarize_prob=0.0)
VIEW2 = ViewAugmentation(blur_prob=0.1, solarize_prob=0.2)


@dataclass
class PhotometricParams:
    """Per-sample parameters of one view; identity values where a transform is not applied."""

    factors: Tensor  # [B, 4] brightness, contrast, saturation (multiplicative), hue (shift)
    order: Tensor  # [B, 4] a permutation of the four jitter ops
    grayscale: Tensor  # [B] bool
    blur_sigma: Tensor  # [B], 0 = no blur
    solarize: Tensor  # [B] bool


def sample_params(
    cfg: ViewAugmentation, batch: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> PhotometricParams:
    """Draw one view's parameters for a batch from ``generator`` (which must live on ``device``)."""

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device) * (high - low) + low

    def bernoulli(p: float) -> Tensor:
        return torch.rand(batch, generator=generator, device=device) < p

    jitter = bernoulli(cfg.jitter_prob)[:, None]
    factors = torch.stack(
        [
            uniform(1 - cfg.brightness, 1 + cfg.brightness, batch),
            uniform(1 - cfg.contrast, 1 + cfg.contrast, batch),
            uniform(1 - cfg.saturation, 1 + cfg.saturation, batch),
            uniform(-cfg.hue, cfg.hue, batch),
        ],
        dim=1,
    )
    identity = torch.ones(4, device=device)
    identity[HUE] = 0.0
    factors = torch.where(jitter, factors, identity)
    order = torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1)
    grayscale = bernoulli(cfg.grayscale_prob)
    blur = bernoulli(cfg.blur_prob)
    sigma = torch.where(blur, uniform(*cfg.blur_sigma, batch), 0.0)
    solarize = bernoulli(cfg.solarize_prob)
    return PhotometricParams(factors, order, grayscale, sigma, solarize)


def _per_sample(x: Tensor) -> Tensor:
    return x.view(-1, 1, 1, 1)


def grayscale(img: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    r, g, b = img.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(img: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * img + (1 - factor) * other per sample, clamped to [0, 1] (torchvision's ``_blend``): brightness
    blends with 0, contrast with the mean grey level, saturation with the grey image."""
    f = _per_sample(factor)
    return (f * img + (1 - f) * other).clamp_(0, 1)


def _blend_one(x: Tensor, other: Tensor | float, factor: float) -> Tensor:
    """``_blend`` in place, for one image and a Python factor."""
    x.mul_(factor)
    if isinstance(other, Tensor):
        x.add_(other, alpha=1.0 - factor)
    else:
        x.add_((1.0 - factor) * other)
    return x.clamp_(0, 1)


def adjust_hue(img: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` [B] (a fraction of the colour wheel, in [-0.5, 0.5]) as torchvision does
    through HSV, written with elementwise max/min and one division (cheaper than channel reductions)."""
    r, g, b = img.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    # Hue in sixths of the wheel; grey pixels (chroma 0) have a zero numerator, hence hue 0.
    numerator = torch.where(
        maxc == r, g - b, torch.where(maxc == g, (b - r).add_(chroma, alpha=2.0), (r - g).add_(chroma, alpha=4.0))
    )
    sixths = numerator.div_(chroma.clamp(min=1e-12)).add_(6.0 * shift.view(-1, 1, 1))

    # HSV -> RGB with the piecewise-linear formula f(n) = v - v s clamp(min(k, 4 - k), 0, 1), v s = chroma.
    def channel(n: float) -> Tensor:
        k = torch.remainder(sixths + n, 6.0)
        return maxc - torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(chroma)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], dim=1)


def gaussian_blur(img: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (0 = identity), replicate padding.

    Each pass is a sum of 13 shifted copies weighted per sample: for one 224 px image on a CPU (the CPU form)
    this is three times faster than a grouped convolution, and under ``torch.compile`` it fuses into one
    kernel per pass.
    """
    b, _, h, w = img.shape
    offsets = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, device=img.device, dtype=img.dtype)
    safe_sigma = sigma.clamp(min=1e-3).to(img.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / safe_sigma) ** 2)
    delta = (offsets == 0).to(img.dtype).expand(b, -1)
    kernel = torch.where((sigma > 0)[:, None], kernel / kernel.sum(dim=1, keepdim=True), delta)
    weights = kernel.view(b, -1, 1, 1, 1).unbind(dim=1)
    padded = F.pad(img, (_BLUR_RADIUS, _BLUR_RADIUS, 0, 0), mode="replicate")
    rows = padded[..., :w] * weights[0]
    for j, weight in enumerate(weights[1:], start=1):
        rows = rows.addcmul_(padded[..., j : j + w], weight)
    padded = F.pad(rows, (0, 0, _BLUR_RADIUS, _BLUR_RADIUS), mode="replicate")
    out = padded[..., :h, :] * weights[0]
    for j, weight in enumerate(weights[1:], start=1):
        out = out.addcmul_(padded[..., j : j + h, :], weight)
    return out


_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def _jitter_fixed_shape(img: Tensor, params: PhotometricParams) -> Tensor:
    """Colour jitter with fixed shapes and no host synchronisation (the GPU form).

    Brightness, contrast and saturation are all ``blend(img, other, f)`` with ``other`` = 0, the mean grey
    level or the grey image, so each of the four steps is one blend whose ``other`` is chosen per sample
    (``f = 1`` where the sample's op at this step is the hue), followed by the hue rotation where chosen.
    """
    hue = params.factors[:, HUE]
    blend_factor = torch.cat([params.factors[:, :HUE], torch.ones_like(hue)[:, None]], dim=1)  # 1 at the hue
    for step in range(4):
        op = params.order[:, step]
        gray = grayscale(img)
        other = torch.where(
            _per_sample(op == SATURATION),
            gray,
            torch.where(_per_sample(op == CONTRAST), gray.mean(dim=(1, 2, 3), keepdim=True), 0.0),
        )
        img = _blend(img, other, blend_factor.gather(1, op[:, None]))
        # The HSV round trip is not an exact identity: samples that do not rotate keep their pixels.
        rotate = _per_sample((op == HUE) & (hue != 0))
        img = torch.where(rotate, adjust_hue(img, torch.where(op == HUE, hue, 0.0)), img)
    return img


def _apply_fixed_shape(img: Tensor, params: PhotometricParams) -> Tensor:
    img = _jitter_fixed_shape(img, params)
    img = torch.where(_per_sample(params.grayscale), grayscale(img).expand_as(img), img)
    img = gaussian_blur(img, params.blur_sigma)
    return torch.where(_per_sample(params.solarize) & (img >= SOLARIZE_THRESHOLD), 1.0 - img, img)


def _luma_one(x: Tensor) -> Tensor:
    """``grayscale`` of one image, [3, H, W] -> [1, H, W], with fewer temporaries."""
    return (x[0:1] * _GRAY_WEIGHTS[0]).add_(x[1:2], alpha=_GRAY_WEIGHTS[1]).add_(x[2:3], alpha=_GRAY_WEIGHTS[2])


def _apply_per_sample(img: Tensor, params: PhotometricParams) -> Tensor:
    """The same augmentation one image at a time, with Python parameters, in place where possible, running
    only the ops a sample uses (the CPU form): several times faster than the fixed-shape form on a CPU, as
    it skips identity ops and each intermediate of a 224 px image stays in the cache.
    """
    out = img.clone()
    factors, order = params.factors.tolist(), params.order.tolist()
    gray, sigma, solarize = params.grayscale.tolist(), params.blur_sigma.tolist(), params.solarize.tolist()
    for i, x in enumerate(out):
        for op_index in order[i]:
            factor = factors[i][op_index]
            if factor == _IDENTITY[op_index]:
                continue
            if op_index == BRIGHTNESS:
                _blend_one(x, 0.0, factor)
            elif op_index == CONTRAST:
                _blend_one(x, _luma_one(x).mean().item(), factor)
            elif op_index == SATURATION:
                _blend_one(x, _luma_one(x), factor)
            else:
                x.copy_(adjust_hue(x[None], x.new_full((1,), factor))[0])
        if gray[i]:
            x.copy_(_luma_one(x).expand_as(x))
        if sigma[i] > 0:
            x.copy_(gaussian_blur(x[None], x.new_full((1,), sigma[i]))[0])
        if solarize[i]:
            x.copy_(torch.where(x >= SOLARIZE_THRESHOLD, 1.0 - x, x))
    return out


def apply_photometric(img: Tensor, params: PhotometricParams) -> Tensor:
    """Apply one view's augmentation to float images in [0, 1], [B, 3, H, W]; returns [0, 1] images."""
    if img.device.type == "cpu":
        return _apply_per_sample(img, params)
    return _apply_fixed_shape(img, params)


def normalize_uint8(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float scaled to [0, 1] and standardised with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _augment_view(crop: Tensor, params: PhotometricParams, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 crops -> augmented, standardised float crops (one view)."""
    return apply_photometric(crop.float().div_(255), params).sub_(mean).div_(std)


class BatchAugment:
    """uint8 crops [B, 3, H, W] -> augmented, normalised float crops, for both views, on any device.

    ``seed(iteration)`` makes the draws a function of (base seed, iteration), so a resumed run
    augments exactly as an uninterrupted one. ``compile=True`` runs the GPU form through ``torch.compile``,
    which fuses its many elementwise passes into a few kernels (the CPU form is never compiled). It works in
    NCHW; outputs are channels_last on a GPU (the model's layout there) and contiguous on a CPU.
    """

    def __init__(
        self,
        device: torch.device | str,
        base_seed: int = 0,
        views: tuple[ViewAugmentation, ViewAugmentation] = (VIEW1, VIEW2),
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.base_seed = base_seed
        self.views = views
        self.generator = torch.Generator(device=self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        on_gpu = self.device.type != "cpu"
        self.memory_format = torch.channels_last if on_gpu else torch.contiguous_format
        self.augment_view = torch.compile(_augment_view, dynamic=False) if compile and on_gpu else _augment_view

    def seed(self, iteration: int) -> None:
        self.generator.manual_seed(self.base_seed * 1_000_003 + iteration)

    def __call__(self, crops: list[Tensor]) -> list[Tensor]:
        out = []
        for crop, cfg in zip(crops, self.views, strict=True):
            # Loader crops are channels_last views of HWC arrays. Both forms work on channel planes (hue, grey),
            # which are strided in that layout: they get contiguous NCHW and the model its layout afterwards.
            crop = crop.to(self.device, non_blocking=True).contiguous()
            params = sample_params(cfg, crop.shape[0], self.generator, self.device)
            img = self.augment_view(crop, params, self.mean, self.std)
            out.append(img.contiguous(memory_format=self.memory_format))
        return out
