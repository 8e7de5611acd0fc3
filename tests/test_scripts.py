"""scripts/: the original README's pretraining commands as written, and scripts/torchrun.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# The flags the issue's user adds to try a recipe on a CPU; the recipes' own flags come first, so these override.
TRY = [
    "--arch",
    "resnet18",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--image-size",
    "64",
    "--dim-hidden",
    "32",
    "--num-workers",
    "0",
]
QUICK = ["--no-tensorboard", "--no-fp16"]  # bf16 autocast and TensorBoard pictures are slow on a CPU
# recipe: (data the recipe reads, --dataset, --num-prototypes, --save-freq, images it finds in the tiny tree)
RECIPES = {
    "slotcon_coco_r50_800ep.sh": ("datasets/coco/", "COCO", 256, 50, 8),
    "slotcon_cocoplus_r50_800ep.sh": ("datasets/coco/", "COCOplus", 256, 50, 12),
    "slotcon_imagenet_r50_100ep.sh": ("datasets/imagenet/", "ImageNet", 2048, 5, 8),
}


def _images(folder: Path, count: int, suffix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        blocks = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))).save(folder / f"{i:012d}{suffix}")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A checkout with tiny datasets linked where the original README puts them (./datasets/coco, imagenet)."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("main_pretrain.py", "data", "models", "utils", "eval"):
        (root / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "scripts", root / "scripts")  # the scripts find the code next to themselves
    data = tmp_path_factory.mktemp("data")
    _images(data / "coco" / "train2017", 8, ".jpg")
    _images(data / "coco" / "unlabeled2017", 4, ".jpg")
    for label in ("n01440764", "n01443537"):
        _images(data / "imagenet" / "train" / label, 4, ".JPEG")
    (root / "datasets").mkdir()
    for name in ("coco", "imagenet"):
        (root / "datasets" / name).symlink_to(data / name)
    return root


def _user_env(**extra: str) -> dict[str, str]:
    """A shell whose ``python`` is this project's environment, as after activating it; no PYTHON, no GPUS."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "GPUS", "DEVICE", "DATA_DIR", "OUTPUT_DIR")}
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", **extra}


def _shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=_user_env(**env), capture_output=True, text=True, timeout=600
    )


def test_the_recipes_are_executable():
    for script in ("pretrain_r50.sh", "slurm_pretrain.sh", "torchrun.py", *RECIPES, "slotcon_imagenet_r50_200ep.sh"):
        assert os.access(ROOT / "scripts" / script, os.X_OK), script
    if shutil.which("git") and (ROOT / ".git").exists():  # what a clone gets
        listed = subprocess.run(["git", "ls-files", "-s", "scripts"], cwd=ROOT, capture_output=True, text=True)
        modes = {line.split()[3]: line.split()[0] for line in listed.stdout.splitlines()}
        assert all(mode == "100755" for path, mode in modes.items() if path.endswith((".sh", ".py"))), modes


def test_without_gpus_the_original_command_says_what_to_run_instead_and_that_works(checkout):
    """``./scripts/slotcon_coco_r50_800ep.sh`` as the README writes it, on a machine without GPUs."""
    done = _shell("./scripts/slotcon_coco_r50_800ep.sh", checkout, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "./scripts/slotcon_coco_r50_800ep.sh trains on 8 GPUs (GPUS=8) and this machine has "
        "none: run GPUS=0 ./scripts/slotcon_coco_r50_800ep.sh to train on the CPU"
    )
    instead = re.search(r"run (GPUS=0 \S+) to train", lines[0]).group(1)
    # The suggestion as given, with the user's small flags (recipe defaults otherwise: bf16, TensorBoard on).
    done = _shell(" ".join([instead, *TRY]), checkout)
    assert done.returncode == 0, done.stderr[-3000:]
    out = checkout / "output" / "slotcon_coco_r50_800ep"
    config = json.loads((out / "config.json").read_text())
    assert config["fp16"] and config["tensorboard"] and config["device"] == "cpu"
    assert (out / "ckpt_epoch_1.pth").is_file() and any((out / "tensorboard").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_original_recipe_trains_on_its_dataset_link(checkout, recipe):
    data_dir, dataset, prototypes, save_freq, images = RECIPES[recipe]
    done = _shell(" ".join([f"GPUS=0 ./scripts/{recipe}", *TRY, *QUICK]), checkout)
    assert done.returncode == 0, done.stderr[-3000:]
    out = checkout / "output" / recipe.removesuffix(".sh")
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["data_dir"], config["num_prototypes"], config["save_freq"]) == (
        dataset,
        f"./{data_dir}",
        prototypes,
        save_freq,
    )
    assert config["num_instances"] == images and config["optimizer"] == "lars" and config["auto_resume"]
    assert (config["arch"], config["epochs"], config["batch_size"]) == ("resnet18", 1, 4)  # the user's flags win
    assert (out / "ckpt_epoch_1.pth").is_file() and "training done" in (out / "log.txt").read_text()


def test_a_missing_dataset_and_a_direct_call_of_the_shared_part_are_one_line(checkout, tmp_path):
    done = _shell("GPUS=0 ./scripts/slotcon_imagenet_r50_100ep.sh", checkout, DATA_DIR=str(tmp_path / "nothing"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"./scripts/slotcon_imagenet_r50_100ep.sh: no data at {tmp_path / 'nothing'} "
        "(link the dataset there, e.g. ln -s /path/to/the/dataset "
        f"{tmp_path / 'nothing'}, or set DATA_DIR)"
    )
    done = _shell("./scripts/pretrain_r50.sh", checkout)
    assert done.returncode == 1 and "run one of the recipes" in done.stderr


# ---- scripts/torchrun.py

# A worker that exits with its rank's code from argv[1]: at once ("go"; rank r after r seconds), or on SIGUSR1.
WORKER = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
code = int(sys.argv[1].split(",")[rank])
stopped = []
signal.signal(signal.SIGUSR1, lambda *_: stopped.append(1))
open(os.path.join(sys.argv[2], f"ready{rank}"), "w").close()
if sys.argv[3] == "go":
    time.sleep(rank)
    sys.exit(code)
deadline = time.time() + 60
while not stopped and time.time() < deadline:
    time.sleep(0.05)
sys.exit(code if stopped else 99)
"""


def _launch(tmp_path: Path, launcher: list[str], codes: str, wait: bool) -> subprocess.Popen:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    return subprocess.Popen(
        [*launcher, "--standalone", "--nproc_per_node=2", str(worker), codes, str(tmp_path), "wait" if wait else "go"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _when_ready(tmp_path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)


OURS = [sys.executable, "scripts/torchrun.py"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_torchrun_passes_sigusr1_to_the_workers_and_their_exit_code_75_back(tmp_path):
    proc = _launch(tmp_path, OURS, "75,75", wait=True)
    _when_ready(tmp_path, proc)
    proc.send_signal(signal.SIGUSR1)  # to torchrun only (a scheduler that signals the task, not the whole step)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("codes, ours, theirs", [("74,74", 74, 1), ("1,75", 1, 1)])
def test_torchrun_exit_codes_against_plain_torchrun(tmp_path, codes, ours, theirs):
    for launcher, expected in ((OURS, ours), (TORCHRUN, theirs)):
        for ready in tmp_path.glob("ready*"):
            ready.unlink()
        proc = _launch(tmp_path, launcher, codes, wait=False)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == expected, (launcher, stderr[-3000:])
