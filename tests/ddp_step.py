"""Two training steps of a small SlotCon on a fixed batch, run by test_distributed.py.

``python tests/ddp_step.py OUT.json [ARCH]`` runs one process on the whole batch; under ``torchrun
--nproc_per_node=N`` each rank takes its 1/N of the same batch (DDP, gloo, our synchronised BN).
Rank 0 writes the global losses and a few parameter tensors to OUT.json. ARCH: resnet18 (default) or a ViT.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import SlotCon
from models.norm import convert_to_sync_batchnorm
from utils.distributed import init_distributed, sum_over_ranks
from utils.lars import LARS

BATCH, SIZE = 8, 64


# A few tensors to compare, per backbone family: the trunk's first layer, a statistic or a late norm, the heads.
PICKED = {
    "resnet": ["encoder_q.conv1.weight", "encoder_k.layer4.1.bn2.running_var", "predictor_slot.mlp.6.weight"],
    "vit": ["encoder_q.patch_embed.proj.weight", "encoder_k.blocks.11.norm2.weight", "predictor_slot.mlp.4.weight"],
}


def main(out_path: str, arch: str = "resnet18") -> None:
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = SlotCon(arch=arch, dim_hidden=64, dim_out=32, num_prototypes=16)
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    boxes = [torch.rand(BATCH, 2, generator=g) * 0.4 for _ in range(2)]
    boxes = [torch.cat([b, b + 0.5], dim=1) for b in boxes]
    flipped = [torch.rand(BATCH, generator=g) < 0.5 for _ in range(2)]
    per_rank = BATCH // info.world_size
    part = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    crops, boxes, flipped = ([t[part] for t in ts] for ts in (crops, boxes, flipped))

    bare = model
    if info.distributed:
        model = DistributedDataParallel(
            convert_to_sync_batchnorm(model, use_torch_sync=False), forward_sync_buffers=False
        )
    optimizer = LARS([p for p in bare.parameters() if p.requires_grad], lr=0.5, weight_decay=1e-5)
    losses = []
    for _ in range(2):
        out = model(crops, boxes, flipped)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        bare.update_teacher(0.9)
        parts = [out["loss"].item(), out["loss_group"].item(), out["loss_slot"].item()]
        losses.append([v / info.world_size for v in sum_over_ranks(torch.tensor(parts, dtype=torch.float64)).tolist()])
    if info.is_main:
        state = bare.state_dict()
        picked = ["center", "grouping_q.slot_embed.weight", *PICKED["vit" if arch.startswith("vit") else "resnet"]]
        Path(out_path).write_text(json.dumps({"losses": losses, **{k: state[k].flatten().tolist() for k in picked}}))
    if info.distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
