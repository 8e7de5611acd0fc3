"""All evaluations for a list of models, as one table (rows = models, columns = metrics) and JSON.

Per model, the backbone runs once over each split; unsupervised segmentation (Hungarian and majority
matching, on the eval split), the linear probe and k-NN all reuse those cached C5 features.
A ``random`` model copies the architecture and sizes of the first checkpoint file in the list (so the
baseline is the same network), unless ``--arch`` / ``--dim-*`` / ``--num-prototypes`` are given. Usage::

    python -m eval.report --checkpoints random output/ckpt.pth --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from eval import knn, linear_probe, unsupervised_seg
from eval.common import (
    RANDOM,
    add_data_args,
    add_model_args,
    build_model,
    check_args,
    extract_features,
    format_table,
    load_split,
    model_name,
    random_config,
    resolve_device,
    run_cli,
    write_json,
)
from models.weights import teacher_config
from utils.checkpoint import load_checkpoint


def evaluate_model(checkpoint: str, args: argparse.Namespace, device: torch.device,
                   config: dict[str, Any] | None) -> dict[str, Any]:
    """Every evaluation of one model; ``config`` configures a random model."""
    start = time.perf_counter()
    model = build_model(checkpoint, config, args.seed, device, args.student)
    train_set, eval_set = load_split(args, "train"), load_split(args, "eval")
    train = extract_features(model, train_set, args.batch_size, device, args.workers)
    evaluation = extract_features(model, eval_set, args.batch_size, device, args.workers)
    seg = unsupervised_seg.run_unsupervised_seg(model, evaluation.batches(args.batch_size, device),
                                                evaluation.num_classes, evaluation.class_names)
    probe = linear_probe.run_linear_probe(train, evaluation, device, args.epochs, args.lr, args.batch_size,
                                          args.seed)
    results: dict[str, Any] = {"unsupervised_seg": seg, "linear_probe": probe}
    summary = {**unsupervised_seg.summary_row(seg), **linear_probe.summary_row(probe)}
    if evaluation.instance is not None:
        results["knn"] = knn.run_knn(train, evaluation, device, args.k, args.temperature, args.batch_size)
        summary.update(knn.summary_row(results["knn"]))
    results["summary"] = summary
    results["seconds"] = time.perf_counter() - start
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.splitlines()[0])
    add_model_args(parser, multiple=True)
    add_data_args(parser)
    parser.add_argument("--epochs", type=int, default=linear_probe.DEFAULT_EPOCHS, help="linear probe epochs")
    parser.add_argument("--lr", type=float, default=linear_probe.DEFAULT_LR, help="linear probe Adam learning rate")
    parser.add_argument("--k", type=int, default=knn.DEFAULT_K, help="k-NN neighbours")
    parser.add_argument("--temperature", type=float, default=knn.DEFAULT_TEMPERATURE, help="k-NN vote temperature")
    args = parser.parse_args(argv)

    def run() -> int:
        check_args(args)
        device = resolve_device(args.device)
        names = [model_name(c) for c in args.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"two checkpoints share a name ({', '.join(names)}); rename one")
        config = random_config(args)
        files = [c for c in args.checkpoints if c != RANDOM]
        if RANDOM in args.checkpoints and files and not config:
            config = teacher_config(load_checkpoint(files[0]))
        rows: dict[str, dict[str, float]] = {}
        payload: dict[str, Any] = {"dataset": args.dataset, "data_dir": args.data_dir, "models": {}}
        for checkpoint, name in zip(args.checkpoints, names, strict=True):
            results = evaluate_model(checkpoint, args, device, config)
            payload["models"][name] = {"checkpoint": checkpoint, **results}
            rows[name] = results["summary"]
            print(f"evaluated {name} in {results['seconds']:.1f} s", file=sys.stderr)
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        print(format_table(rows, columns))
        if args.output_json:
            write_json(args.output_json, payload)
        return 0

    return run_cli("eval.report", run)


if __name__ == "__main__":
    sys.exit(main())
