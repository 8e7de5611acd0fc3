"""The photometric half of SlotCon's augmentation, batched, with per-sample random parameters.

Per view (BYOL-style asymmetric pipeline of the reference):
  colour jitter with p=0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in a random order),
  grayscale with p=0.2, Gaussian blur sigma ~ U(0.1, 2) with p=1.0 (view 1) / 0.1 (view 2),
  solarize (threshold 128) with p=0 (view 1) / 0.2 (view 2), then ImageNet normalisation.
The distributions are torchvision's ``ColorJitter`` / ``RandomGrayscale`` and the reference's blur and
solarize. Samples a transform does not apply to get its identity parameters, so every op runs on the
whole batch with fixed shapes (no host synchronisation on a GPU). The same code runs on the CPU.
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


def sample_params(cfg: ViewAugmentation, batch: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> PhotometricParams:
    """Draw one view's parameters for a batch from ``generator`` (which must live on ``device``)."""

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device) * (high - low) + low

    def bernoulli(p: float) -> Tensor:
        return torch.rand(batch, generator=generator, device=device) < p

    jitter = bernoulli(cfg.jitter_prob)[:, None]
    factors = torch.stack([
        uniform(1 - cfg.brightness, 1 + cfg.brightness, batch),
        uniform(1 - cfg.contrast, 1 + cfg.contrast, batch),
        uniform(1 - cfg.saturation, 1 + cfg.saturation, batch),
        uniform(-cfg.hue, cfg.hue, batch),
    ], dim=1)
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
    """factor * img + (1 - factor) * other, clamped to [0, 1] (torchvision's ``_blend``)."""
    f = _per_sample(factor)
    return (f * img + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(img: Tensor, factor: Tensor) -> Tensor:
    return (img * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(img: Tensor, factor: Tensor) -> Tensor:
    mean = grayscale(img).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: Tensor, factor: Tensor) -> Tensor:
    return _blend(img, grayscale(img), factor)


def adjust_hue(img: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (a fraction of the colour wheel, in [-0.5, 0.5]) via HSV."""
    r, g, b = img.unbind(dim=1)
    maxc, _ = img.max(dim=1)
    minc, _ = img.min(dim=1)
    value = maxc
    chroma = maxc - minc
    safe_max = torch.where(maxc > 0, maxc, 1.0)
    saturation = chroma / safe_max
    safe_chroma = torch.where(chroma > 0, chroma, 1.0)
    rc, gc, bc = (maxc - r) / safe_chroma, (maxc - g) / safe_chroma, (maxc - b) / safe_chroma
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    hue = (hue + shift.view(-1, 1, 1)) % 1.0

    # HSV -> RGB with the piecewise-linear formula f(n) = v - v s max(0, min(k, 4 - k, 1)).
    def channel(n: float) -> Tensor:
        k = (n + hue * 6.0) % 6.0
        return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], dim=1)


def gaussian_blur(img: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (0 = identity), replicate padding."""
    b, c, h, w = img.shape
    offsets = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, device=img.device, dtype=img.dtype)
    safe_sigma = sigma.clamp(min=1e-3).to(img.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / safe_sigma) ** 2)
    delta = (offsets == 0).to(img.dtype).expand(b, -1)
    kernel = torch.where((sigma > 0)[:, None], kernel / kernel.sum(dim=1, keepdim=True), delta)
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    x = img.reshape(1, b * c, h, w)
    x = F.pad(x, (_BLUR_RADIUS, _BLUR_RADIUS, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(b * c, 1, 1, -1), groups=b * c)
    x = F.pad(x, (0, 0, _BLUR_RADIUS, _BLUR_RADIUS), mode="replicate")
    x = F.conv2d(x, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return x.view(b, c, h, w)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def _jitter_masked(img: Tensor, params: PhotometricParams) -> Tensor:
    """Colour jitter with fixed shapes: at each step every op runs on the whole batch, with the identity
    factor for the samples that run another op then. No host synchronisation (for GPUs)."""
    for step in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            chosen = params.order[:, step] == op_index
            factor = torch.where(chosen, params.factors[:, op_index], _IDENTITY[op_index])
            if op_index == HUE:  # the HSV round trip is not an exact identity: keep the others untouched
                img = torch.where(_per_sample(chosen & (factor != 0)), op(img, factor), img)
            else:
                img = op(img, factor)
    return img


def _jitter_subsets(img: Tensor, params: PhotometricParams) -> Tensor:
    """The same colour jitter, each op run only on the samples that use it at that step: a quarter of the
    work of ``_jitter_masked``, at the price of data-dependent shapes (cheap on a CPU)."""
    img = img.clone()
    for step in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            factor = params.factors[:, op_index]
            use = (params.order[:, step] == op_index) & (factor != _IDENTITY[op_index])
            index = use.nonzero().squeeze(1)
            if index.numel():
                img[index] = op(img[index], factor[index])
    return img


def apply_photometric(img: Tensor, params: PhotometricParams) -> Tensor:
    """Apply one view's augmentation to float images in [0, 1], [B, 3, H, W]; returns [0, 1] images."""
    img = _jitter_subsets(img, params) if img.device.type == "cpu" else _jitter_masked(img, params)
    img = torch.where(_per_sample(params.grayscale), grayscale(img).expand_as(img), img)
    img = gaussian_blur(img, params.blur_sigma)
    return torch.where(_per_sample(params.solarize) & (img >= SOLARIZE_THRESHOLD), 1.0 - img, img)


def normalize_uint8(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] -> float scaled to [0, 1] and standardised with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


class BatchAugment:
    """uint8 crops [B, 3, H, W] -> augmented, normalised float crops, for both views, on any device.

    ``seed(iteration)`` makes the draws a function of (base seed, iteration), so a resumed run
    augments exactly as an uninterrupted one.
    """

    def __init__(self, device: torch.device, base_seed: int = 0,
                 views: tuple[ViewAugmentation, ViewAugmentation] = (VIEW1, VIEW2)) -> None:
        self.device = torch.device(device)
        self.base_seed = base_seed
        self.views = views
        self.generator = torch.Generator(device=self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def seed(self, iteration: int) -> None:
        self.generator.manual_seed(self.base_seed * 1_000_003 + iteration)

    def __call__(self, crops: list[Tensor]) -> list[Tensor]:
        out = []
        for crop, cfg in zip(crops, self.views, strict=True):
            img = crop.to(self.device, non_blocking=True).float().div_(255)
            params = sample_params(cfg, img.shape[0], self.generator, self.device)
            img = apply_photometric(img, params)
            out.append(((img - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        return out
