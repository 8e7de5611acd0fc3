"""Flag checks of scripts/demo.sh through DEMO_DRY_RUN (the commands it would run, none run): the CPU and
CUDA recipes, one output folder per seed, the spread table for several seeds. The demo itself runs in
`make demo`; these only pin what it passes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(tmp_path: Path, **env: str) -> tuple[int, str, str]:
    full_env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEMO_DRY_RUN": "1",
        "DEMO_DATA": str(tmp_path / "data"),
        "DEMO_OUT": str(tmp_path / "out"),
        **env,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")], env=full_env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def _commands(stdout: str, needle: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("+ ") and needle in line]


def test_cpu_recipe(tmp_path: Path) -> None:
    code, out, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_CPU_BF16="0")
    assert code == 0, err
    [train] = _commands(out, "main_pretrain.py")
    for flag in (
        "--device cpu",
        "--no-fp16",
        "--epochs 3",
        "--image-size 64",
        "--output-stride 8",
        "--num-prototypes 16",
        "--center-momentum 0.97",
        "--batch-size 16",
        "--seed 0",
        f"--output-dir {tmp_path / 'out'} ",
    ):
        assert flag in train, flag
    reports = _commands(out, "eval.report")
    data = tmp_path / "data"
    sets = [(data, "eval.json"), (f"{data}-colourfree", "eval-colour-free.json")]
    sets.append((f"{data}-colourfree-grey", "eval-colour-free-grey.json"))
    assert len(reports) == 3
    for report, (folder, json_name) in zip(reports, sets, strict=True):  # every set: random, baselines, trained
        assert f"--checkpoints random colour colour-hist {tmp_path / 'out'}/current.pth " in report
        assert f"--data-dir {folder} " in report and report.endswith(f"--output-json {tmp_path / 'out'}/{json_name}")
        assert "--device cpu" in report and "--image-size 128" in report
    scenes = _commands(out, "data.demo_scenes")
    assert [s.split("--out-dir ")[1] for s in scenes] == [
        str(data),
        f"{data}-colourfree --tint-class random",
        f"{data}-colourfree-grey --tint-class random --greyscale",
    ]
    pictures = _commands(out, "viz_slots.py")
    assert len(pictures) == 2 and "--top-prototypes 6" in pictures[0] and "--mode assign" in pictures[1]
    assert not _commands(out, "eval.metrics")  # one seed: no spread table
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # nothing ran


def test_cpu_bfloat16_follows_the_cpu(tmp_path: Path) -> None:
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()  # asked independently
    for setting, flag in (("1", "--fp16"), ("0", "--no-fp16"), ("auto", "--fp16" if native else "--no-fp16")):
        code, out, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_CPU_BF16=setting)
        assert code == 0, err
        [train] = _commands(out, "main_pretrain.py")
        assert f" {flag} " in train, setting
    code, _, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_CPU_BF16="yes")
    assert code == 2 and err.strip() == "demo.sh: error: DEMO_CPU_BF16 must be auto, 0 or 1, got 'yes'"


def test_compute_threads_leave_a_core_for_the_loader(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(
        PYTHON=sys.executable,
        DEMO_DRY_RUN="1",
        DEMO_DEVICE="cpu",
        DEMO_DATA=str(tmp_path / "d"),
        DEMO_OUT=str(tmp_path / "o"),
    )
    for cores, threads in (("0", 1), ("0,1", 1), ("0,1,2,3", 3)):
        if len(cores.split(",")) > len(os.sched_getaffinity(0)):
            continue
        done = subprocess.run(
            ["taskset", "-c", cores, "bash", str(ROOT / "scripts" / "demo.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"on cpu (OMP_NUM_THREADS={threads})," in done.stdout, (cores, done.stdout)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env={**env, "OMP_NUM_THREADS": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "on cpu (OMP_NUM_THREADS=5)," in done.stdout  # the user's setting wins


def test_cuda_recipe_trains_longer(tmp_path: Path) -> None:
    code, out, err = _dry_run(tmp_path, DEMO_DEVICE="cuda")
    assert code == 0, err
    [train] = _commands(out, "main_pretrain.py")
    assert "--device cuda" in train and "--epochs 8" in train and "--no-fp16" not in train
    assert "--num-prototypes 16" in train and "--batch-size 16" in train  # the same network and batch
    assert all("--device cuda" in c for c in _commands(out, "eval.report") + _commands(out, "viz_slots.py"))


def test_seeds_get_their_own_folders_and_a_spread_table(tmp_path: Path) -> None:
    code, out, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_SEEDS="0 1 2")
    assert code == 0, err
    trains = _commands(out, "main_pretrain.py")
    folders = [tmp_path / "out", tmp_path / "out-seed1", tmp_path / "out-seed2"]
    for seed, (train, folder) in enumerate(zip(trains, folders, strict=True)):
        assert f"--seed {seed} " in train and f"--output-dir {folder} " in train
    reports = _commands(out, "eval.report")
    seeds = [r.split("--seed ")[1].split()[0] for r in reports]
    assert seeds == ["0"] * 3 + ["1"] * 3 + ["2"] * 3  # random init and k-means per seed too, on the three sets
    spreads = _commands(out, "eval.metrics")
    assert len(spreads) == 3  # one table per set
    for spread, json_name in zip(spreads, ("eval", "eval-colour-free", "eval-colour-free-grey"), strict=True):
        assert spread.split()[-3:] == [f"{folder}/{json_name}.json" for folder in folders]


@pytest.mark.parametrize("device", ["gpu", "cuda:1"])
def test_bad_device_is_one_line(tmp_path: Path, device: str) -> None:
    code, _, err = _dry_run(tmp_path, DEMO_DEVICE=device)
    assert code == 2 and err.strip() == f"demo.sh: error: DEMO_DEVICE must be auto, cpu or cuda, got '{device}'"


def test_the_vit_demo_trains_a_vit_with_the_vit_optimizer(tmp_path: Path) -> None:
    code, out, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_CPU_BF16="0", DEMO_ARCH="vit_tiny_p8")
    assert code == 0, err
    [train] = _commands(out, "main_pretrain.py")
    for flag in ("--arch vit_tiny_p8", "--optimizer adamw", "--weight-decay-end 0.4", "--clip-grad 3.0", "--epochs 3"):
        assert flag in train, flag
    assert "--output-stride" not in train and "--arch resnet18" not in train
    code, _, err = _dry_run(tmp_path, DEMO_DEVICE="cpu", DEMO_ARCH="vit_huge")
    assert code == 2 and err.strip() == "demo.sh: error: DEMO_ARCH must be resnet18 or vit_tiny_p8, got 'vit_huge'"
