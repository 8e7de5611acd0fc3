"""viz_slots.py: the original command as written, the streamed search, and what the pictures hold (each cell
against an independent computation: torchvision crops, the reference's score formula in numpy, unchunked
upsampling)."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from eval.visualize import compose_grid, normalize, prototype_palette
from models import SlotCon
from models.slotcon import SlotConTeacher
from models.weights import load_teacher
from viz_slots import (
    assigned_mean_scores,
    choose_prototypes,
    crop_batches,
    get_args,
    main,
    search,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE, RESIZE, PROTOTYPES = 64, 73, 12  # 73 = round(64 * 8 / 7)
TINY_NET = {"arch": "resnet18", "dim_hidden": 32, "dim_out": 16, "num_prototypes": PROTOTYPES}


def _blocky_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Images of random colour blocks, of varied (non-square) sizes; sorted as the tool lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        blocks = rng.integers(0, 255, (6 + i % 3, 8, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.kron(blocks, np.ones((12, 11, 1), dtype=np.uint8))).save(path)
        paths.append(path)
    return paths


def _crops(paths: list[Path], size: int = SIZE, resize: int = RESIZE) -> np.ndarray:
    """torchvision's Resize + CenterCrop (the reference's preprocessing), independent of data/images.py."""
    transform = T.Compose([T.Resize(resize), T.CenterCrop(size)])
    return np.stack([np.asarray(transform(Image.open(p).convert("RGB"))) for p in paths])


def _checkpoint(path: Path, images: np.ndarray | None = None) -> Path:
    """A tiny full checkpoint. With ``images``, the prototypes are set to the teacher's projected features of
    pixels drawn from them, so that several prototypes win pixels (a random network lets one win them all)."""
    torch.manual_seed(0)
    model = SlotCon(**TINY_NET)
    if images is not None:
        with torch.no_grad():
            teacher = SlotConTeacher.from_slotcon(model).eval()
            features = teacher.features(normalize(images, torch.device("cpu")))  # [N, D, h, w]
            pixels = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
            picked = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))[:PROTOTYPES]]
            model.grouping_k.slot_embed.weight.copy_(picked)
            model.grouping_q.slot_embed.weight.copy_(picked)
    torch.save({"args": {"arch": "resnet18"}, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A folder of 10 images plus one broken file, and a checkpoint whose prototypes split their pixels."""
    root = tmp_path_factory.mktemp("viz")
    paths = _blocky_images(root / "images", 10)
    (root / "images" / "005_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    checkpoint = _checkpoint(root / "ckpt.pth", _crops(paths))
    return root / "images", paths, checkpoint


def _reference_scores(paths: list[Path], checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    """(crops, teacher scores [N, K, h, w]) of all images in one batch."""
    crops = _crops(paths)
    with torch.no_grad():
        dots = load_teacher(checkpoint).eval()(normalize(crops, torch.device("cpu"))).numpy()
    return crops, dots


def _reference_best(dots: np.ndarray, topk: int) -> np.ndarray:
    """[K, topk]: the reference's score (mean similarity over the pixels k wins), best images first."""
    assigned = (dots.argmax(axis=1)[:, None] == np.arange(dots.shape[1])[None, :, None, None]) + 1e-6
    score = (dots * assigned).sum(axis=(2, 3)) / assigned.sum(axis=(2, 3))
    return np.argsort(-score, axis=0, kind="stable")[:topk].T


def _reference_labels(dots: np.ndarray) -> np.ndarray:
    return (
        F.interpolate(torch.from_numpy(dots), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        .argmax(dim=1)
        .numpy()
    )


def _run(scene, tmp_path, *flags) -> np.ndarray:
    folder, _, checkpoint = scene
    out = tmp_path / "picture.png"
    main(
        [
            "--model-path",
            str(checkpoint),
            "--dataset",
            "folder",
            "--data-dir",
            str(folder),
            "--image-size",
            str(SIZE),
            "--dpi",
            str(SIZE // 2),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--save-path",
            str(out),
            *flags,
        ]
    )
    return np.asarray(Image.open(out).convert("RGB"))


def test_nn_cells_hold_each_prototypes_best_images_with_the_pixels_it_wins_tinted(scene, tmp_path, capsys):
    _, paths, checkpoint = scene
    crops, dots = _reference_scores(paths, checkpoint)
    labels = _reference_labels(dots)
    wins = np.bincount(labels.reshape(-1), minlength=PROTOTYPES)
    chosen = [int(k) for k in np.argsort(-wins, kind="stable")[:3]]
    assert (wins[chosen] > 0).all()

    picture = _run(scene, tmp_path, "--topk", "3", "--idxs", ",".join(map(str, chosen)))
    best = _reference_best(dots, 3)
    cells = []
    for row in range(3):
        cells.append([])
        for k in chosen:
            n = best[k, row]
            mask = labels[n] == k
            expected = crops[n].astype(np.float32)
            expected[mask] = 0.6 * expected[mask] + 0.4 * np.array([255.0, 0.0, 0.0])
            cells[-1].append(expected.astype(np.uint8))
    expected = compose_grid(cells, column_titles=[f"#{k}" for k in chosen], font_size=10)
    np.testing.assert_array_equal(picture, expected.array)
    tinted = [labels[best[k, r]] == k for k in chosen for r in range(3)]
    assert any(0 < m.mean() < 1 for m in tinted)  # some cells are partly tinted: the mask is really per pixel
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "005_broken.jpg" in captured.err
    assert "of 10 images; skipped 1 unreadable" in captured.out


def test_top_prototypes_are_those_that_win_the_most_pixels(scene, tmp_path):
    _, paths, checkpoint = scene
    crops, dots = _reference_scores(paths, checkpoint)
    labels = _reference_labels(dots)
    wins = np.bincount(labels.reshape(-1), minlength=PROTOTYPES)
    chosen = [int(k) for k in np.argsort(-wins, kind="stable")[:2]]
    picture = _run(scene, tmp_path, "--topk", "2", "--top-prototypes", "2", "--alpha", "0.5")
    best = _reference_best(dots, 2)
    cells = [
        [
            (
                np.where(
                    (labels[best[k, r]] == k)[..., None],
                    0.5 * crops[best[k, r]].astype(np.float32) + 0.5 * np.array([255.0, 0, 0]),
                    crops[best[k, r]],
                )
            ).astype(np.uint8)
            for k in chosen
        ]
        for r in range(2)
    ]
    titles = [f"#{k}: {wins[k] / wins.sum():.1%}" for k in chosen]
    np.testing.assert_array_equal(picture, compose_grid(cells, column_titles=titles, font_size=10).array)


def test_assign_rows_show_the_image_and_its_outlined_prototype_map(scene, tmp_path):
    folder, paths, checkpoint = scene
    listed = sorted([*paths, folder / "005_broken.jpg"], key=str)
    drawn = np.random.default_rng(3).permutation(len(listed))  # the seeded draw; the broken file is passed over
    picked = sorted([int(n) for n in drawn if listed[n].name != "005_broken.jpg"][:3])
    crops, dots = _reference_scores([listed[n] for n in picked], checkpoint)
    labels = _reference_labels(dots)
    palette = prototype_palette(PROTOTYPES).astype(np.float32)
    picture = _run(scene, tmp_path, "--mode", "assign", "--num-images", "3", "--seed", "3")

    cells, captions = [], []
    for crop, label in zip(crops, labels, strict=True):
        overlay = (0.45 * crop.astype(np.float32) + 0.55 * palette[label]).astype(np.uint8)
        edge = np.zeros(label.shape, dtype=bool)
        edge[:, :-1] |= np.diff(label, axis=1) != 0
        edge[:-1, :] |= np.diff(label, axis=0) != 0
        overlay[edge] = 255
        cells.append([crop, overlay])
        counts = np.bincount(label.reshape(-1), minlength=PROTOTYPES)
        top = [int(k) for k in np.argsort(-counts, kind="stable")[:3] if counts[k] > 0]
        present = int((counts > 0).sum())
        captions.append(
            [
                f"{present} prototype{'s' if present > 1 else ''}:",
                *((tuple(prototype_palette(PROTOTYPES)[k]), f"#{k}: {counts[k] / label.size:.0%}") for k in top),
            ]
        )
    assert any(edge.any() for edge in [np.diff(label, axis=1) != 0 for label in labels])
    expected = compose_grid(cells, column_titles=["image", "prototypes"], row_captions=captions, font_size=10)
    np.testing.assert_array_equal(picture, expected.array)


@pytest.mark.parametrize("batch_size", [1, 64])
def test_streamed_search_keeps_exactly_the_best_images(scene, batch_size):
    _, paths, checkpoint = scene
    _, dots = _reference_scores(paths, checkpoint)
    args = get_args(["--image-size", str(SIZE), "--batch-size", str(batch_size), "--workers", "0"])
    skipped = []
    found = search(
        load_teacher(checkpoint).eval(),
        crop_batches(np.array([str(p) for p in paths]), args, skipped),
        topk=4,
        device=torch.device("cpu"),
        count_pixels=True,
    )
    np.testing.assert_array_equal(found.top_images.numpy(), _reference_best(dots, 4))
    expected_wins = np.bincount(_reference_labels(dots).reshape(-1), minlength=PROTOTYPES)
    np.testing.assert_array_equal(found.pixel_wins.numpy(), expected_wins)
    assert found.num_images == len(paths) and skipped == []


def test_assigned_mean_scores_hand_computed():
    # 3 images, 2 prototypes, 1x2 pixels. Image 2 has prototype 0 winning with the highest scores.
    dots = torch.tensor([[[[0.5, 0.1]], [[0.2, 0.3]]], [[[0.6, 0.0]], [[0.1, 0.9]]], [[[0.9, 0.8]], [[0.1, 0.2]]]])
    score = assigned_mean_scores(dots)
    won, lost = 1 + 1e-6, 1e-6  # one-hot weights + eps

    def mean(first: float, second: float, w1: float, w2: float) -> float:
        return (first * w1 + second * w2) / (w1 + w2)

    # prototype 1 wins nothing in image 2: the mean over all its pixels
    expected = torch.tensor(
        [
            [mean(0.5, 0.1, won, lost), mean(0.2, 0.3, lost, won)],
            [mean(0.6, 0.0, won, lost), mean(0.1, 0.9, lost, won)],
            [0.85, 0.15],
        ]
    )
    torch.testing.assert_close(score, expected)


def _choice_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"idxs": [], "sampling": 0, "seed": 0, "top_prototypes": 0, **kw})


def test_idxs_take_commas_or_spaces_and_are_checked():
    assert choose_prototypes(_choice_args(idxs=["3,17,42"]), 64) == [3, 17, 42]
    assert choose_prototypes(_choice_args(idxs=["3", "17", "42"]), 64) == [3, 17, 42]
    with pytest.raises(SystemExit, match="out of range"):
        choose_prototypes(_choice_args(idxs=["3,99"]), 64)
    with pytest.raises(SystemExit, match="expected integers"):
        choose_prototypes(_choice_args(idxs=["a,b"]), 64)


def test_sampling_is_seeded_and_distinct():
    first = choose_prototypes(_choice_args(sampling=10, seed=1), 16)
    assert first == choose_prototypes(_choice_args(sampling=10, seed=1), 16)
    assert len(set(first)) == 10 and first != choose_prototypes(_choice_args(sampling=10, seed=2), 16)
    assert choose_prototypes(_choice_args(), 5) == [0, 1, 2, 3, 4]


ORIGINAL_SPELLINGS = [
    ("--data_dir", "d", "data_dir"),
    ("--model_path", "m.pth", "model_path"),
    ("--save_path", "s.jpg", "save_path"),
    ("--topk", "7", "topk"),
    ("--sampling", "3", "sampling"),
    ("--dataset", "demo", "dataset"),
    ("--batch_size", "9", "batch_size"),
    ("--dim_hidden", "11", "dim_hidden"),
    ("--dim_out", "12", "dim_out"),
    ("--arch", "resnet18", "arch"),
    ("--num_prototypes", "13", "num_prototypes"),
    ("--alpha", "0.25", "alpha"),
    ("--dpi", "50", "dpi"),
    ("--idxs", "4", "idxs"),
]


@pytest.mark.parametrize("flag,value,dest", ORIGINAL_SPELLINGS)
def test_every_original_spelling_is_accepted(flag, value, dest):
    args = get_args([flag, value])
    expected = {"idxs": ["4"], "alpha": 0.25}.get(dest, int(value) if value.isdigit() else value)
    assert getattr(args, dest) == expected


def test_the_original_defaults():
    args = get_args([])
    assert args.model_path == "output/slotcon_coco_r50_800ep/ckpt_epoch_800.pth"
    assert (args.dataset, args.data_dir, args.save_path) == ("COCOval", "./datasets/coco", "viz_slots.jpg")
    assert (args.topk, args.alpha, args.dpi, args.sampling, args.idxs, args.batch_size) == (5, 0.6, 100, 0, [], 64)


def test_all_original_spellings_together_draw_a_picture(scene, tmp_path, capsys):
    folder, _, checkpoint = scene
    out = tmp_path / "original.png"
    main(
        [
            "--data_dir",
            str(folder),
            "--model_path",
            str(checkpoint),
            "--save_path",
            str(out),
            "--topk",
            "2",
            "--dataset",
            "folder",
            "--batch_size",
            "3",
            "--dim_hidden",
            "32",
            "--dim_out",
            "16",
            "--arch",
            "resnet18",
            "--num_prototypes",
            str(PROTOTYPES),
            "--alpha",
            "0.6",
            "--dpi",
            "20",
            "--idxs",
            "1",
            "2",
            "--image-size",
            str(SIZE),
            "--workers",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert Image.open(out).size == (2 * 40 + 4, 16 + 2 * 40 + 4)  # two 40-px columns and rows, one title line
    assert "2 prototypes x top 2 of 10 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag,value,held",
    [
        ("--num_prototypes", "256", PROTOTYPES),
        ("--dim_hidden", "4096", 32),
        ("--dim_out", "256", 16),
        ("--arch", "resnet50", "resnet18"),
    ],
)
def test_a_size_flag_that_disagrees_with_the_checkpoint_is_one_line(scene, tmp_path, flag, value, held):
    folder, _, checkpoint = scene
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "--model_path",
                str(checkpoint),
                "--data_dir",
                str(folder),
                "--dataset",
                "folder",
                flag,
                value,
                "--device",
                "cpu",
                "--save_path",
                str(tmp_path / "x.png"),
            ]
        )
    message = str(stopped.value)
    dashed = flag.replace("_", "-")
    assert f"holds a network with {dashed} {held}, not {value}" in message and "\n" not in message
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--topk", "0"], "--topk must be at least 1"),
        (["--alpha", "1.5"], "--alpha must be in"),
        (["--top-prototypes", "3", "--sampling", "2"], "drop --idxs / --sampling"),
        (["--save-path", "/no/such/dir/x.png"], "does not exist"),
        (["--save-path", "x.unknown"], "unknown picture format"),
        (["--idxs", "1,x"], "expected integers"),
    ],
)
def test_bad_flags_stop_before_the_model_loads(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        main(["--model-path", str(tmp_path / "absent.pth"), "--device", "cpu", *flags])


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["--model-path", str(tmp_path / "none.pth"), "--data-dir", str(tmp_path), "--device", "cpu"])


def test_a_folder_of_unreadable_images_is_one_line(scene, tmp_path):
    (tmp_path / "val2017").mkdir()
    (tmp_path / "val2017" / "a.jpg").write_text("no")
    with pytest.raises(SystemExit, match="none of the 1 images"):
        main(
            [
                "--model-path",
                str(scene[2]),
                "--data-dir",
                str(tmp_path),
                "--device",
                "cpu",
                "--workers",
                "0",
                "--save-path",
                str(tmp_path / "x.png"),
            ]
        )


@pytest.mark.slow
def test_the_original_readme_command_as_written(tmp_path):
    """python viz_slots.py --data_dir ${PATH_TO_COCO} --model_path ${PATH_TO_MODEL} --save_path ${PATH_TO_SAVE}
    --topk 5 --sampling 20: every other flag at its default (COCOval, 224 px, dpi 100, loader workers)."""
    coco = tmp_path / "coco"
    paths = _blocky_images(coco / "val2017", 7, seed=1)
    for path in paths:  # COCO's layout: JPEGs of about COCO's shape
        Image.open(path).resize((320, 240)).save(path.with_suffix(".jpg"))
        path.unlink()
    (coco / "val2017" / "000000000000.jpg").write_bytes(b"")
    torch.manual_seed(0)
    model = SlotCon(arch="resnet18", dim_hidden=32, dim_out=16, num_prototypes=24)
    checkpoint = tmp_path / "ckpt_epoch_800.pth"
    torch.save(
        {"args": {"arch": "resnet18"}, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint
    )
    done = subprocess.run(
        [
            sys.executable,
            "viz_slots.py",
            "--data_dir",
            str(coco),
            "--model_path",
            str(checkpoint),
            "--save_path",
            str(tmp_path / "viz.jpg"),
            "--topk",
            "5",
            "--sampling",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "20 prototypes x top 5 of 7 images; skipped 1" in done.stdout
    assert "000000000000.jpg: cannot read image" in done.stderr and "Traceback" not in done.stderr
    # 20 columns and 5 rows of 2-inch cells at 100 dpi, 4 px apart, under one line of titles (16 px font)
    assert Image.open(tmp_path / "viz.jpg").size == (20 * 200 + 19 * 4, 22 + 5 * 200 + 4 * 4)
