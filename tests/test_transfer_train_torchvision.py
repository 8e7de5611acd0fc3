"""transfer/detection/train_torchvision.py: the Mask R-CNN fallback trainer and its COCO evaluation (CPU)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.transfer_helpers import save_slotcon_checkpoint, tiny_demo_sets
from transfer.detection import train_torchvision


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory) -> dict:
    return tiny_demo_sets(tmp_path_factory.mktemp("tv_demo"), num_train=4, num_eval=3)


def test_lr_schedule_warms_up_then_steps_down():
    lrs = train_torchvision.lr_schedule(10, 0.02, warmup=4)
    np.testing.assert_allclose(lrs[:4], 0.02 * (0.001 + 0.999 * np.arange(4) / 4))
    np.testing.assert_allclose(lrs[4:8], 0.02)
    np.testing.assert_allclose(lrs[8:], 0.002)  # x0.1 from 80% of the iterations


class _Oracle(torch.nn.Module):
    """Answers with the ground truth (or nothing): COCO AP must then be 100 (or 0)."""

    def __init__(self, dataset: train_torchvision.CocoInstances, empty: bool = False) -> None:
        super().__init__()
        self.dataset, self.empty = dataset, empty

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.seen = getattr(self, "seen", 0)
        outputs = []
        for _ in images:
            _, target = self.dataset[self.seen]
            self.seen += 1
            n = 0 if self.empty else len(target["labels"])
            outputs.append(
                {
                    "boxes": target["boxes"][:n],
                    "labels": target["labels"][:n],
                    "scores": torch.ones(n),
                    "masks": target["masks"][:n, None].float(),
                }
            )
        return outputs


def test_evaluate_scores_ground_truth_100_and_nothing_0(demo_sets):
    val = demo_sets["splits"]["val"]
    dataset = train_torchvision.CocoInstances(val["coco_json"], val["images"], train=False)
    perfect = train_torchvision.evaluate(_Oracle(dataset), dataset, torch.device("cpu"), batch_size=2)
    assert perfect["bbox"]["AP"] == pytest.approx(100.0) and perfect["segm"]["AP"] == pytest.approx(100.0)
    nothing = train_torchvision.evaluate(_Oracle(dataset, empty=True), dataset, torch.device("cpu"), batch_size=2)
    assert nothing["bbox"]["AP"] == 0.0 and nothing["segm"]["AP"] == 0.0


def test_trains_from_the_checkpoint_or_from_random_weights_and_writes_results(demo_sets, tmp_path):
    ckpt = tmp_path / "slotcon_r18.pth"
    teacher = save_slotcon_checkpoint(ckpt, "resnet18", seed=5)["teacher"]
    train, val = demo_sets["splits"]["train"], demo_sets["splits"]["val"]
    data = [
        "--train-json",
        train["coco_json"],
        "--train-images",
        train["images"],
        "--val-json",
        val["coco_json"],
        "--val-images",
        val["images"],
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
    ]
    for name, weights in (("pretrained", ["--checkpoint", str(ckpt)]), ("random", ["--random-init", "--depth", "18"])):
        train_torchvision.main([*data, *weights, "--output-dir", str(tmp_path / name)])
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert set(results) == {"bbox", "segm"} and all(0 <= results[t]["AP"] <= 100 for t in results)
        model = torch.load(tmp_path / name / "model_final.pth", weights_only=True)["model"]
        # Two warmup steps at lr <= 2e-5 move the stem very little: near the teacher only if it was loaded.
        distance = (model["backbone.body.conv1.weight"] - teacher["conv1.weight"]).abs().max().item()
        assert (distance < 1e-2) == (name == "pretrained"), (name, distance)
        assert math.isfinite(distance)
