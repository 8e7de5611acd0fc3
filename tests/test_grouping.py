import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.grouping import SemanticGrouping, pixel_assignments


def test_grouping_matches_a_direct_loop_on_a_hand_built_map():
    torch.manual_seed(0)
    grouping = SemanticGrouping(num_prototypes=3, dim=2, temp=0.5)
    with torch.no_grad():
        grouping.slot_embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    # 1 image, 2 channels, 2x2 pixels: pixel (0,0) points along +x, (0,1) along +y, ...
    x = torch.tensor([[[[3.0, 0.0], [-1.0, 0.5]], [[0.0, 2.0], [-1.0, 0.5]]]])
    slots, dots = grouping(x)

    protos = grouping.slot_embed.weight.detach().numpy().astype(np.float64)
    feats = x[0].numpy().astype(np.float64)
    expected_dots = np.zeros((3, 2, 2))
    for k in range(3):
        for h in range(2):
            for w in range(2):
                p, f = protos[k], feats[:, h, w]
                expected_dots[k, h, w] = p @ f / np.linalg.norm(p) / np.linalg.norm(f)
    attn = np.exp(expected_dots / 0.5)
    attn = attn / attn.sum(axis=0, keepdims=True) + 1e-6
    expected_slots = np.zeros((3, 2))
    for k in range(3):
        weights = attn[k] / attn[k].sum()
        expected_slots[k] = (feats * weights[None]).sum(axis=(1, 2))  # raw features are pooled

    np.testing.assert_allclose(dots[0].detach().numpy(), expected_dots, atol=1e-6)
    np.testing.assert_allclose(slots[0].detach().numpy(), expected_slots, atol=1e-5)
    # The pixel along +x belongs to prototype 0 exactly (cosine 1).
    assert dots[0, 0, 0, 0].item() == np.float32(1.0)


@pytest.mark.parametrize("max_elements", [1 << 25, 3 * 40 * 40, 40 * 40, 7])  # one chunk; images; prototypes; tiny
def test_pixel_assignments_in_chunks_equal_one_upsampling_and_argmax(max_elements):
    torch.manual_seed(0)
    scores = torch.randn(5, 9, 6, 7)
    scores[0, 3] = scores[0, 4]  # exact ties go to the first index, as argmax does
    expected = F.interpolate(scores, size=(40, 40), mode="bilinear", align_corners=False).argmax(dim=1)
    got = pixel_assignments(scores, (40, 40), max_elements=max_elements)
    assert got.dtype == torch.long and torch.equal(got, expected)
    assert (expected[0] != 4).all()
