from pathlib import Path

import pytest
import torch

from models import SlotCon, SlotConTeacher

KEYS_FILE = Path(__file__).parent / "data" / "official-checkpoint-keys.txt"


def _official_keys() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, dtype = line.split("\t")
            rows.append((name, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def test_default_state_dict_is_the_official_one_in_order():
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in SlotCon().state_dict().items()]
    assert ours == _official_keys()


def _small(**kw) -> SlotCon:
    torch.manual_seed(0)
    return SlotCon(arch="resnet18", dim_hidden=32, dim_out=16, num_prototypes=8, **kw)


def test_teacher_starts_as_student_and_gets_no_gradients():
    model = _small()
    for part in ("encoder", "projector", "grouping"):
        student = dict(getattr(model, f"{part}_q").named_parameters())
        for name, p in getattr(model, f"{part}_k").named_parameters():
            assert torch.equal(p, student[name]) and not p.requires_grad


def test_update_teacher_is_an_ema_of_parameters_only():
    model = _small()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
        model.encoder_q.bn1.running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.encoder_k.state_dict().items()}
    model.update_teacher(0.75)
    after = model.encoder_k.state_dict()
    student = model.encoder_q.state_dict()
    for name, p in model.encoder_k.named_parameters():
        torch.testing.assert_close(p, 0.75 * before[name] + 0.25 * student[name], rtol=0, atol=0)
    torch.testing.assert_close(after["bn1.running_mean"], before["bn1.running_mean"])  # buffers untouched
    model.update_teacher(1.0)
    assert all(torch.equal(p, after[n]) for n, p in model.encoder_k.named_parameters())
    model.update_teacher(0.0)
    assert all(torch.equal(p, student[n]) for n, p in model.encoder_k.named_parameters())


def test_update_teacher_rounds_as_the_reference_formula():
    """``m * k + (1 - m) * q`` with each product and the sum rounded: bit for bit, for every parameter (a lerp, or
    an add with alpha, which fuses the multiply-add, differs in a good share of the elements)."""
    model = _small()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # student and teacher apart
    for momentum in (0.99, 0.9937, 0.5):
        teacher = [p.clone() for p in model.encoder_k.parameters()] + [p.clone() for p in model.grouping_k.parameters()]
        student = [p.clone() for p in model.encoder_q.parameters()] + [p.clone() for p in model.grouping_q.parameters()]
        model.update_teacher(momentum)
        after = [*model.encoder_k.parameters(), *model.grouping_k.parameters()]
        for k, q, new in zip(teacher, student, after, strict=True):
            assert torch.equal(new, k * momentum + q * (1 - momentum))


def _batch(b: int = 4, size: int = 64):
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.1, 0.2, 0.9, 0.8]]).repeat(b, 1), torch.tensor([[0.0, 0.0, 0.7, 1.0]]).repeat(b, 1)]
    flipped = [torch.arange(b) % 2 == 0, torch.arange(b) % 3 == 0]
    return crops, boxes, flipped


def test_forward_returns_the_loss_parts_and_moves_the_centre():
    model = _small()
    out = model(*_batch())
    assert set(out) >= {"loss", "loss_group", "loss_slot"}
    torch.testing.assert_close(out["loss"].detach(), out["loss_group"] + out["loss_slot"])
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert torch.count_nonzero(model.center) > 0
    out["loss"].backward()
    assert model.grouping_q.slot_embed.weight.grad is not None
    assert model.predictor_slot.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_centre_update_uses_the_momentum_and_the_raw_teacher_scores():
    model = _small(center_momentum=0.9)
    scores = torch.randn(3, 8, 2, 2)
    model.center.fill_(1.0)
    model.update_center(scores)
    expected = 0.9 + 0.1 * scores.permute(0, 2, 3, 1).reshape(-1, 8).mean(0, keepdim=True)
    torch.testing.assert_close(model.center, expected)


def test_initial_loss_of_the_default_model_is_near_the_reference():
    torch.manual_seed(0)
    model = SlotCon()  # R50, 4096 hidden, 256 prototypes: the reference reports ~7.58 at init
    crops, boxes, flipped = _batch(b=4, size=224)
    with torch.no_grad():
        loss = model(crops, boxes, flipped)["loss"].item()
    assert loss == pytest.approx(7.58, abs=0.15)


def test_teacher_copy_scores_like_the_model_teacher():
    model = _small().eval()
    teacher = SlotConTeacher.from_slotcon(model).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model.grouping_k.scores(model.projector_k(model.encoder_k(x)))
    torch.testing.assert_close(teacher(x), expected)
    assert set(teacher.state_dict()) == {k for k in model.state_dict() if k.endswith("_k") or "_k." in k}


def test_compiled_networks_give_the_same_losses_gradients_and_state_dict_names():
    """``--compile`` (``compile_networks``) is a fast path of the same step: inductor's CPU code stands in for
    the GPU's here; the float tolerance allows for its reordered sums."""
    torch._dynamo.reset()
    eager = _small()
    compiled = _small()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = _batch()
    out_eager, out_compiled = eager(*batch), compiled(*batch)
    for key in ("loss", "loss_group", "loss_slot"):
        torch.testing.assert_close(out_compiled[key], out_eager[key], rtol=1e-4, atol=1e-5)
    out_eager["loss"].backward()
    out_compiled["loss"].backward()
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(compiled.encoder_q.bn1.running_mean, eager.encoder_q.bn1.running_mean)


def test_output_stride_8_trains_on_finer_maps_and_round_trips_through_a_checkpoint():
    from models.weights import network_state_dict, teacher_config

    model = _small(output_stride=8)
    crops, boxes, flipped = _batch(size=64)
    out = model(crops, boxes, flipped)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.encoder_q(crops[0]).shape[-2:] == (8, 8)
    checkpoint = {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "args": {"arch": "resnet18", "output_stride": 8},
    }
    config = teacher_config(checkpoint)
    assert config["output_stride"] == 8
    teacher = SlotConTeacher.build(**config)
    teacher.load_state_dict(network_state_dict(checkpoint))
    assert teacher(crops[0]).shape[-2:] == (8, 8)
    del checkpoint["args"]["output_stride"]  # an official checkpoint: stride 32
    assert teacher_config(checkpoint)["output_stride"] == 32
