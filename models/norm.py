"""Batch normalisation whose statistics span all ranks and, optionally, only the valid rows.

``torch.nn.SyncBatchNorm`` only runs on CUDA and cannot skip rows. SlotCon's slot predictor sees a
data-dependent set of slots; we keep its input at a fixed shape (no host sync) and pass a row mask,
so the statistics must be those of the valid rows only, summed over every rank, exactly as the
reference's SyncBN over the selected slots. The same layer gives CPU multi-process runs the
statistics of the whole global batch, so a 2-process run matches one process on the same batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.distributed import differentiable_sum_over_ranks


class MaskedSyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm over dim 1 of [N, C] or [N, C, H, W] inputs, synchronised over ranks.

    With ``mask`` (bool [N]), mean and biased variance use only the rows where it is true:
        mean = sum_r sum_i m_i x_i / sum_r sum_i m_i,   var = sum_r sum_i m_i (x_i - mean)^2 / count.
    Running statistics are updated as in ``nn.BatchNorm`` (unbiased variance). Subclassing
    ``BatchNorm1d`` keeps the parameter and buffer names of a plain BN, so checkpoints are unchanged.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return super().forward(x)
        reduce_dims = [0] if x.dim() == 2 else [0, 2, 3]
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1, 1)
        xf = x.float()
        if mask is None:
            weight = xf.new_ones(())
            count = xf.new_full((), xf.numel() // xf.shape[1])
        else:
            weight = mask.to(xf.dtype).view(-1, *[1] * (x.dim() - 1))
            count = weight.sum() * (xf.numel() // (xf.shape[0] * xf.shape[1]))
        count = differentiable_sum_over_ranks(count)
        mean = differentiable_sum_over_ranks((xf * weight).sum(reduce_dims)) / count.clamp(min=1)
        centred = xf - mean.view(shape)
        var = differentiable_sum_over_ranks((centred.square() * weight).sum(reduce_dims)) / count.clamp(min=1)
        if self.track_running_stats:
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
                self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_to_sync_batchnorm(module: nn.Module, use_torch_sync: bool) -> nn.Module:
    """Swap every plain BatchNorm1d/2d below ``module`` for a synchronised one, keeping its state.

    ``use_torch_sync`` picks ``nn.SyncBatchNorm`` (CUDA, fused kernels); otherwise our
    ``MaskedSyncBatchNorm`` (any device, e.g. gloo on CPU). Masked layers are kept as they are.
    """
    for name, child in module.named_children():
        if isinstance(child, MaskedSyncBatchNorm) or not isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            convert_to_sync_batchnorm(child, use_torch_sync)
            continue
        sync_cls = nn.SyncBatchNorm if use_torch_sync else MaskedSyncBatchNorm
        sync = sync_cls(
            child.num_features,
            child.eps,
            child.momentum,
            child.affine,
            child.track_running_stats,
            device=child.running_mean.device,
        )
        sync.load_state_dict(child.state_dict())
        if child.affine:
            sync.requires_grad_(child.weight.requires_grad)
        sync.train(child.training)
        setattr(module, name, sync)
    return module
