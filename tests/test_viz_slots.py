import argparse

import numpy as np
import pytest
import torch

from eval.visualize import pixel_assignment, prototype_palette
from viz_slots import best_images, choose_prototypes, main, tint


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"idxs": "", "sampling": 0, "seed": 0, **kw})


def test_idxs_are_parsed_as_integers_and_checked():
    assert choose_prototypes(_args(idxs="3,17,42"), 64) == [3, 17, 42]
    with pytest.raises(SystemExit, match="out of range"):
        choose_prototypes(_args(idxs="3,99"), 64)
    with pytest.raises(SystemExit, match="comma-separated integers"):
        choose_prototypes(_args(idxs="a,b"), 64)


def test_sampling_is_seeded_and_distinct():
    first = choose_prototypes(_args(sampling=10, seed=1), 16)
    assert first == choose_prototypes(_args(sampling=10, seed=1), 16)
    assert len(set(first)) == 10 and first != choose_prototypes(_args(sampling=10, seed=2), 16)
    assert choose_prototypes(_args(), 5) == [0, 1, 2, 3, 4]


def test_best_images_rank_by_mean_score_of_assigned_pixels():
    # 3 images, 2 prototypes, 1x2 pixels. Image 2 has prototype 0 winning with the highest scores.
    dots = torch.tensor([[[[0.5, 0.1]], [[0.2, 0.3]]],
                         [[[0.6, 0.0]], [[0.1, 0.9]]],
                         [[[0.9, 0.8]], [[0.1, 0.2]]]])
    top = best_images(dots, topk=2)
    # prototype 0: image 2 wins both pixels (mean 0.85), image 1 one pixel (0.6), image 0 one pixel (0.5)
    assert top[0].tolist() == [2, 1]
    # prototype 1: image 1 pixel 1 (0.9), image 0 pixel 1 (0.3); image 2 wins none (mean over all, 0.15)
    assert top[1].tolist() == [1, 0]


def test_tint_and_assignment_maps():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = tint(image, mask, alpha=0.6)
    assert out[0, 0].tolist() == [162, 60, 60] and out[1, 1].tolist() == [100, 100, 100]
    dots = torch.zeros(1, 3, 2, 2)
    dots[0, 2, 0, 0] = dots[0, 1, 1, 1] = 1.0
    labels = pixel_assignment(dots, 2)
    assert labels[0, 0, 0] == 2 and labels[0, 1, 1] == 1
    palette = prototype_palette(64)
    assert palette.shape == (64, 3) and len({tuple(c) for c in palette}) == 64


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["--model-path", str(tmp_path / "none.pth"), "--data-dir", str(tmp_path), "--device", "cpu"])


def test_both_pictures_are_drawn_from_a_checkpoint(tmp_path):
    from data.demo_scenes import generate_scenes
    from models import SlotCon

    generate_scenes(tmp_path / "scenes", num_train=4, num_eval=6, size=64, seed=0, workers=1)
    torch.manual_seed(0)
    model = SlotCon(arch="resnet18", dim_hidden=32, dim_out=16, num_prototypes=8)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"args": {"arch": "resnet18"}, "model": {f"module.{k}": v for k, v in model.state_dict().items()}},
               checkpoint)
    common = ["--model-path", str(checkpoint), "--dataset", "demo", "--data-dir", str(tmp_path / "scenes"),
              "--image-size", "64", "--device", "cpu", "--topk", "3"]
    main([*common, "--idxs", "1,5", "--save-path", str(tmp_path / "nn.png")])
    main([*common, "--mode", "assign", "--num-images", "2", "--save-path", str(tmp_path / "assign.png")])
    assert (tmp_path / "nn.png").stat().st_size > 1000 and (tmp_path / "assign.png").stat().st_size > 1000
