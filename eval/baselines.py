"""Training-free baselines that the evaluations score as they score networks: what pixel colour alone gives.

A baseline has the teacher's interface (``encoder_k`` turns normalised images into a feature map,
``projector_k``, ``grouping_k.scores`` and ``grouping_k.num_prototypes``), so unsupervised segmentation, the
linear probe, k-NN and object discovery run on it through the same code and the same scoring functions. Name
one beside ``random`` and checkpoints (``--checkpoints random colour colour-hist CKPT``):

* ``colour``: the feature map is the image itself, normalised as the networks receive it (ImageNet mean and
  std), one 3-vector per pixel (stride 1). Its prototypes are the K centres of a k-means of the train split's
  pixel colours, K being the model's prototype count, so a pixel's cluster is its nearest centre: pixel-colour
  k-means for unsupervised segmentation and object discovery. The linear probe on it is a per-pixel linear
  colour classifier; k-NN classifies an object by its mean colour.
* ``colour-hist``: the histogram of every 4x4-pixel cell over 4x4x4 RGB bins (64 channels, stride 4). k-NN
  classifies an object by its colour histogram; the linear probe can give each of the 64 colours any class (a
  colour look-up table); unsupervised segmentation clusters the cells' histograms with k-means.

The k-means is Lloyd's algorithm from k-means++ seeds, on at most ``MAX_FIT_POINTS`` feature vectors of the
train split drawn with the seed (``--seed``), run until it settles (``kmeans``; at most ``MAX_ROUNDS`` rounds). It
is fitted on the train split only (``fit``, when the evaluation builds the baseline); the eval split is only
assigned. A baseline's scores are minus the squared distances to the centres: the argmax is the nearest centre.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.photometric import IMAGENET_MEAN, IMAGENET_STD

COLOUR, COLOUR_HIST = "colour", "colour-hist"
BASELINES = (COLOUR, COLOUR_HIST)
HIST_LEVELS = 4  # per RGB channel: 4^3 = 64 bins of 64 grey levels each
HIST_CELL = 4  # pixels per side of a histogram cell
MAX_FIT_POINTS = 1 << 18
MAX_ROUNDS = 100
TOLERANCE = 1e-4


def uint8_colours(images: Tensor) -> Tensor:
    """The 0-255 pixel values (int64 [B, 3, H, W]) of images normalised by ``data.photometric.normalize_uint8``."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return torch.round((images * std + mean) * 255.0).clamp(0, 255).long()


def colour_bins(images: Tensor, levels: int = HIST_LEVELS) -> Tensor:
    """Every pixel's RGB bin, ``(r * levels + g) * levels + b`` with each channel cut into ``levels`` equal
    ranges of 0-255: int64 [B, H, W] from normalised images [B, 3, H, W]."""
    r, g, b = (uint8_colours(images) * levels // 256).unbind(dim=1)
    return (r * levels + g) * levels + b


class ColourFeatures(nn.Module):
    """The baselines' "backbone": the normalised image itself (``colour``), or each cell's colour histogram."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
        self.name = name
        self.num_channels = 3 if name == COLOUR else HIST_LEVELS**3

    def forward(self, images: Tensor) -> Tensor:
        if self.name == COLOUR:
            return images.float()
        bins = colour_bins(images)
        one_hot = torch.zeros(bins.shape[0], self.num_channels, *bins.shape[1:], device=images.device)
        one_hot.scatter_(1, bins.unsqueeze(1), 1.0)
        # A cell's mean of one-hot pixels is its normalised histogram; a partial cell at the edge averages its own.
        return F.avg_pool2d(one_hot, HIST_CELL, ceil_mode=True)


def nearest_centre(points: Tensor, centres: Tensor, chunk: int = 1 << 16) -> Tensor:
    """Index of the nearest centre (squared Euclidean distance; the first one on ties) of every row of ``points``:
    the argmin over k of |c_k|^2 - 2 <x, c_k>, which differs from |x - c_k|^2 by |x|^2 only."""
    norms = centres.square().sum(dim=1)
    parts = [(norms - 2 * part @ centres.T).argmin(dim=1) for part in points.split(chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def kmeans(points: Tensor, k: int, seed: int = 0, max_rounds: int = MAX_ROUNDS, tol: float = TOLERANCE) -> Tensor:
    """Centres [k, D] of Lloyd's k-means of ``points`` [N, D] (float64 inside), seeded by k-means++.

    k-means++ draws each next seed with probability proportional to the squared distance to the nearest seed so
    far; once every point coincides with a seed (fewer distinct points than k) the rest repeat the first seed,
    and their clusters stay empty. An empty cluster keeps its centre. The rounds stop when no assignment
    changes, when the centres move by at most ``tol`` times the points' mean variance in all (squared, as
    scikit-learn's ``tol``), or after ``max_rounds``. Deterministic given ``seed``.
    """
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got {k}")
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty [N, D] set of points, got shape {tuple(points.shape)}")
    points = points.double()
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    distance = (points - points[chosen[0]]).square().sum(dim=1)
    for _ in range(1, k):
        total = float(distance.sum())
        if total <= 0:
            chosen.append(chosen[0])
            continue
        chosen.append(int(torch.multinomial(distance / total, 1, generator=generator)))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).square().sum(dim=1))
    centres = points[chosen].clone()
    threshold = tol * float(points.var(dim=0, unbiased=False).mean())
    assignment = None
    for _ in range(max_rounds):
        new = nearest_centre(points, centres)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        filled = counts > 0
        moved = centres.clone()
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1).double()
        if float((centres - moved).square().sum()) <= threshold:
            break
    return centres


class KMeansGrouping(nn.Module):
    """The baselines' prototypes: k-means centres; ``scores`` are minus the squared distances to them."""

    def __init__(self, num_prototypes: int, dim: int) -> None:
        super().__init__()
        self.num_prototypes = num_prototypes
        self.register_buffer("centres", torch.zeros(num_prototypes, dim))
        self.fitted = False

    def scores(self, x: Tensor) -> Tensor:
        """-|x - c_k|^2 of every pixel of x [B, D, h, w] and centre c_k: [B, K, h, w]."""
        if not self.fitted:
            raise RuntimeError("the baseline's k-means has not been fitted (call fit with the train features)")
        centres = self.centres.to(x.dtype)
        dots = torch.einsum("kd,bdhw->bkhw", centres, x)
        return 2 * dots - centres.square().sum(dim=1).view(1, -1, 1, 1) - x.square().sum(dim=1, keepdim=True)


class ColourBaseline(nn.Module):
    """A training-free baseline with the teacher's interface (``encoder_k``, ``projector_k``, ``grouping_k``)."""

    def __init__(self, name: str, num_prototypes: int, seed: int = 0) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"a baseline needs at least one prototype, got {num_prototypes}")
        self.name, self.seed = name, seed
        self.encoder_k = ColourFeatures(name)
        self.projector_k = nn.Identity()
        self.grouping_k = KMeansGrouping(num_prototypes, self.encoder_k.num_channels)

    def fit(self, train_features: Tensor) -> ColourBaseline:
        """Fit the k-means on the train split's feature maps [N, C, h, w] (``encoder_k``'s output)."""
        points = train_features.permute(0, 2, 3, 1).reshape(-1, train_features.shape[1])
        if points.shape[0] > MAX_FIT_POINTS:
            generator = torch.Generator().manual_seed(self.seed)
            points = points[torch.randperm(points.shape[0], generator=generator)[:MAX_FIT_POINTS]]
        centres = kmeans(points, self.grouping_k.num_prototypes, self.seed)
        self.grouping_k.centres.copy_(centres.to(self.grouping_k.centres))
        self.grouping_k.fitted = True
        return self

    def forward(self, images: Tensor) -> Tensor:
        """The k-means scores [B, K, h, w] of normalised images, as ``SlotConTeacher.forward`` gives its own."""
        return self.grouping_k.scores(self.projector_k(self.encoder_k(images)))


def build_baseline(name: str, num_prototypes: int, seed: int = 0) -> ColourBaseline:
    """The unfitted baseline ``name`` (one of ``BASELINES``) with ``num_prototypes`` k-means centres."""
    return ColourBaseline(name, num_prototypes, seed).eval().requires_grad_(False)
