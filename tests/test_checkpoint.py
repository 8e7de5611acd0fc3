import torch

from utils.checkpoint import nonfinite_tensors


def test_nonfinite_tensors_names_every_poisoned_floating_tensor_in_a_nested_checkpoint():
    checkpoint = {
        "model": {"module.center": torch.zeros(1, 4), "module.w": torch.tensor([1.0, float("nan")])},
        "optimizer": {
            "state": {0: {"mu": torch.tensor([float("-inf")])}, 1: {"mu": torch.ones(2)}},
            "param_groups": [{"lr": float("nan")}],
        },  # a plain float, not a tensor: not ours to judge
        "steps": torch.tensor([2**62]),  # integers are always finite
        "views": [torch.ones(1), (torch.tensor([float("inf")], dtype=torch.bfloat16),)],
        "empty": torch.empty(0),
    }
    assert nonfinite_tensors(checkpoint) == ["model/module.w", "optimizer/state/0/mu", "views/1/0"]
    assert nonfinite_tensors({"model": {"a": torch.full((3,), 3e38)}}) == []  # large but finite
