import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import Box, intersection_in_frame, mirror_box
from models.heads import MLPHead
from models.losses import active_prototypes, align_to_overlap, group_loss, slot_contrastive_loss
from models.norm import MaskedSyncBatchNorm


def test_full_box_reproduces_the_map_and_flip_is_undone():
    scores = torch.randn(2, 5, 7, 7)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    no_flip = torch.tensor([False, False])
    torch.testing.assert_close(align_to_overlap(scores, full, no_flip), scores)
    # A flipped view's map is mirrored and its box mirrored; alignment must give the unflipped result.
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.3, 0.0, 1.0, 0.6]])
    mirrored = torch.tensor([mirror_box(tuple(b.tolist())) for b in box])
    torch.testing.assert_close(
        align_to_overlap(scores.flip(-1), mirrored, torch.tensor([True, True])), align_to_overlap(scores, box, no_flip)
    )


def _coordinate_map(view: Box, size: int, flipped: bool) -> torch.Tensor:
    """A 2-channel map whose cells hold the image (x, y) of their centres, as a network 'sees' a crop."""
    centres = (torch.arange(size) + 0.5) / size
    xs = view.x1 + centres * view.width
    ys = view.y1 + centres * view.height
    grid = torch.stack([xs[None, :].expand(size, size), ys[:, None].expand(size, size)])
    return grid.flip(-1) if flipped else grid


@pytest.mark.parametrize("flip_a, flip_b", [(False, False), (True, False), (False, True), (True, True)])
def test_two_views_land_on_the_same_image_grid(flip_a, flip_b):
    size = 7
    view_a, view_b = Box(10, 20, 150, 170), Box(40, 0, 200, 130)
    maps, boxes, flipped = [], [], []
    for view, other, flip in ((view_a, view_b, flip_a), (view_b, view_a, flip_b)):
        box = intersection_in_frame(view, other)
        maps.append(_coordinate_map(view, size, flip)[None])
        boxes.append(torch.tensor([mirror_box(box) if flip else box]))
        flipped.append(torch.tensor([flip]))
    aligned = [align_to_overlap(m, b, f)[0] for m, b, f in zip(maps, boxes, flipped, strict=True)]
    # Independent expectation: the bin centres of the intersection box, in image coordinates.
    inter = Box(40, 20, 150, 130)
    expected = _coordinate_map(inter, size, flipped=False)
    # Bilinear sampling is exact for a linear map away from the borders, where roi_align clamps.
    inner = (slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(aligned[0][inner], expected[inner], atol=1e-3, rtol=0)
    torch.testing.assert_close(aligned[1][inner], expected[inner], atol=1e-3, rtol=0)
    # At the borders roi_align clamps samples that fall less than half a cell outside the map.
    half_cell = 0.5 * max(view_a.width, view_a.height, view_b.width, view_b.height) / size
    torch.testing.assert_close(aligned[0], aligned[1], atol=half_cell, rtol=0)


def test_views_without_overlap_give_zeros():
    box = torch.tensor([intersection_in_frame(Box(0, 0, 10, 10), Box(20, 20, 30, 30))])
    assert box[0, 2] < box[0, 0]  # inverted
    assert torch.count_nonzero(align_to_overlap(torch.randn(1, 3, 7, 7), box, torch.tensor([False]))) == 0


def test_group_loss_matches_the_direct_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    center = torch.randn(1, 4)
    expected, rows = 0.0, 0
    for b in range(2):
        for h in range(3):
            for w in range(3):
                p_t = torch.softmax((t[b, :, h, w] - center[0]) / 0.07, dim=0)
                log_p_s = torch.log_softmax(s[b, :, h, w] / 0.1, dim=0)
                expected += -(p_t * log_p_s).sum().item()
                rows += 1
    assert group_loss(s, t, center, 0.1, 0.07).item() == pytest.approx(expected / rows, rel=1e-5)


def test_group_loss_of_empty_overlap_rows_is_log_k():
    zeros = torch.zeros(3, 256, 7, 7)
    assert group_loss(zeros, zeros, torch.zeros(1, 256), 0.1, 0.07).item() == pytest.approx(5.5452, abs=1e-4)


def test_active_prototypes_are_the_argmax_winners():
    scores = torch.full((1, 5, 2, 2), -1.0)
    scores[0, 3, 0, 0] = scores[0, 3, 1, 1] = scores[0, 1, 0, 1] = scores[0, 4, 1, 0] = 1.0
    assert active_prototypes(scores).tolist() == [[False, True, False, True, True]]


def test_masked_batchnorm_equals_batchnorm_on_the_selected_rows():
    torch.manual_seed(0)
    x = torch.randn(10, 6, requires_grad=True)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    masked = MaskedSyncBatchNorm(6)
    plain = nn.BatchNorm1d(6)
    out = masked(x, mask)[mask]
    ref = plain(x[mask])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(masked.running_mean, plain.running_mean)
    torch.testing.assert_close(masked.running_var, plain.running_var)
    grad = torch.randn_like(ref)
    (g_masked,) = torch.autograd.grad((out * grad).sum(), x)
    (g_plain,) = torch.autograd.grad((ref * grad).sum(), x)
    torch.testing.assert_close(g_masked, g_plain)
    assert torch.count_nonzero(g_masked[~mask]) == 0


def _reference_contrastive(q, sq, k, sk, predictor, temp=0.2):
    """The reference's formulation: select with nonzero(), plain BN on the selected rows, labels by lookup."""
    b, num_k, _ = q.shape
    mask_q, mask_k = [], []
    for scores, out in ((sq, mask_q), (sk, mask_k)):
        m = torch.zeros(b, num_k, dtype=torch.bool)
        for i in range(b):
            for winner in scores[i].flatten(1).argmax(dim=0).tolist():
                m[i, winner] = True
        out.append(m.flatten())
    mask_q, mask_k = mask_q[0], mask_k[0]
    query_idx = torch.nonzero(mask_q & mask_k).squeeze(1)
    key_idx = torch.nonzero(mask_k).squeeze(1).tolist()
    labels = torch.tensor([key_idx.index(i) for i in query_idx.tolist()])
    keys = F.normalize(k.flatten(0, 1), dim=1)[mask_k]
    logits = F.normalize(predictor(q.flatten(0, 1)[query_idx]), dim=1) @ keys.T / temp
    return F.cross_entropy(logits, labels) * 2 * temp


def _plain_predictor(head: MLPHead) -> nn.Sequential:
    layers = [
        nn.BatchNorm1d(m.num_features) if isinstance(m, MaskedSyncBatchNorm) else copy.deepcopy(m) for m in head.mlp
    ]
    plain = nn.Sequential(*layers)
    plain.load_state_dict(head.mlp.state_dict())
    return plain


@pytest.mark.parametrize("pack_queries", [False, True])
def test_slot_contrastive_loss_matches_the_reference_selection(pack_queries):
    torch.manual_seed(1)
    b, k, d = 16, 12, 8  # 144 query rows, ~60 of them valid: packing cuts them to 64
    q, k_slots = torch.randn(b, k, d, requires_grad=True), torch.randn(b, k, d)
    sq, sk = torch.randn(b, k, 3, 3), torch.randn(b, k, 3, 3)
    head = MLPHead(d, 16, d)
    with torch.no_grad():  # non-trivial BN affine parameters
        for m in head.mlp:
            if isinstance(m, MaskedSyncBatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    plain = _plain_predictor(head)
    ours = slot_contrastive_loss(q, sq, k_slots, sk, head, pack_queries=pack_queries)
    ref = _reference_contrastive(q, sq, k_slots, sk, plain)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    (g_ours,) = torch.autograd.grad(ours, q)
    (g_ref,) = torch.autograd.grad(ref, q)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(head.mlp[1].running_mean, plain[1].running_mean)


def test_pack_rows_puts_valid_rows_first_and_rounds_their_count_up():
    from models.losses import _pack_rows

    valid = torch.zeros(300, dtype=torch.bool)
    valid[[3, 7, 150, 299]] = True
    rows = _pack_rows(valid, multiple=8)
    assert rows.tolist()[:4] == [3, 7, 150, 299] and len(rows) == 8 and not valid[rows[4:]].any()
    valid[:] = True
    assert torch.equal(_pack_rows(valid, multiple=64), torch.arange(300))  # never more rows than there are
