import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import ColorJitter
from torchvision.transforms.v2 import functional as TF

from data.photometric import (
    VIEW1,
    VIEW2,
    BatchAugment,
    PhotometricParams,
    adjust_hue,
    gaussian_blur,
    sample_params,
)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("form", ["per_sample", "fixed_shape"])
@pytest.mark.parametrize(
    "op_index, theirs", list(enumerate([TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]))
)
def test_each_jitter_op_alone_matches_torchvision(images, form, op_index, theirs):
    from data import photometric

    factors = (
        torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4])
        if op_index != 3
        else torch.tensor([-0.1, -0.05, 0.0, 0.03, 0.1, 0.07])
    )
    params = _params(6, VIEW1)
    params.factors[:] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    params.factors[:, op_index] = factors
    params.grayscale[:], params.blur_sigma[:], params.solarize[:] = False, 0.0, False
    expected = torch.stack([theirs(img, f.item()) for img, f in zip(images, factors, strict=True)])
    ours = getattr(photometric, f"_apply_{form}")(images, params)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_hue_matches_torchvision(images):
    shifts = torch.tensor([-0.1, -0.05, 0.0, 0.03, 0.1, 0.5])
    expected = torch.stack([TF.adjust_hue(img, s.item()) for img, s in zip(images, shifts, strict=True)])
    torch.testing.assert_close(adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)


def test_blur_matches_a_gaussian_inside_and_pil_overall(images):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.0])
    ours = gaussian_blur(images, sigma)
    reference = torch.stack(
        [
            TF.gaussian_blur(img, [13, 13], [s.item()] * 2) if s > 0 else img
            for img, s in zip(images, sigma, strict=True)
        ]
    )
    torch.testing.assert_close(ours[..., 6:-6, 6:-6], reference[..., 6:-6, 6:-6])  # torchvision pads by reflection
    torch.testing.assert_close(ours[5], images[5])  # sigma 0: untouched
    # Against PIL's GaussianBlur (the reference's), on 0-255 images: within about one grey level.
    smooth = torch.nn.functional.interpolate(images[:1] * 255, scale_factor=4, mode="bilinear")[0]
    pil = Image.fromarray(smooth.round().byte().permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(1.5))
    pil_blur = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    assert (gaussian_blur(smooth[None].round() / 255, torch.tensor([1.5]))[0] * 255 - pil_blur).abs().mean() < 1.5


def _params(n: int, cfg, seed: int = 0) -> PhotometricParams:
    return sample_params(cfg, n, torch.Generator().manual_seed(seed))


def test_parameter_distributions_match_the_reference():
    n = 40000
    p1, p2 = _params(n, VIEW1), _params(n, VIEW2, seed=1)
    jittered = (p1.factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1).float().mean()
    assert jittered.item() == pytest.approx(0.8, abs=0.01)
    # The factors of jittered samples follow torchvision's ColorJitter ranges, uniformly.
    tv = ColorJitter(0.4, 0.4, 0.2, 0.1)
    ranges = [tv.brightness, tv.contrast, tv.saturation, tv.hue]
    active = p1.factors[(p1.factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).all(dim=1)]
    for column, (low, high) in enumerate(ranges):
        values = active[:, column]
        assert values.min() >= low and values.max() <= high
        assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.01 * (high - low) + 1e-3)
        assert values.var().item() == pytest.approx((high - low) ** 2 / 12, rel=0.05)
    # Each of the 24 op orders is equally likely (as torch.randperm(4) in ColorJitter).
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in p1.order.tolist():
        counts[tuple(row)] += 1
    assert min(counts.values()) > n / 24 * 0.9 and max(counts.values()) < n / 24 * 1.1
    assert p1.grayscale.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (p1.blur_sigma > 0).all() and not p1.solarize.any()
    assert (p2.blur_sigma > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert p2.solarize.float().mean().item() == pytest.approx(0.2, abs=0.01)
    sigma = p1.blur_sigma
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and sigma.mean().item() == pytest.approx(1.05, abs=0.01)


@pytest.mark.parametrize("form", ["per_sample", "fixed_shape"])
def test_pipeline_equals_per_sample_torchvision_ops(images, form):
    from data import photometric

    params = _params(6, VIEW2, seed=3)
    params.solarize[:] = torch.tensor([True, False, True, False, True, False])
    params.grayscale[:] = torch.tensor([False, True, False, False, True, False])
    ours = getattr(photometric, f"_apply_{form}")(images, params)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i, img in enumerate(images):
        for op_index in params.order[i].tolist():
            img = ops[op_index](img, params.factors[i, op_index].item())
        if params.grayscale[i]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if params.blur_sigma[i] > 0:
            img = gaussian_blur(img[None], params.blur_sigma[i : i + 1])[0]
        if params.solarize[i]:
            img = torch.where(img >= 128 / 255, 1 - img, img)
        torch.testing.assert_close(ours[i], img, atol=1e-5, rtol=0)


def test_batch_augment_is_reproducible_per_iteration():
    crops = [torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    augment = BatchAugment(torch.device("cpu"), base_seed=7)
    augment.seed(5)
    first = augment(crops)
    augment(crops)
    augment.seed(5)
    again = augment(crops)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert first[0].shape == (4, 3, 32, 32) and first[0].dtype == torch.float32


def test_cpu_per_sample_form_equals_the_fixed_shape_gpu_form(images):
    from data.photometric import _apply_fixed_shape, _apply_per_sample

    params = _params(6, VIEW1, seed=11)
    params.factors[2] = torch.tensor([1.0, 1.0, 1.0, 0.0])  # a sample without jitter
    params.grayscale[:2] = torch.tensor([True, False])
    params.blur_sigma[3] = 0.0
    params.solarize[1:4] = True
    torch.testing.assert_close(_apply_per_sample(images, params), _apply_fixed_shape(images, params), atol=1e-5, rtol=0)


def test_fixed_shape_form_compiles_once_to_one_graph_with_the_same_result(images):
    """The GPU form under ``torch.compile`` (as ``BatchAugment(compile=True)`` runs it): no graph break, no
    recompilation for the next batch's parameters, same pixels. Compiled here for the CPU, which checks the
    traced graph, not the GPU kernels."""
    from data.photometric import _apply_fixed_shape

    torch._dynamo.reset()
    compiled = torch.compile(_apply_fixed_shape, dynamic=False, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (5, 6):
            params = _params(6, VIEW2, seed=seed)
            params.solarize[:3] = True
            torch.testing.assert_close(compiled(images, params), _apply_fixed_shape(images, params), atol=1e-5, rtol=0)
