"""What the training loop shows besides scalars: the teacher's prototype assignment maps of a fixed set of
images (TensorBoard), and (optionally) unsupervised segmentation scores on held-out demo scenes."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from data.images import UnreadableImageError, read_center_crop
from eval import unsupervised_seg
from eval.common import backbone_batches, base_dataset
from eval.datasets import build_dataset
from eval.visualize import assignment_overlay, normalize, prototype_palette
from models.grouping import pixel_assignments
from models.slotcon import SlotCon, SlotConTeacher

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


@contextmanager
def teacher_in_eval_mode(model: SlotCon):
    """The model's own teacher modules (no copy) in eval mode, switched back afterwards."""
    teacher = SlotConTeacher(model.encoder_k, model.projector_k, model.grouping_k)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            yield teacher
    finally:
        teacher.train(was_training)


def picture_crops(paths: np.ndarray, image_size: int) -> np.ndarray | None:
    """Centre crops (shorter side to size * 8/7 first) of the readable ``paths``, uint8 [N, S, S, 3].

    An unreadable file is left out, its path logged; None if no file is readable.
    """
    crops = []
    for path in paths:
        try:
            crops.append(read_center_crop(path, image_size, round(image_size * 8 / 7)))
        except UnreadableImageError as e:
            logging.getLogger("slotcon").warning("TensorBoard pictures: leaving out %s", e)
    return np.stack(crops) if crops else None


class Monitor:
    """Pictures every ``image_freq`` epochs (in TensorBoard: none without a ``writer``) and evaluation every
    ``eval_freq`` epochs (0 = never), which ``on_epoch_end`` returns for the log whether or not TensorBoard is on."""

    def __init__(
        self,
        writer: SummaryWriter | None,
        files: np.ndarray,
        image_size: int,
        device: torch.device,
        image_freq: int,
        eval_data: str | None,
        eval_freq: int,
        num_images: int = 8,
    ) -> None:
        self.writer, self.device = writer, device
        self.image_freq, self.eval_freq = image_freq, eval_freq
        self.images = None
        if writer is not None and image_freq > 0:
            picked = files[np.linspace(0, len(files) - 1, min(num_images, len(files))).astype(int)]
            self.images = picture_crops(picked, image_size)
        self.eval_set = None
        if eval_data and eval_freq > 0:
            self.eval_set = build_dataset("demo", eval_data, "eval")

    def on_epoch_end(self, model: SlotCon, epoch: int, iteration: int) -> dict[str, float]:
        """Log what is due after ``epoch``; returns the evaluation scores (empty if none ran)."""
        scores: dict[str, float] = {}
        with teacher_in_eval_mode(model) as teacher:
            if self.images is not None and epoch % self.image_freq == 0:
                self.writer.add_images(
                    "teacher/assignments", self.assignment_picture(teacher), iteration, dataformats="NHWC"
                )
            if self.eval_set is not None and epoch % self.eval_freq == 0:
                scores = self.evaluate(teacher)
                for name, value in scores.items():
                    if self.writer is not None:
                        self.writer.add_scalar(f"eval/{name}", value, iteration)
        return scores

    def assignment_picture(self, teacher: SlotConTeacher) -> np.ndarray:
        """Each image beside its prototype map (``assignment_overlay``: the image showing through, regions
        outlined): uint8 [N, S, 2S, 3]."""
        dots = teacher(normalize(self.images, self.device))
        labels = pixel_assignments(dots, self.images.shape[1:3]).cpu().numpy()
        palette = prototype_palette(dots.shape[1])
        overlays = np.stack(
            [assignment_overlay(image, label, palette) for image, label in zip(self.images, labels, strict=True)]
        )
        return np.concatenate([self.images, overlays], axis=2)

    def evaluate(self, teacher: SlotConTeacher) -> dict[str, float]:
        source = base_dataset(self.eval_set)
        result = unsupervised_seg.run_unsupervised_seg(
            teacher, backbone_batches(teacher, self.eval_set, 64, self.device), source.num_classes, source.class_names
        )
        return unsupervised_seg.summary_row(result)
