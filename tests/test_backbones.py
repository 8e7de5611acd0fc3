"""models.backbones: the one factory every user of an --arch goes through (and the call sites it allows)."""

import ast
from pathlib import Path

import pytest
import torch

from models.backbones import (
    ARCHS,
    SPECS,
    backbone_shapes,
    backbone_spec,
    build_backbone,
    build_reference_classifier,
    resolve_output_stride,
)

ROOT = Path(__file__).resolve().parents[1]

# Where the project may use the factory's parts. Adding a backbone family touches the factory, the family's own
# module and the converters' name maps: every other user of an arch goes through one of these calls.
ALLOWED_CALLS = {
    "build_backbone": {"models/slotcon.py", "models/weights.py", "bench/cpu_autocast.py", "hubconf.py"},
    "backbone_shapes": {"transfer/backbone.py", "transfer/export.py"},
    "build_reference_classifier": {"bench/benchmark.py"},
    "resolve_output_stride": {"main_pretrain.py", "models/weights.py"},
    "backbone_spec": {"main_pretrain.py", "models/slotcon.py", "transfer/export.py"},
}
FAMILY_MODULES = {"models.resnet", "models.vit"}
# Besides models/backbones.py, only the converters' name maps may know a family's own module.
FAMILY_IMPORTERS = {"transfer/vit_weights.py"}


def _sources() -> list[Path]:
    skip = {"tests", ".venv", "output", "datasets", "demo_data"}
    return [p for p in sorted(ROOT.rglob("*.py")) if not skip & set(p.relative_to(ROOT).parts)]


def test_only_the_allowed_call_sites_use_the_factory_and_only_it_imports_a_family():
    seen: dict[str, set[str]] = {name: set() for name in ALLOWED_CALLS}
    family_importers = set()
    for path in _sources():
        where = str(path.relative_to(ROOT))
        if where == "models/backbones.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in seen:
                    seen[name].add(where)
            elif isinstance(node, ast.ImportFrom):
                modules = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
                if modules & FAMILY_MODULES:
                    family_importers.add(where)
            elif isinstance(node, ast.Import) and {a.name for a in node.names} & FAMILY_MODULES:
                family_importers.add(where)
    assert seen == ALLOWED_CALLS
    assert family_importers == FAMILY_IMPORTERS, (
        f"import the factory (models.backbones), not a family: {family_importers}"
    )


def test_every_arch_builds_to_its_spec():
    for arch in ARCHS:
        spec = backbone_spec(arch)
        assert spec is SPECS[arch] and spec.arch == arch
        with torch.device("meta"):
            trunk = build_backbone(arch)
        assert trunk.output_stride == spec.default_output_stride
        assert backbone_shapes(arch) == {k: tuple(v.shape) for k, v in trunk.state_dict().items()}


def test_a_trunk_maps_images_to_its_stride_and_channels():
    trunk = build_backbone("resnet18", 16).eval()
    dense = trunk(torch.randn(2, 3, 64, 96))
    assert dense.shape == (2, trunk.num_channels, 64 // 16, 96 // 16)


def test_output_strides_are_checked_against_the_arch():
    assert resolve_output_stride("resnet50") == 32
    assert resolve_output_stride("resnet50", 8) == 8
    with pytest.raises(ValueError, match=r"^--output-stride 4: --arch resnet50 gives 32, 16, 8$"):
        resolve_output_stride("resnet50", 4)
    with pytest.raises(ValueError, match=r"^unknown --arch 'resnet18_d'; choose one of resnet18, "):
        build_backbone("resnet18_d")


def test_the_reference_classifier_is_the_library_network_of_the_same_arch():
    classifier = build_reference_classifier("resnet18")
    trunk = build_backbone("resnet18")
    shared = set(trunk.state_dict())
    assert shared == {k for k in classifier.state_dict() if not k.startswith("fc.")}
    for name, value in trunk.state_dict().items():
        assert value.shape == classifier.state_dict()[name].shape, name
