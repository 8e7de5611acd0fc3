"""Shared pieces of the evaluations: building the model, batched feature extraction, and the command-line
runner every evaluation CLI is (``Evaluation`` + ``run_evaluation``: arguments, device, model(s), the
evaluation, a table and JSON).

BatchNorm: every model, trained or random, is evaluated with BN in eval mode (running statistics). A
random-init network's running statistics are the defaults (mean 0, variance 1), so its BN layers reduce to
their affine part instead of normalising with the test batch's statistics. That is the fair choice: no
model sees test-batch statistics, and an image's features never depend on which images share its batch.

All dense evaluations use the teacher's backbone C5 map (stride 32), extracted once per split; the
prototype scores are recomputed from it (``projector_k`` then ``grouping_k``), which is exactly
``SlotConTeacher.forward``.

Training-free baselines (``eval.baselines``: ``colour``, ``colour-hist``) are models of the same interface whose
"C5 map" is the pixels' colour, so every evaluation scores them with the same code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from data.photometric import normalize_uint8
from eval.baselines import BASELINES, ColourBaseline, build_baseline
from eval.datasets import DATASETS, DEFAULT_IMAGE_SIZE, build_dataset
from models.slotcon import SlotConTeacher
from models.weights import load_teacher, teacher_config
from utils.atomic import OutputWriteError, check_writable, write_text_atomic
from utils.checkpoint import load_checkpoint
from utils.distributed import parse_device
from utils.tables import format_table

RANDOM = "random"
# What an evaluation scores: a SlotCon teacher (trained or random) or a training-free baseline of its interface.
EvalModel = SlotConTeacher | ColourBaseline
# SlotCon's default network; a random model uses these unless told otherwise.
DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "resnet50",
    "dim_hidden": 4096,
    "dim_out": 256,
    "num_prototypes": 256,
    "teacher_temp": 0.07,
    "output_stride": None,  # the arch's own (models.backbones)
}


class Batch(NamedTuple):
    """C5 features [B, C, h, w] float, semantic [B, H, W] uint8, instance [B, H, W] uint8 or None."""

    c5: Tensor
    semantic: Tensor
    instance: Tensor | None


@dataclass
class SplitFeatures:
    """A whole split's C5 features and label maps, kept on the CPU so the evaluations reuse one pass."""

    c5: Tensor
    semantic: Tensor
    instance: Tensor | None
    num_classes: int
    class_names: list[str]

    def __len__(self) -> int:
        return self.c5.shape[0]

    def batches(self, batch_size: int, device: torch.device, order: Tensor | None = None) -> Iterator[Batch]:
        """Batches moved to ``device``, in ``order`` (a permutation of the indices) or in index order."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            yield Batch(
                self.c5[idx].to(device, non_blocking=True),
                self.semantic[idx].to(device),
                None if self.instance is None else self.instance[idx].to(device),
            )


def build_teacher(
    checkpoint: str,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    student: bool = False,
) -> SlotConTeacher:
    """The teacher network of a checkpoint (ours or official), or ``"random"``: a seeded random init of
    ``config`` (``SlotConTeacher.build`` arguments; missing ones from ``DEFAULT_CONFIG``). Always in eval mode.
    """
    if checkpoint == RANDOM:
        # A private RNG stream: the same seed gives the same weights whatever ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SlotConTeacher.build(**{**DEFAULT_CONFIG, **(config or {})})
    else:
        model = load_teacher(checkpoint, student=student)
    return model.to(device).eval().requires_grad_(False)


def base_dataset(dataset: Dataset) -> Any:
    """The dataset under a ``--max-images`` ``Subset`` (it carries ``num_classes``, ``class_names``...)."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def _collate(samples: list[tuple[Tensor, Tensor, Tensor | None]]) -> tuple[Tensor, Tensor, Tensor | None]:
    images, semantic, instance = zip(*samples, strict=True)
    return torch.stack(images), torch.stack(semantic), None if instance[0] is None else torch.stack(instance)


@torch.no_grad()
def backbone_batches(
    model: EvalModel, dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0
) -> Iterator[Batch]:
    """Run the teacher backbone over ``dataset`` in batches; labels come along, all on ``device``."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    for images, semantic, instance in loader:
        c5 = model.encoder_k(normalize_uint8(images.to(device, non_blocking=True)))
        yield Batch(c5.float(), semantic.to(device), None if instance is None else instance.to(device))


def extract_features(
    model: EvalModel, dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0
) -> SplitFeatures:
    """C5 features and labels of a whole split, gathered on the CPU."""
    parts = [
        Batch(b.c5.cpu(), b.semantic.cpu(), None if b.instance is None else b.instance.cpu())
        for b in backbone_batches(model, dataset, batch_size, device, workers)
    ]
    if not parts:
        raise ValueError("the dataset split is empty")
    instance = None if parts[0].instance is None else torch.cat([p.instance for p in parts])
    source = base_dataset(dataset)
    return SplitFeatures(
        torch.cat([p.c5 for p in parts]),
        torch.cat([p.semantic for p in parts]),
        instance,
        source.num_classes,
        list(source.class_names),
    )


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def add_model_args(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """Options naming the model(s) and, for ``random``, its configuration."""
    if multiple:
        parser.add_argument(
            "--checkpoints",
            nargs="+",
            required=True,
            metavar="PATH|random|colour|colour-hist",
            help="checkpoints to evaluate (ours or official), 'random' for a random init, or the training-free "
            "baselines 'colour' (pixel colour) and 'colour-hist' (colour histograms of 4x4 cells): eval.baselines",
        )
    else:
        parser.add_argument(
            "--checkpoint",
            required=True,
            metavar="PATH|random|colour|colour-hist",
            help="a SlotCon checkpoint (ours or official), 'random' for a random init, or a training-free baseline "
            "('colour', 'colour-hist': eval.baselines)",
        )
    parser.add_argument("--student", action="store_true", help="evaluate the student's weights, not the teacher's")
    group = parser.add_argument_group("random model and baselines (ignored for checkpoint files)")
    group.add_argument("--arch", default=None, help=f"backbone (default {DEFAULT_CONFIG['arch']})")
    group.add_argument("--dim-hidden", type=int, default=None, help=f"default {DEFAULT_CONFIG['dim_hidden']}")
    group.add_argument("--dim-out", type=int, default=None, help=f"default {DEFAULT_CONFIG['dim_out']}")
    group.add_argument(
        "--num-prototypes",
        type=int,
        default=None,
        help=f"also the baselines' k-means clusters (default {DEFAULT_CONFIG['num_prototypes']})",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the random init, of the baselines' k-means and of the linear probe"
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Dataset, preprocessing, device and output options."""
    parser.add_argument("--dataset", choices=DATASETS, default="demo")
    parser.add_argument("--data-dir", default="demo_data", help="dataset root (default: demo_data)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="square input side (default: 128 for demo, 320 for cocostuff27)"
    )
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images of each split")
    parser.add_argument(
        "--max-train-images",
        type=int,
        default=None,
        help="use only the first N images of the train split (default: --max-images)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--output-json", default=None, help="also write the results to this JSON file")


def random_config(args: argparse.Namespace) -> dict[str, Any]:
    """The explicitly given ``--arch`` / dims, for ``build_teacher``."""
    given = {
        "arch": args.arch,
        "dim_hidden": args.dim_hidden,
        "dim_out": args.dim_out,
        "num_prototypes": args.num_prototypes,
    }
    return {k: v for k, v in given.items() if v is not None}


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible sizes up front, naming the option."""
    for name in ("batch_size", "max_images", "max_train_images", "dim_hidden", "dim_out", "num_prototypes"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.image_size is not None and args.image_size < 32:
        raise ValueError(f"--image-size must be at least 32, got {args.image_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if getattr(args, "output_json", None):  # a full or read-only disk: say so now, not after the evaluation
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        check_writable(args.output_json)


def load_split(args: argparse.Namespace, split: str) -> Dataset:
    """The ``split`` of ``--dataset``, cut to ``--max-images`` (the train split: ``--max-train-images``) if given."""
    dataset = build_dataset(args.dataset, args.data_dir, split, args.image_size)
    limit = args.max_images
    if split == "train" and getattr(args, "max_train_images", None) is not None:
        limit = args.max_train_images
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    if len(dataset) == 0:
        raise ValueError(f"{args.data_dir}: the {split} split has no images")
    return dataset


def model_name(checkpoint: str) -> str:
    """A short row label: ``random``, a baseline's name or the checkpoint's file name."""
    return checkpoint if checkpoint in (RANDOM, *BASELINES) else Path(checkpoint).name


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN becomes null, so the file stays standard JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(clean(payload), indent=2) + "\n")


def percent_cells(rows: dict[str, dict[str, float]], columns: Sequence[str]) -> dict[str, list[str]]:
    """Every row's metrics as cells in percent with one decimal ("-" where a metric is missing or not finite)."""
    return {
        name: [f"{100 * m[c]:.1f}" if m.get(c) is not None and math.isfinite(m[c]) else "-" for c in columns]
        for name, m in rows.items()
    }


def split_features(args: argparse.Namespace, model: EvalModel, device: torch.device, split: str) -> SplitFeatures:
    """``extract_features`` of the ``split`` of ``--dataset`` (cut to ``--max-images``)."""
    return extract_features(model, load_split(args, split), args.batch_size, device, args.workers)


def build_model(
    checkpoint: str, config: dict[str, Any], args: argparse.Namespace, device: torch.device, clusters: bool = True
) -> EvalModel:
    """The model a ``--checkpoint(s)`` entry names: a teacher (``build_teacher``), or a baseline of
    ``eval.baselines`` with ``config``'s prototype count (``DEFAULT_CONFIG``'s without one), whose k-means is
    fitted here (when the evaluation uses ``clusters``) on the train split of ``--dataset``, cut as ``load_split``
    cuts it, and on nothing else."""
    if checkpoint not in BASELINES:
        teacher = build_teacher(checkpoint, config, args.seed, device, args.student)
        size = args.image_size or DEFAULT_IMAGE_SIZE[args.dataset]
        teacher.encoder_k.check_input_size(size, size)  # before any pass over the data
        return teacher
    num_prototypes = config.get("num_prototypes", DEFAULT_CONFIG["num_prototypes"])
    model = build_baseline(checkpoint, num_prototypes, args.seed).to(device)
    return model.fit(split_features(args, model, device, "train").c5) if clusters else model


@dataclass(frozen=True)
class Evaluation:
    """One evaluation command line: ``evaluate(args, model, device)`` computes a result dict for one model,
    ``summary_row`` picks its headline numbers for the table, ``describe(args, result)`` is the line printed
    above it; ``add_options`` adds the evaluation's own flags and ``check(args)`` rejects bad ones before any work.
    With ``multiple`` the CLI takes ``--checkpoints`` and its JSON holds ``{"models": {name: result}}``.
    ``clusters``: the evaluation uses the prototypes' clusters (a baseline's k-means is fitted only then).
    """

    prog: str
    description: str
    evaluate: Callable[[argparse.Namespace, EvalModel, torch.device], dict[str, Any]]
    summary_row: Callable[[dict[str, Any]], dict[str, float]]
    describe: Callable[[argparse.Namespace, dict[str, Any]], str]
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    check: Callable[[argparse.Namespace], None] | None = None
    multiple: bool = False
    clusters: bool = True


def run_evaluation(evaluation: Evaluation, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, evaluate each model, print the table, write ``--output-json``; 0, or 2 after a one-line error.

    A ``random`` model takes ``--arch`` / ``--dim-*`` / ``--num-prototypes``; without them, the network of the
    first checkpoint file in the list (so the baseline is the same network), else ``DEFAULT_CONFIG``. The
    training-free baselines take their k-means cluster count from the same place (the model's prototype count).
    """
    parser = argparse.ArgumentParser(prog=evaluation.prog, description=evaluation.description)
    add_model_args(parser, multiple=evaluation.multiple)
    add_data_args(parser)
    if evaluation.add_options is not None:
        evaluation.add_options(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        check_args(args)
        if evaluation.check is not None:
            evaluation.check(args)
        device = parse_device(args.device)
        checkpoints = args.checkpoints if evaluation.multiple else [args.checkpoint]
        names = [model_name(c) for c in checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"two checkpoints share a name ({', '.join(names)}); rename one")
        config = random_config(args)
        files = [c for c in checkpoints if c not in (RANDOM, *BASELINES)]
        if set(checkpoints) & {RANDOM, *BASELINES} and files and not config:
            config = teacher_config(load_checkpoint(files[0]))
        results: dict[str, dict[str, Any]] = {}
        for checkpoint, name in zip(checkpoints, names, strict=True):
            start = time.perf_counter()
            model = build_model(checkpoint, config, args, device, evaluation.clusters)
            result = evaluation.evaluate(args, model, device)
            result.update(
                checkpoint=checkpoint,
                dataset=args.dataset,
                summary=evaluation.summary_row(result),
                seconds=time.perf_counter() - start,
            )
            results[name] = result
            print(evaluation.describe(args, result))
        rows = {name: result["summary"] for name, result in results.items()}
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        print(format_table(percent_cells(rows, columns), columns))
        if args.output_json:
            payload = (
                {"dataset": args.dataset, "data_dir": args.data_dir, "models": results}
                if evaluation.multiple
                else results[names[0]]
            )
            write_json(args.output_json, payload)
        return 0

    return run_cli(evaluation.prog, run)


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``; turn user-facing errors (bad files, options, data) into one ``prog: error:`` line."""
    try:
        return main()
    except (ValueError, OSError, OutputWriteError) as exc:
        lines = str(exc).strip().splitlines()
        message = lines[0] if lines else type(exc).__name__
        if message.startswith("Caught ") and "DataLoader worker" in message:  # --workers: the worker's own last line
            message = lines[-1].split(f"{type(exc).__name__}: ", 1)[-1]
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
