"""Fine-tune torchvision's Mask R-CNN on a COCO-format set and score it with COCO box/mask AP (no detectron2 needed).

    python -m transfer.detection.train_torchvision --checkpoint output/demo/current.pth \
        --train-json train.json --train-images train/ --val-json val.json --val-images val/ --output-dir out/

``--random-init --depth 18`` trains the same model from random weights. One process, SGD (momentum 0.9,
weight decay 1e-4) with a linear warmup and a x0.1 step at 80% of the iterations, random horizontal flips;
the model of transfer/detection/torchvision_maskrcnn.py. Its numbers are not comparable with detectron2's.
The final metrics go to ``OUTPUT_DIR/results.json`` (``{"bbox": {"AP": ...}, "segm": {...}}``, in %).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from transfer.backbone import SUPPORTED_DEPTHS, load_resnet_backbone
from transfer.detection.torchvision_maskrcnn import build_maskrcnn
from utils.atomic import OutputWriteError, check_writable, write_text_atomic
from utils.checkpoint import save_atomic


def _coco(json_file: str):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            return COCO(json_file)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{json_file}: not a readable COCO-format file ({type(e).__name__}: {e})") from None


class CocoInstances(Dataset):
    """Images of a COCO-format set with torchvision detection targets (boxes xyxy, labels 1..K, masks)."""

    def __init__(self, json_file: str, image_root: str, train: bool) -> None:
        self.coco = _coco(json_file)
        self.image_root = Path(image_root)
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}  # 0 is background
        ids = sorted(self.coco.getImgIds())
        # Training needs at least one object per image; evaluation scores every image.
        self.ids = [i for i in ids if self.coco.getAnnIds(imgIds=i, iscrowd=False)] if train else ids
        self.train = train
        if not self.ids:
            raise SystemExit(f"{json_file}: no {'annotated ' if train else ''}images")
        missing = [i for i in self.ids if not (self.image_root / self.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise SystemExit(
                f"{image_root}: {len(missing)} of the {len(self.ids)} images of {json_file} are "
                f"missing (e.g. {self.coco.imgs[missing[0]]['file_name']})"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_root / info["file_name"]) as handle:
            image = pil_to_tensor(handle.convert("RGB")).float() / 255
        annotations = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in annotations
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        masks = (
            torch.from_numpy(np.stack([self.coco.annToMask(a) for a in annotations]))
            if annotations
            else (torch.zeros(0, *image.shape[1:], dtype=torch.uint8))
        )
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "masks": masks,
            "image_id": torch.tensor(image_id),
        }
        if self.train and torch.rand(()) < 0.5:  # horizontal flip
            width = image.shape[-1]
            image, target["masks"] = image.flip(-1), target["masks"].flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, target


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def lr_schedule(iters: int, base_lr: float, warmup: int) -> np.ndarray:
    """Per-iteration learning rates: linear warmup from base_lr / 1000, then x0.1 from 80% of the iterations."""
    lrs = np.full(iters, base_lr)
    lrs[round(0.8 * iters) :] *= 0.1
    ramp = np.arange(min(warmup, iters)) / max(warmup, 1)
    lrs[: len(ramp)] *= 0.001 + (1 - 0.001) * ramp
    return lrs


def train(
    model: torch.nn.Module, loader: DataLoader, iters: int, base_lr: float, device: torch.device, log_every: int = 20
) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    lrs = lr_schedule(iters, base_lr, warmup=min(50, iters // 4))
    model.train()
    step, start = 0, time.time()
    while step < iters:
        for images, targets in loader:
            if step == iters:
                break
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(float(loss)):
                parts = {k: float(v) for k, v in losses.items()}
                raise SystemExit(f"iteration {step}: the loss is {float(loss)} ({parts}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % log_every == 0 or step == iters:
                parts = " ".join(f"{k} {float(v):.3f}" for k, v in losses.items())
                print(
                    f"iter {step}/{iters} lr {lrs[step - 1]:.5f} loss {float(loss):.3f} ({parts}) "
                    f"{(time.time() - start) / step:.2f} s/it",
                    flush=True,
                )


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: CocoInstances, device: torch.device, batch_size: int) -> dict:
    """COCO box and mask AP (in %, detectron2's keys) of ``model`` on ``dataset``."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    model.eval()
    detections: list[dict[str, Any]] = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
    for images, targets in loader:
        outputs = model([im.to(device) for im in images])
        for output, target in zip(outputs, targets, strict=True):
            image_id = int(target["image_id"])
            masks = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
            for box, score, label, mask in zip(
                output["boxes"].cpu().tolist(),
                output["scores"].cpu().tolist(),
                output["labels"].cpu().tolist(),
                masks,
                strict=True,
            ):
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle["counts"] = rle["counts"].decode()
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": dataset.category_ids[label - 1],
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "score": score,
                        "segmentation": rle,
                    }
                )
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    results: dict[str, dict[str, float]] = {}
    for task in ("bbox", "segm"):
        if not detections:
            results[task] = dict.fromkeys(names, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            scored = COCOeval(dataset.coco, dataset.coco.loadRes(detections), task)
            scored.params.imgIds = dataset.ids
            scored.evaluate()
            scored.accumulate()
            scored.summarize()
        # COCOeval marks "no ground truth of this size" as -1; report those as NaN like detectron2.
        results[task] = {
            n: float(v * 100) if v >= 0 else float("nan") for n, v in zip(names, scored.stats[:6], strict=True)
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="SlotCon checkpoint whose teacher backbone initialises the ResNet")
    weights.add_argument("--random-init", action="store_true", help="random backbone (with --depth)")
    parser.add_argument("--depth", type=int, choices=SUPPORTED_DEPTHS, default=50, help="with --random-init")
    parser.add_argument("--train-json", required=True)
    parser.add_argument("--train-images", required=True)
    parser.add_argument("--val-json", required=True)
    parser.add_argument("--val-images", required=True)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--min-size", type=int, default=128, help="shorter image side the model resizes to")
    parser.add_argument("--max-size", type=int, default=160)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    try:  # a read-only or full disk: now, not after the training
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out / "model_final.pth")
    except OSError as e:
        raise SystemExit(f"train_torchvision.py: --output-dir {out}: {e.strerror}") from None
    except OutputWriteError as e:
        raise SystemExit(f"train_torchvision.py: {e}") from None
    torch.manual_seed(args.seed)
    train_set = CocoInstances(args.train_json, args.train_images, train=True)
    val_set = CocoInstances(args.val_json, args.val_images, train=False)
    if train_set.category_ids != val_set.category_ids:
        raise SystemExit(f"{args.train_json} and {args.val_json} have different categories")
    state, depth = (None, args.depth) if args.random_init else load_resnet_backbone(args.checkpoint)
    device = torch.device(args.device)
    model = build_maskrcnn(
        depth,
        len(train_set.category_ids) + 1,
        state,
        min_size=args.min_size,
        max_size=args.max_size,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=128,
        box_detections_per_img=20,
    ).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=_collate,
        drop_last=len(train_set) >= args.batch_size,
        num_workers=args.workers,
        generator=generator,
        persistent_workers=args.workers > 0,
    )
    print(
        f"Mask R-CNN ResNet-{depth}-FPN ({'random' if args.random_init else args.checkpoint}): {len(train_set)} "
        f"train / {len(val_set)} val images, {len(train_set.category_ids)} classes",
        flush=True,
    )
    train(model, loader, args.iters, args.lr, device)
    results = evaluate(model, val_set, device, args.batch_size)
    try:  # whole files or none: a full disk must not leave a truncated model_final.pth
        save_atomic({"model": model.state_dict()}, out / "model_final.pth")
        write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    except OutputWriteError as e:
        raise SystemExit(f"train_torchvision.py: {e}") from None
    print(" ".join(f"{task} AP {values['AP']:.1f}" for task, values in results.items()))


if __name__ == "__main__":
    main()
