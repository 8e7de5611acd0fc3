"""Tests for the spread of evaluation tables over seeds (eval.metrics.seed_spread, format_spread, the CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.metrics import format_spread, main, seed_spread

RUNS = [
    {"random": {"knn_top1": 0.20, "fg_ari": 0.10}, "current.pth": {"knn_top1": 0.25, "fg_ari": 0.30, "mbo": 0.4}},
    {"random": {"knn_top1": 0.18, "fg_ari": 0.12}, "current.pth": {"knn_top1": 0.31, "fg_ari": math.nan, "mbo": 0.5}},
    {"random": {"knn_top1": 0.22, "fg_ari": 0.08}, "current.pth": {"knn_top1": 0.22, "fg_ari": 0.20, "mbo": 0.3}},
]


def test_mean_min_max_per_model_and_column() -> None:
    spread = seed_spread(RUNS)
    assert list(spread) == ["random", "current.pth"]
    assert spread["random"]["knn_top1"] == pytest.approx((0.20, 0.18, 0.22))
    assert spread["random"]["fg_ari"] == pytest.approx((0.10, 0.08, 0.12))
    assert spread["current.pth"]["knn_top1"] == pytest.approx(((0.25 + 0.31 + 0.22) / 3, 0.22, 0.31))
    assert spread["current.pth"]["fg_ari"] == pytest.approx((0.25, 0.20, 0.30))  # the NaN run is left out
    assert spread["current.pth"]["mbo"] == pytest.approx((0.4, 0.3, 0.5))


def test_columns_missing_from_a_run_and_all_undefined() -> None:
    runs = [{"m": {"a": 0.1, "b": None}}, {"m": {"a": 0.3, "b": math.nan, "c": 0.5}}]
    spread = seed_spread(runs)
    assert set(spread["m"]) == {"a", "b"}  # c is not in every run
    assert all(math.isnan(v) for v in spread["m"]["b"])
    with pytest.raises(ValueError, match="no runs"):
        seed_spread([])


def test_format_spread_in_percent() -> None:
    table = format_spread(seed_spread(RUNS), len(RUNS)).splitlines()
    assert table[0].split() == ["model", "(3", "seeds)", "knn_top1", "fg_ari", "mbo"]  # any model's columns
    assert table[1].split() == ["random", "20.0", "(18.0-22.0)", "10.0", "(8.0-12.0)", "-"]
    assert table[2].split()[:3] == ["current.pth", "26.0", "(22.0-31.0)"]


def test_cli_reads_eval_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for index, run in enumerate(RUNS):
        path = tmp_path / f"eval{index}.json"
        models = {
            name: {"summary": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}}
            for name, row in run.items()
        }
        path.write_text(json.dumps({"dataset": "demo", "models": models}))
        paths.append(str(path))
    assert main(paths) == 0
    out = capsys.readouterr().out
    assert "current.pth" in out and "25.0 (20.0-30.0)" in out
    (tmp_path / "bad.json").write_text("{}")
    assert main([str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not an eval.report JSON file" in capsys.readouterr().err
    assert main([]) == 2
