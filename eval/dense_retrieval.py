"""Dense nearest-neighbour retrieval: the "Hummingbird" in-context segmentation protocol on the teacher's C5 map
(Balazevic et al., NeurIPS 2023, *Towards In-context Scene Understanding*; reimplemented by open-hummingbird-eval,
whose numbers NeCo reports).

**Memory bank.** Every cell j of a train image's C5 map is a patch: its feature f_j, L2-normalised, and its label
y_j, the class distribution of the labelled pixels it covers (y_jc = n_jc / sum_c' n_jc'; a patch without a
labelled pixel is left out). With a budget of M patches (``--memory-size``) over N train images, each image gives
m = M // N, chosen as open-hummingbird-eval does: with n_c the number of the image's patches in which class c
occurs and u_j ~ U(0, 1) (seeded), the m patches of lowest u_j * sum_{c in j} n_c (the image's rarer classes
first); every labelled patch when m is at least the patches per image.

**Retrieval.** A held-out patch q (normalised) takes its k nearest bank patches by cosine similarity
s_j = q . f_j and their attention-weighted labels:

    a_j = exp(s_j / T) / sum_{i in kNN(q)} exp(s_i / T),        p(q) = sum_{j in kNN(q)} a_j y_j

The [C, h, w] map of p is upsampled bilinearly to the label resolution and its argmax is the prediction; mIoU
and pixel accuracy come from one confusion matrix over the eval split (unlabelled pixels ignored; no matching:
the predictions are class ids).

**Defaults** (open-hummingbird-eval, ``hbird_eval.py`` and its README): k = 30, T = 0.02, M = 10,240,000
(1024 x 10^4, the bank its README compares with the paper's VOC number), images resized whole to 512 x 512
(``eval.datasets``). The demo's default bank is M = 10,240 (1024 x 10): its 128 px scenes give 256 patches each,
and on one CPU thread labelling the 300 eval scenes from a bank of every patch of 600 train scenes (153,600) took
4-5 min per model, from 10,240 about 20 s (BENCHMARKS.md). Differences from open-hummingbird-eval:
one pass over the train images without augmentation (it can add passes of random resized crops and colour
jitter: ``augmentation_epoch``, 1 by default, 2 in its README's table); unlabelled pixels stay out of the patch
labels (it counts VOC's 255 as background there); exact search (it uses ScaNN or faiss).

**Search.** Exact and blockwise in torch: similarities of a query chunk against a bank chunk, a running top-k
merged after every bank chunk, so the memory beyond the bank is query_chunk x bank_chunk floats (256 MiB at the
defaults) whatever the bank size (BENCHMARKS.md). ``--search faiss`` uses faiss's exact inner-product index
(IndexFlatIP) on the CPU, when faiss is installed. Usage::

    python -m eval.dense_retrieval --checkpoint PATH|random --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eval.common import Batch, EvalModel, Evaluation, backbone_batches, base_dataset, load_split, run_evaluation
from eval.datasets import IGNORE_INDEX
from eval.metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy

DEFAULT_K = 30
DEFAULT_TEMPERATURE = 0.02
PROTOCOL_MEMORY_SIZE = 10_240_000
DEMO_MEMORY_SIZE = 10_240
SEARCH_METHODS = ("torch", "faiss")
DEFAULT_QUERY_CHUNK = 1024
DEFAULT_BANK_CHUNK = 65_536

Searcher = Callable[[Tensor], tuple[Tensor, Tensor]]


def default_memory_size(dataset: str) -> int:
    """The bank budget M of a dataset: the protocol's, or the demo's smaller one."""
    return DEMO_MEMORY_SIZE if dataset == "demo" else PROTOCOL_MEMORY_SIZE


# ----------------------------------------------------------------------------------------------
# The memory bank
# ----------------------------------------------------------------------------------------------


def patch_label_counts(
    semantic: Tensor, grid: tuple[int, int], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Labelled pixels of each class under every feature cell: int64 [B, h * w, C] for ``semantic`` [B, H, W].

    Pixel (y, x) belongs to cell (y * h // H, x * w // W): the cell whose stride-sized block holds it when H and
    W are multiples of h and w (a partition of the pixels otherwise). One ``bincount`` for the batch.
    """
    batch, height, width = semantic.shape
    h, w = grid
    device = semantic.device
    rows = torch.arange(height, device=device) * h // height
    cols = torch.arange(width, device=device) * w // width
    cell = (rows[:, None] * w + cols[None, :]).expand(batch, height, width)
    labels = semantic.long()
    keep = labels != ignore_index
    if keep.any() and (labels[keep].min() < 0 or labels[keep].max() >= num_classes):
        raise ValueError(f"label ids must lie in 0..{num_classes - 1} (or be the ignore index {ignore_index})")
    image = torch.arange(batch, device=device)[:, None, None]
    index = ((image * (h * w) + cell) * num_classes + labels)[keep]
    counts = torch.bincount(index, minlength=batch * h * w * num_classes)
    return counts.view(batch, h * w, num_classes)


def label_distributions(counts: Tensor) -> Tensor:
    """Per-class pixel counts [..., C] -> float class distributions (rows of no labelled pixel stay zero)."""
    counts = counts.float()
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1)


def sample_patches(counts: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
    """Indices (ascending) of the ``num_samples`` patches an image keeps, from its [P, C] label counts.

    Score of patch j: u_j * sum_{c present in j} n_c, with n_c the number of the image's patches where class c
    is present and u_j ~ U(0, 1) from ``generator`` (P draws per call, on the CPU); the lowest scores win.
    Patches with no labelled pixel are never kept, so fewer than ``num_samples`` come back when too few have one.
    """
    present = counts > 0
    labelled = present.any(dim=1)
    frequency = present.sum(dim=0).double()
    uniform = torch.rand(counts.shape[0], generator=generator, dtype=torch.float64).to(counts.device)
    score = (present.double() @ frequency) * uniform
    score[~labelled] = math.inf
    keep = min(num_samples, int(labelled.sum()))
    return score.topk(keep, largest=False).indices.sort().values


@dataclass
class MemoryBank:
    """Bank features [N, D] (L2-normalised), their label distributions [N, C], and how they were drawn."""

    features: Tensor
    labels: Tensor
    num_images: int
    patches_per_image: int | None  # None: every labelled patch was kept

    def __len__(self) -> int:
        return self.features.shape[0]


@torch.no_grad()
def build_memory_bank(
    batches: Iterable[Batch], num_images: int, num_classes: int, memory_size: int, seed: int = 0
) -> MemoryBank:
    """Stream the train ``batches`` (``num_images`` in all) into a bank of at most ``memory_size`` patches.

    The bank is allocated once, at its largest possible size, so building it never holds two copies.
    Reproducible: the sampling draws come from one generator seeded with ``seed``, image after image.
    """
    if memory_size < 1:
        raise ValueError(f"--memory-size must be positive, got {memory_size}")
    per_image = memory_size // num_images
    if per_image < 1:
        raise ValueError(f"--memory-size {memory_size} is smaller than the {num_images} train images (one patch each)")
    generator = torch.Generator().manual_seed(seed)
    features = labels = None
    filled = seen = 0
    sampled = False
    for batch in batches:
        count, dim, h, w = batch.c5.shape
        if seen + count > num_images:
            raise ValueError(f"the train batches hold more than the {num_images} images announced")
        cells = patch_label_counts(batch.semantic, (h, w), num_classes)
        patches = F.normalize(batch.c5.float().flatten(2).transpose(1, 2), dim=2)  # [B, h * w, D]
        if features is None:
            capacity = num_images * min(per_image, h * w)
            features = torch.empty(capacity, dim, device=patches.device)
            labels = torch.empty(capacity, num_classes, device=patches.device)
        sampled = per_image < h * w
        for image in range(count):
            if sampled:
                keep = sample_patches(cells[image], per_image, generator)
            else:
                keep = cells[image].any(dim=1).nonzero().squeeze(1)
            if filled + keep.numel() > features.shape[0]:
                raise ValueError("the train images do not all have the same feature grid")
            features[filled : filled + keep.numel()] = patches[image, keep]
            labels[filled : filled + keep.numel()] = label_distributions(cells[image, keep])
            filled += keep.numel()
        seen += count
    if features is None or filled == 0:
        raise ValueError("no train patch covers a labelled pixel: the memory bank would be empty")
    return MemoryBank(features[:filled], labels[:filled], seen, per_image if sampled else None)


# ----------------------------------------------------------------------------------------------
# Search and vote
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def exact_search(
    queries: Tensor,
    bank: Tensor,
    k: int,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    bank_chunk: int = DEFAULT_BANK_CHUNK,
) -> tuple[Tensor, Tensor]:
    """The k largest dot products of every query with the bank rows: values and indices [Q, min(k, N)], best first.

    Computed block by block (``query_chunk`` x ``bank_chunk`` similarities at a time), merging each block's top-k
    into a running top-k, so no [Q, N] matrix is ever formed.
    """
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    if k < 1 or query_chunk < 1 or bank_chunk < 1:
        raise ValueError(f"k and the chunk sizes must be positive, got {k}, {query_chunk}, {bank_chunk}")
    k = min(k, bank.shape[0])
    values, indices = [], []
    for part in queries.split(query_chunk):
        best_values = best_indices = None
        for start in range(0, bank.shape[0], bank_chunk):
            similarity = part @ bank[start : start + bank_chunk].T
            top_values, top_indices = similarity.topk(min(k, similarity.shape[1]), dim=1)
            top_indices += start
            if best_values is not None:
                top_values = torch.cat([best_values, top_values], dim=1)
                top_indices = torch.cat([best_indices, top_indices], dim=1)
                top_values, order = top_values.topk(min(k, top_values.shape[1]), dim=1)
                top_indices = top_indices.gather(1, order)
            best_values, best_indices = top_values, top_indices
        values.append(best_values)
        indices.append(best_indices)
    if not values:
        return queries.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=queries.device)
    return torch.cat(values), torch.cat(indices)


def faiss_module() -> Any:
    """The ``faiss`` module, or a one-line error saying how to get it."""
    if importlib.util.find_spec("faiss") is None:
        raise ValueError("--search faiss: faiss is not installed (pip install faiss-cpu), or use --search torch")
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise ValueError(f"--search faiss: faiss does not import ({str(exc).strip().splitlines()[0]})") from None


def make_searcher(
    bank: Tensor,
    k: int,
    method: str = "torch",
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    bank_chunk: int = DEFAULT_BANK_CHUNK,
) -> Searcher:
    """A function queries [Q, D] -> (similarities, indices) [Q, min(k, N)] over ``bank`` [N, D], best first.

    ``torch``: ``exact_search`` on the bank's device. ``faiss``: an exact inner-product index (IndexFlatIP) built
    once, on the CPU (it keeps its own float32 copy of the bank); results come back on the queries' device.
    """
    if method == "torch":
        return lambda queries: exact_search(queries, bank, k, query_chunk, bank_chunk)
    if method != "faiss":
        raise ValueError(f"--search must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
    faiss = faiss_module()
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(np.ascontiguousarray(bank.detach().cpu().float().numpy()))
    k = min(k, bank.shape[0])

    def search(queries: Tensor) -> tuple[Tensor, Tensor]:
        similarity, indices = index.search(np.ascontiguousarray(queries.detach().cpu().float().numpy()), k)
        return (torch.from_numpy(similarity).to(queries.device), torch.from_numpy(indices).long().to(queries.device))

    return search


def attention_vote(similarity: Tensor, neighbour_labels: Tensor, temperature: float) -> Tensor:
    """sum_j softmax_j(s_j / T) y_j: [Q, C] from similarities [Q, k] and the neighbours' labels [Q, k, C]."""
    weights = torch.softmax(similarity / temperature, dim=1)
    return torch.einsum("qk,qkc->qc", weights, neighbour_labels)


@torch.no_grad()
def retrieve(
    bank: MemoryBank, searcher: Searcher, queries: Tensor, temperature: float, chunk: int = DEFAULT_QUERY_CHUNK
) -> Tensor:
    """Label distributions [Q, C] of L2-normalised ``queries`` [Q, D], ``chunk`` queries at a time."""
    parts = []
    for part in queries.split(chunk):
        similarity, indices = searcher(part)
        parts.append(attention_vote(similarity, bank.labels[indices], temperature))
    return torch.cat(parts) if parts else queries.new_zeros(0, bank.labels.shape[1])


@torch.no_grad()
def predict(
    bank: MemoryBank,
    searcher: Searcher,
    c5: Tensor,
    size: tuple[int, int],
    temperature: float,
    chunk: int = DEFAULT_QUERY_CHUNK,
) -> Tensor:
    """Class id [B, H, W] of every pixel: the retrieved [C, h, w] distributions, upsampled bilinearly, argmax."""
    count, dim, h, w = c5.shape
    queries = F.normalize(c5.float().flatten(2).transpose(1, 2).reshape(-1, dim), dim=1)
    scores = retrieve(bank, searcher, queries, temperature, chunk)
    scores = scores.view(count, h, w, -1).permute(0, 3, 1, 2)
    # One image at a time: a batch of [C, H, W] maps (150 classes at 512 px) would take gigabytes.
    return torch.stack(
        [F.interpolate(s[None], size=size, mode="bilinear", align_corners=False)[0].argmax(dim=0) for s in scores]
    )


def run_dense_retrieval(
    train_batches: Iterable[Batch],
    eval_batches: Iterable[Batch],
    num_train_images: int,
    num_classes: int,
    class_names: Sequence[str],
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    memory_size: int = PROTOCOL_MEMORY_SIZE,
    seed: int = 0,
    search: str = "torch",
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    bank_chunk: int = DEFAULT_BANK_CHUNK,
) -> dict[str, Any]:
    """Build the bank from ``train_batches``, label every eval pixel by retrieval, score: mIoU, accuracy, per class."""
    if k < 1 or not temperature > 0:
        raise ValueError(f"retrieval needs k >= 1 and a temperature > 0, got {k} and {temperature}")
    bank = build_memory_bank(train_batches, num_train_images, num_classes, memory_size, seed)
    searcher = make_searcher(bank.features, k, search, query_chunk, bank_chunk)
    confusion, num_eval = None, 0
    for batch in eval_batches:
        prediction = predict(bank, searcher, batch.c5, tuple(batch.semantic.shape[-2:]), temperature, query_chunk)
        counts = confusion_matrix(batch.semantic, prediction, num_classes, ignore_index=IGNORE_INDEX)
        confusion = counts if confusion is None else confusion + counts
        num_eval += batch.c5.shape[0]
    if confusion is None:
        raise ValueError("no eval images to label")
    iou = per_class_iou(confusion)
    return {
        "miou": mean_iou(confusion),
        "pixel_accuracy": pixel_accuracy(confusion),
        "per_class_iou": [None if math.isnan(v) else float(v) for v in iou],
        "num_classes": num_classes,
        "class_names": list(class_names),
        "k": k,
        "temperature": temperature,
        "memory_size": memory_size,
        "bank_size": len(bank),
        "patches_per_image": bank.patches_per_image,
        "seed": seed,
        "search": search,
        "num_train_images": bank.num_images,
        "num_eval_images": num_eval,
    }


# ----------------------------------------------------------------------------------------------
# Command line (also used by eval.report)
# ----------------------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, k_flag: str = "--k", temperature_flag: str = "--temperature") -> None:
    """The retrieval's flags; ``eval.report`` names k and T ``--retrieval-k`` / ``--retrieval-temperature``."""
    group = parser.add_argument_group("dense retrieval")
    group.add_argument(
        k_flag, dest="retrieval_k", type=int, default=DEFAULT_K, help=f"neighbours (default {DEFAULT_K})"
    )
    group.add_argument(
        temperature_flag,
        dest="retrieval_temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help=f"softmax temperature of the vote (default {DEFAULT_TEMPERATURE})",
    )
    group.add_argument(
        "--memory-size",
        type=int,
        default=None,
        help=f"bank budget in patches (default {PROTOCOL_MEMORY_SIZE:,}, demo {DEMO_MEMORY_SIZE:,})",
    )
    group.add_argument("--search", choices=SEARCH_METHODS, default="torch", help="exact search backend")
    group.add_argument("--query-chunk", type=int, default=DEFAULT_QUERY_CHUNK, help="queries per search block")
    group.add_argument("--bank-chunk", type=int, default=DEFAULT_BANK_CHUNK, help="bank rows per search block")


def check_options(args: argparse.Namespace) -> None:
    """Reject bad retrieval flags, and ``--search faiss`` without faiss, before any work."""
    for flag, value in (
        ("k", args.retrieval_k),
        ("memory-size", args.memory_size),
        ("query-chunk", args.query_chunk),
        ("bank-chunk", args.bank_chunk),
    ):
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be positive, got {value}")
    if not args.retrieval_temperature > 0:
        raise ValueError(f"the retrieval temperature must be positive, got {args.retrieval_temperature}")
    if args.search == "faiss":
        faiss_module()


def run_from_args(
    args: argparse.Namespace,
    train_batches: Iterable[Batch],
    eval_batches: Iterable[Batch],
    num_train_images: int,
    num_classes: int,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """``run_dense_retrieval`` with the options of ``add_options`` (memory size: the dataset's default if unset)."""
    memory_size = args.memory_size if args.memory_size is not None else default_memory_size(args.dataset)
    return run_dense_retrieval(
        train_batches, eval_batches, num_train_images, num_classes, class_names, args.retrieval_k,
        args.retrieval_temperature, memory_size, args.seed, args.search, args.query_chunk, args.bank_chunk,
    )  # fmt: skip


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    # Streamed: only the bank is kept, not the whole train split's C5 maps.
    train, evaluation = load_split(args, "train"), load_split(args, "eval")
    source = base_dataset(evaluation)
    result = run_from_args(
        args,
        backbone_batches(model, train, args.batch_size, device, args.workers),
        backbone_batches(model, evaluation, args.batch_size, device, args.workers),
        len(train),
        source.num_classes,
        source.class_names,
    )
    result.update(image_size=source.image_size)
    return result


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a result, for tables."""
    return {"retrieval_miou": result["miou"], "retrieval_acc": result["pixel_accuracy"]}


def describe(args: argparse.Namespace, result: dict[str, Any]) -> str:
    per_image = result["patches_per_image"]
    drawn = "every labelled patch" if per_image is None else f"{per_image} patches per image"
    return (
        f"dense retrieval (k={result['k']}, T={result['temperature']}, {result['search']} search), {args.dataset} at "
        f"{result['image_size']} px: bank of {result['bank_size']:,} patches ({drawn} of {result['num_train_images']} "
        f"train images), {result['num_eval_images']} eval images"
    )


EVALUATION = Evaluation(
    "python -m eval.dense_retrieval",
    __doc__.splitlines()[0],
    evaluate,
    summary_row,
    describe,
    add_options,
    check_options,
    clusters=False,  # a baseline's k-means is not used: retrieval reads the features alone
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
