import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "ddp_step.py"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_p8"])
def test_two_gloo_processes_match_one_process_on_the_same_batch(arch, tmp_path):
    single, double = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, str(SCRIPT), str(single), arch], check=True, cwd=ROOT, timeout=300)
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(SCRIPT),
            str(double),
            arch,
        ],
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "Warning" not in ddp.stderr, ddp.stderr[-3000:]  # torch 2.14 deprecated torch.distributed.nn.functional
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
