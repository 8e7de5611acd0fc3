"""The project's import layers run one way (README, Layout):

    utils            I/O, distributed helpers, logging, optimiser, schedules, tables: nothing else of the project
    data, models     utils and themselves (data and models do not import each other)
    engine           utils, data, models and itself: the trainer, its step, checkpointing, the run's log
    eval, transfer   utils, data, models and themselves (not each other, not the engine)
    entry points     main_pretrain.py, viz_slots.py, bench/: anything

Every import in every source file counts, function-level ones included.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "data", "models", "engine", "eval", "transfer")
ENTRY_POINTS = ("main_pretrain", "viz_slots", "bench")
ALLOWED = {
    "utils": {"utils"},
    "data": {"utils", "data"},
    "models": {"utils", "models"},
    "engine": {"utils", "data", "models", "engine"},
    "eval": {"utils", "data", "models", "eval"},
    "transfer": {"utils", "data", "models", "transfer"},
}


def project_imports(path: Path) -> set[str]:
    """The project's top-level modules that ``path`` imports (absolute imports; the project uses no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names = [node.module or ""]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in (*PACKAGES, *ENTRY_POINTS))
    return found


def test_every_package_imports_only_the_layers_below_it():
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "configs" in path.relative_to(ROOT).parts:  # detectron2/mmseg config files: the libraries load them
                continue
            for imported in sorted(project_imports(path) - ALLOWED[package]):
                violations.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import os\n\ndef f():\n    from eval.common import x\n    import models.slotcon\n")
    assert project_imports(source) == {"eval", "models"}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_layer_is_a_real_folder(package):
    assert any((ROOT / package).rglob("*.py")), package


# Run by path (python transfer/detection/convert_pretrain_to_d2.py ...): the only files that may touch sys.path.
BY_PATH = {
    "transfer/detection/convert_pretrain_to_d2.py",
    "transfer/detection/train_net.py",
    "transfer/detection/lazy_train_net.py",
    "transfer/segmentation/convert_pretrain_to_mm.py",
    "transfer/segmentation/train.py",
}
BY_PATH_IDIOM = (
    'if __package__ in (None, ""):',
    "    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))",
)


def test_only_the_scripts_run_by_path_touch_sys_path_and_all_the_same_way():
    touching = set()
    for path in sorted(ROOT.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where.startswith((".venv", "tests/")) or "sys.path" not in path.read_text():
            continue
        touching.add(where)
        lines = path.read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if "sys.path" in line)
        assert (lines[at - 1].split("  #")[0], lines[at]) == BY_PATH_IDIOM, where
    assert touching == BY_PATH
