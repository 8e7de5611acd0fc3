"""All evaluations for a list of models, as one table (rows = models, columns = metrics) and JSON.

Per model, the backbone runs once over each split; unsupervised segmentation (Hungarian and majority
matching, on the eval split), the linear probe, dense nearest-neighbour retrieval (``eval.dense_retrieval``),
k-NN and object discovery (FG-ARI, mBO; datasets with instance maps) all reuse those cached C5 features.
A ``random`` model copies the architecture and sizes of the first checkpoint file in the list (so the
baseline is the same network), unless ``--arch`` / ``--dim-*`` / ``--num-prototypes`` are given. Usage::

    python -m eval.report --checkpoints random output/ckpt.pth --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from eval import dense_retrieval, knn, linear_probe, object_discovery, unsupervised_seg
from eval.common import EvalModel, Evaluation, run_evaluation, split_features


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    """Every evaluation of one model, from one backbone pass over each split."""
    train, evaluation = (split_features(args, model, device, split) for split in ("train", "eval"))
    results: dict[str, Any] = {
        "unsupervised_seg": unsupervised_seg.run_unsupervised_seg(
            model, evaluation.batches(args.batch_size, device), evaluation.num_classes, evaluation.class_names
        ),
        "linear_probe": linear_probe.run_linear_probe(
            train, evaluation, device, args.epochs, args.lr, args.batch_size, args.seed
        ),
        "dense_retrieval": dense_retrieval.run_from_args(
            args,
            train.batches(args.batch_size, device),
            evaluation.batches(args.batch_size, device),
            len(train),
            evaluation.num_classes,
            evaluation.class_names,
        ),
    }
    if evaluation.instance is not None:
        results["knn"] = knn.run_knn(train, evaluation, device, args.k, args.temperature, args.batch_size)
        results["object_discovery"] = object_discovery.run_object_discovery(
            model, evaluation.batches(args.batch_size, device)
        )
    return results


def summary_row(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of every evaluation that ran."""
    row = {
        **unsupervised_seg.summary_row(results["unsupervised_seg"]),
        **linear_probe.summary_row(results["linear_probe"]),
        "retrieval_miou": dense_retrieval.summary_row(results["dense_retrieval"])["retrieval_miou"],
    }
    if "knn" in results:
        row.update(knn.summary_row(results["knn"]))
    if "object_discovery" in results:
        row.update(object_discovery.summary_row(results["object_discovery"]))
    return row


def describe(args: argparse.Namespace, results: dict[str, Any]) -> str:
    return f"evaluated {results['checkpoint']} in {results['seconds']:.1f} s"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=linear_probe.DEFAULT_EPOCHS, help="linear probe epochs")
    parser.add_argument("--lr", type=float, default=linear_probe.DEFAULT_LR, help="linear probe Adam learning rate")
    parser.add_argument("--k", type=int, default=knn.DEFAULT_K, help="k-NN neighbours")
    parser.add_argument("--temperature", type=float, default=knn.DEFAULT_TEMPERATURE, help="k-NN vote temperature")
    dense_retrieval.add_options(parser, k_flag="--retrieval-k", temperature_flag="--retrieval-temperature")


EVALUATION = Evaluation(
    "python -m eval.report",
    __doc__.splitlines()[0],
    evaluate,
    summary_row,
    describe,
    add_options,
    dense_retrieval.check_options,
    multiple=True,
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
