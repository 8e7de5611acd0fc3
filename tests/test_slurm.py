"""scripts/slurm_pretrain.sh under a stand-in for SLURM: fake ``srun``/``scontrol`` on PATH, and a scheduler loop
that starts the batch script again whenever it asked to be requeued (as SLURM does after ``scontrol requeue``)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.pretrain_helpers import ROOT, logged_iterations, metrics
from utils.checkpoint import load_checkpoint

JOB_ID = "4242"

FAKE_SRUN = """#!{python}
# Stand-in for srun in a batch job: the command once per node ($SLURM_JOB_NUM_NODES), all on this machine, in
# parallel; the exit code is the highest of the tasks' (as srun's). Records its pid: the test signals the step.
import os, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
with open(os.path.join(os.environ["FAKE_SLURM"], "srun.pid"), "w") as f:
    f.write(str(os.getpid()))
tasks = [subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(n), "SLURM_PROCID": str(n)}})
         for n in range(int(os.environ["SLURM_JOB_NUM_NODES"]))]
codes = [task.wait() for task in tasks]
sys.exit(max(code if code >= 0 else 128 - code for code in codes))
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
# Stand-in for scontrol: expands a comma-separated node list; records a requeue request for the scheduler loop.
case "$1 $2" in
  "show hostnames") tr ',' '\\n' <<< "$3" ;;
  "requeue "*) echo "$2" >> "$FAKE_SLURM/requeued" ;;
  *) echo "fake scontrol: $*: not supported" >&2; exit 1 ;;
esac
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeSlurm:
    """A one-machine SLURM: ``submit`` runs the batch script, and again after each ``scontrol requeue``."""

    def __init__(self, root: Path, nodes: int) -> None:
        self.root, self.nodes = root, nodes
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
        (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        # sbatch runs a copy of the script from its spool folder, not from the repository
        self.script = root / "spool" / "slurm_script"
        self.script.parent.mkdir()
        shutil.copy(ROOT / "scripts" / "slurm_pretrain.sh", self.script)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "FAKE_SLURM": str(root),
            "SLURM_JOB_ID": JOB_ID,
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes),
            "SLURM_SUBMIT_DIR": str(ROOT),
            "SLURM_CPUS_PER_TASK": "1",
        }

    def submit(self, args: list[str], env: dict[str, str], interrupt=None, max_starts: int = 4) -> list[int]:
        """Run the job until it stops asking for a requeue; the batch script's exit code of every start.

        ``interrupt(start, proc)`` is called while a start runs (to signal it, as the time limit would).
        """
        codes = []
        requests = self.root / "requeued"
        for start in range(max_starts):
            log = open(self.root / f"start{start}.log", "w")  # noqa: SIM115 (closed below)
            proc = subprocess.Popen(
                ["bash", str(self.script), *args],
                cwd=self.root,
                env={**self.env, **env, "SLURM_RESTART_COUNT": str(start)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                if interrupt is not None:
                    interrupt(start, proc)
                codes.append(proc.wait(timeout=600))
            finally:
                if proc.poll() is None:
                    self.signal_step(signal.SIGKILL)
                    proc.kill()
                log.close()
            if not requests.exists():
                return codes
            assert requests.read_text().split() == [JOB_ID]
            requests.unlink()
        raise AssertionError(f"still requeueing after {max_starts} starts: {codes}")

    def log(self, start: int) -> str:
        return (self.root / f"start{start}.log").read_text()

    def signal_step(self, sig: int) -> int:
        """Signal every process of the job step, as SLURM's --signal does (all descendants of srun)."""
        srun = int((self.root / "srun.pid").read_text())
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(stat.parent.name))
        step, todo = [], list(children.get(srun, []))
        while todo:
            pid = todo.pop()
            step.append(pid)
            todo.extend(children.get(pid, []))
        for pid in step:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(step)


# ---- the requeue logic alone, with a stand-in recipe that exits with a chosen code

STUB_RECIPE = """#!/usr/bin/env bash
echo "node $SLURM_NODEID: NNODES=$NNODES RDZV_ENDPOINT=$RDZV_ENDPOINT RDZV_ID=$RDZV_ID GPUS=$GPUS cwd=$PWD args=$*"
if [ "$SLURM_RESTART_COUNT" -eq 0 ]; then exit "$FIRST_EXIT"; fi
"""


@pytest.mark.parametrize("code", [75, 0, 1, 74])
def test_the_job_requeues_itself_only_when_the_run_asks_with_75(tmp_path, code):
    recipe = tmp_path / "recipe.sh"  # exits with ``code`` at the first start, 0 at any later one
    recipe.write_text(STUB_RECIPE)
    recipe.chmod(0o755)
    slurm = FakeSlurm(tmp_path / "slurm", nodes=2)
    codes = slurm.submit([str(recipe), "--epochs", "3"], {"FIRST_EXIT": str(code), "RDZV_PORT": "29999"})
    if code == 75:
        assert codes == [0, 0]  # requeued once, then done
        assert "stopped before its time limit with current.pth saved: requeueing it" in slurm.log(0)
        assert "requeueing" not in slurm.log(1)
    else:
        assert codes == [code] and "requeueing" not in slurm.log(0)
    for node in (0, 1):  # what each node's recipe got: the rendezvous on the first node, the job's id
        assert (
            f"node {node}: NNODES=2 RDZV_ENDPOINT=localhost:29999 RDZV_ID={JOB_ID} GPUS=8 cwd={ROOT} args=--epochs 3"
        ) in slurm.log(0)


def test_a_missing_recipe_is_one_line(tmp_path):
    slurm = FakeSlurm(tmp_path / "slurm", nodes=1)
    assert slurm.submit(["scripts/no_such_recipe.sh"], {}) == [1]
    assert slurm.log(0).strip().startswith("usage: sbatch scripts/slurm_pretrain.sh RECIPE")
    assert len(slurm.log(0).strip().splitlines()) == 1


# ---- the real thing: two nodes of one gloo process each, SIGUSR1 before the time limit, requeue, resume

FLAGS = [
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
    "--base-lr",
    "0.5",
    "--warmup-epoch",
    "1",
    "--print-freq",
    "1",
    "--seed",
    "0",
    "--no-tensorboard",
    "--epochs",
    "2",
    "--num-workers",
    "1",
]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """24 blocky JPEGs in COCO's layout (train2017/*.jpg): 3 iterations per epoch at batch 8."""
    root = tmp_path_factory.mktemp("coco")
    (root / "train2017").mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        blocks = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))).save(
            root / "train2017" / f"{i:012d}.jpg"
        )
    return root


def _job_env(coco: Path, out: Path) -> dict[str, str]:
    return {
        "DATA_DIR": str(coco),
        "OUTPUT_DIR": str(out),
        "GPUS": "1",
        "DEVICE": "cpu",
        "RDZV_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_a_job_signalled_before_its_time_limit_requeues_and_finishes_like_an_uninterrupted_one(tmp_path, coco):
    recipe = [str(ROOT / "scripts" / "slotcon_coco_r50_800ep.sh"), *FLAGS]
    reference = tmp_path / "uninterrupted"
    slurm = FakeSlurm(tmp_path / "slurm_a", nodes=2)
    assert slurm.submit(recipe, _job_env(coco, reference)) == [0], slurm.log(0)[-3000:]

    out = tmp_path / "requeued"
    slurm = FakeSlurm(tmp_path / "slurm_b", nodes=2)
    signalled = []

    def time_limit(start: int, proc: subprocess.Popen) -> None:
        if start > 0:
            return
        deadline = time.time() + 300
        while logged_iterations(out) < 2:
            assert proc.poll() is None and time.time() < deadline, slurm.log(0)[-3000:]
            time.sleep(0.05)
        signalled.append(slurm.signal_step(signal.SIGUSR1))

    codes = slurm.submit(recipe, _job_env(coco, out), interrupt=time_limit)
    first, second = slurm.log(0), slurm.log(1) if len(codes) > 1 else ""
    assert codes == [0, 0], first[-3000:] + second[-3000:]
    assert signalled[0] >= 4  # two torchruns, two workers (and their loader processes)
    assert "preempted: saved" in first and "requeueing it" in first and "requeueing" not in second
    assert "resumed from" in second and "training done" in second
    assert 2 <= first.count("Train: [") < 6 <= first.count("Train: [") + second.count("Train: [")

    expected, got = metrics(reference), metrics(out)
    assert sorted(got) == sorted(expected) == list(range(6))
    for it, record in expected.items():
        for key in ("loss", "loss_group", "loss_slot", "lr", "momentum"):
            assert got[it][key] == pytest.approx(record[key], rel=1e-6, abs=1e-9), (it, key)
    final_a, final_b = load_checkpoint(reference / "current.pth"), load_checkpoint(out / "current.pth")
    assert final_a["epoch"] == final_b["epoch"] == 2
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=1e-5, atol=1e-7, msg=key)
