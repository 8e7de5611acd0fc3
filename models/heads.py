"""MLP heads: the per-pixel projector (1x1 convs) and the slot predictor (linear layers).

Both are ``Linear -> BN -> GELU`` blocks followed by a plain output layer, stored flat in ``mlp`` so the
parameter names (``mlp.0``, ``mlp.1``, ``mlp.3``, ...) match official SlotCon checkpoints.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.norm import MaskedSyncBatchNorm


def _hidden_block(dim_in: int, dim_out: int, per_pixel: bool) -> list[nn.Module]:
    if per_pixel:
        return [nn.Conv2d(dim_in, dim_out, 1), nn.BatchNorm2d(dim_out), nn.GELU()]
    return [nn.Linear(dim_in, dim_out), MaskedSyncBatchNorm(dim_out), nn.GELU()]


class MLPHead(nn.Module):
    """``num_layers`` layers: (num_layers - 1) x [layer, BN, GELU], then a plain layer.

    ``per_pixel=True`` uses 1x1 convolutions on [B, C, H, W] maps (the projector); otherwise linear
    layers on [N, C] rows (the predictor), whose BN layers accept a row mask so that padded rows
    neither contribute to nor are affected by the batch statistics.
    Weights ~ N(0, 0.02) truncated at +-2 (absolute, i.e. practically untruncated), biases 0.
    """

    def __init__(
        self, dim_in: int, dim_hidden: int, dim_out: int, num_layers: int = 3, per_pixel: bool = False
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("an MLP head needs at least one layer")
        layers: list[nn.Module] = []
        for i in range(num_layers - 1):
            layers += _hidden_block(dim_in if i == 0 else dim_hidden, dim_hidden, per_pixel)
        last_in = dim_in if num_layers == 1 else dim_hidden
        layers.append(nn.Conv2d(last_in, dim_out, 1) if per_pixel else nn.Linear(last_in, dim_out))
        self.mlp = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self.mlp:
            x = layer(x, mask) if isinstance(layer, MaskedSyncBatchNorm) else layer(x)
        return x
