"""SlotCon: a student/teacher pair of ResNet + projector + semantic grouping, trained with a pixel-level
grouping loss on the views' overlap and a slot-level contrastive loss.

The attribute names and registration order reproduce the official state_dict exactly (``center``,
``encoder_q``, ``encoder_k``, ``projector_q``, ``projector_k``, ``grouping_q``, ``grouping_k``,
``predictor_slot``), so released checkpoints load strictly once their ``module.`` prefix is removed.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.grouping import SemanticGrouping
from models.heads import MLPHead
from models.losses import active_prototypes, align_to_overlap, group_loss, slot_contrastive_loss
from models.resnet import build_backbone

TEACHER_PREFIXES = ("encoder_k.", "projector_k.", "grouping_k.")


class SlotCon(nn.Module):
    """The pretraining model. ``forward(crops, boxes, flipped)`` returns the losses as a dict.

    ``crops``: two normalised image batches [B, 3, S, S]; ``boxes``: two [B, 4] overlap boxes, each in its
    own view's normalised frame (mirrored if flipped); ``flipped``: two [B] bool flip flags.
    ``forward`` also moves the centre. The teacher changes only through ``update_teacher(momentum)``, which
    the training loop calls after each optimizer step, with the momentum of the next iteration. The reference
    averages at the start of each forward pass instead: the same teacher in every forward pass (its first
    average, of two equal copies, is left out here).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim_hidden: int = 4096,
        dim_out: int = 256,
        num_prototypes: int = 256,
        teacher_temp: float = 0.07,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        group_loss_weight: float = 0.5,
        pack_slot_queries: bool = False,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.group_loss_weight = group_loss_weight
        self.pack_slot_queries = pack_slot_queries  # see slot_contrastive_loss: same loss, one host sync
        self.register_buffer("center", torch.zeros(1, num_prototypes))

        self.encoder_q = build_backbone(arch, output_stride)
        self.encoder_k = build_backbone(arch, output_stride)
        channels = self.encoder_q.num_channels
        self.projector_q = MLPHead(channels, dim_hidden, dim_out, per_pixel=True)
        self.projector_k = MLPHead(channels, dim_hidden, dim_out, per_pixel=True)
        # The reference pools with the teacher temperature in both networks.
        self.grouping_q = SemanticGrouping(num_prototypes, dim_out, teacher_temp)
        self.grouping_k = SemanticGrouping(num_prototypes, dim_out, teacher_temp)
        self.predictor_slot = MLPHead(dim_out, dim_hidden, dim_out)

        # The teacher starts as a copy of the student's parameters and is only ever updated by EMA.
        self._teacher_pairs = [
            (self.encoder_q, self.encoder_k),
            (self.projector_q, self.projector_k),
            (self.grouping_q, self.grouping_k),
        ]
        for student, teacher in self._teacher_pairs:
            for p_s, p_t in zip(student.parameters(), teacher.parameters(), strict=True):
                p_t.data.copy_(p_s.data)
                p_t.requires_grad = False

    def compile_networks(self) -> None:
        """``torch.compile`` the backbones and projectors in place (state_dict names are unchanged)."""
        for part in (self.encoder_q, self.encoder_k, self.projector_q, self.projector_k):
            part.compile()

    def _teacher_params(self) -> tuple[list[Tensor], list[Tensor]]:
        student = [p for s, _ in self._teacher_pairs for p in s.parameters()]
        teacher = [p for _, t in self._teacher_pairs for p in t.parameters()]
        return teacher, student

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """theta_teacher <- m theta_teacher + (1 - m) theta_student, parameters only (not BN buffers).

        Two products and a sum, each rounded, as the reference writes it: ``lerp`` (or an add with ``alpha``,
        a fused multiply-add) rounds differently in a good share of the elements.
        """
        teacher, student = self._teacher_params()
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, torch._foreach_mul(student, 1.0 - momentum))

    @torch.no_grad()
    def update_center(self, teacher_scores: Tensor) -> None:
        """c <- m c + (1 - m) mean over all pixels of all ranks of the raw (unaligned) teacher scores."""
        rows = teacher_scores.permute(0, 2, 3, 1).reshape(-1, teacher_scores.shape[1]).float()
        total = torch.cat([rows.sum(dim=0), rows.new_full((1,), rows.shape[0])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        batch_center = (total[:-1] / total[-1]).unsqueeze(0)
        self.center.copy_(self.center * self.center_momentum + batch_center * (1 - self.center_momentum))

    def forward(self, crops: list[Tensor], boxes: list[Tensor], flipped: list[Tensor]) -> dict[str, Tensor]:
        # Views go through the networks one at a time: each keeps its own BatchNorm statistics.
        student = [self.grouping_q(self.projector_q(self.encoder_q(c))) for c in crops]
        with torch.no_grad():
            teacher = [self.grouping_k(self.projector_k(self.encoder_k(c))) for c in crops]
        (q1, sq1), (q2, sq2) = student
        (k1, sk1), (k2, sk2) = teacher

        aligned_q = [align_to_overlap(s, box, flip) for s, box, flip in zip((sq1, sq2), boxes, flipped, strict=True)]
        aligned_k = [align_to_overlap(s, box, flip) for s, box, flip in zip((sk1, sk2), boxes, flipped, strict=True)]
        loss_group = self.group_loss_weight * (
            group_loss(aligned_q[0], aligned_k[1], self.center, self.student_temp, self.teacher_temp)
            + group_loss(aligned_q[1], aligned_k[0], self.center, self.student_temp, self.teacher_temp)
        )
        loss_slot = (1 - self.group_loss_weight) * (
            slot_contrastive_loss(q1, sq1, k2, sk2, self.predictor_slot, pack_queries=self.pack_slot_queries)
            + slot_contrastive_loss(q2, sq2, k1, sk1, self.predictor_slot, pack_queries=self.pack_slot_queries)
        )
        # The centre moves only after both group terms used the previous one.
        self.update_center(torch.cat([sk1, sk2]))
        active = torch.cat([active_prototypes(sk1), active_prototypes(sk2)]).sum(dim=1).float().mean()
        return {
            "loss": loss_group + loss_slot,
            "loss_group": loss_group.detach(),
            "loss_slot": loss_slot.detach(),
            "active_slots": active,
        }


class SlotConTeacher(nn.Module):
    """The teacher alone (backbone, projector, prototypes), for evaluation, visualisation and export.

    Its state_dict names are the teacher's names in a full SlotCon checkpoint, so ``load_state_dict``
    takes the filtered checkpoint strictly.
    """

    def __init__(self, encoder_k: nn.Module, projector_k: nn.Module, grouping_k: SemanticGrouping) -> None:
        super().__init__()
        self.encoder_k = encoder_k
        self.projector_k = projector_k
        self.grouping_k = grouping_k

    @classmethod
    def build(
        cls,
        arch: str = "resnet50",
        dim_hidden: int = 4096,
        dim_out: int = 256,
        num_prototypes: int = 256,
        teacher_temp: float = 0.07,
        output_stride: int = 32,
    ) -> SlotConTeacher:
        """A randomly initialised teacher of the given configuration."""
        encoder = build_backbone(arch, output_stride)
        return cls(
            encoder,
            MLPHead(encoder.num_channels, dim_hidden, dim_out, per_pixel=True),
            SemanticGrouping(num_prototypes, dim_out, teacher_temp),
        )

    @classmethod
    def from_slotcon(cls, model: SlotCon) -> SlotConTeacher:
        """A copy of ``model``'s teacher that shares no tensors with it."""
        return cls(*copy.deepcopy((model.encoder_k, model.projector_k, model.grouping_k)))

    def features(self, images: Tensor) -> Tensor:
        """Projected per-pixel features [B, D, h, w]."""
        return self.projector_k(self.encoder_k(images))

    def forward(self, images: Tensor) -> Tensor:
        """Cosine scores of every pixel to every prototype: [B, K, h, w]."""
        return self.grouping_k.scores(self.features(images))
