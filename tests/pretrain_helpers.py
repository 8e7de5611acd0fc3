"""Shared pieces of the end-to-end tests: a tiny configuration, image folders, running main_pretrain.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "folder",
    "--arch",
    "resnet18",
    "--image-size",
    "64",
    "--batch-size",
    "8",
    "--dim-hidden",
    "64",
    "--dim-out",
    "32",
    "--num-prototypes",
    "16",
    "--no-fp16",
    "--device",
    "cpu",
    "--optimizer",
    "lars",
    "--base-lr",
    "0.5",
    "--warmup-epoch",
    "1",
    "--print-freq",
    "1",
    "--seed",
    "0",
    "--no-tensorboard",
]


def make_images(root: Path, count: int = 24) -> Path:
    """``count`` blocky 96x128 JPEGs in two subfolders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = root / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))).save(sub / f"{i:03d}.jpg")
    return root


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main_pretrain.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kw
    )


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "main_pretrain.py", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def metrics(output: Path) -> dict[int, dict]:
    """The last logged record of every iteration (a resumed run may log an iteration twice)."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r for r in records}


def logged_iterations(output: Path) -> int:
    log = output / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0
