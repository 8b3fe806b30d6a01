"""benchmarks/auroc_noise.py: the bootstrap behind the tire image-AUROC intervals in RESULTS.md."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from helpers.evaluation.metrics import image_auroc

_spec = importlib.util.spec_from_file_location(
    "auroc_noise", Path(__file__).resolve().parents[1] / "benchmarks" / "auroc_noise.py"
)
auroc_noise = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(auroc_noise)


def test_perfect_separation_stays_perfect_in_every_draw():
    labels = [0] * 5 + [1] * 7
    scores = [0.1, 0.2, 0.3, 0.2, 0.1] + [0.9] * 7
    boot = auroc_noise.bootstrap(labels, [scores], draws=50)
    assert boot.shape == (50, 1)
    assert np.all(boot == 1.0)


def test_paired_difference_of_a_row_with_itself_is_zero_and_draws_keep_both_classes():
    rng = np.random.default_rng(1)
    labels = [0] * 20 + [1] * 30
    s = rng.normal(size=50) + np.array(labels)
    boot = auroc_noise.bootstrap(labels, [s, s.copy()], draws=200)
    assert np.all(boot[:, 0] == boot[:, 1])
    # the draws scatter around the full-set AUROC (not a constant, not shifted)
    full = image_auroc(labels, s)
    assert boot[:, 0].std() > 0.01
    assert abs(np.median(boot[:, 0]) - full) < 0.05


def _row(name, labels, scores):
    return {"row": name, "labels": labels, "image_scores": scores, "image_auroc": 0.5}


def test_load_rows_names_missing_rows_and_mismatched_test_sets(tmp_path):
    p = tmp_path / "sweep.json"
    p.write_text(
        json.dumps(_row("a", [0, 1], [0.1, 0.2]))
        + "\n"
        + json.dumps({"row": "old", "image_auroc": 0.5})  # written before scores were recorded
        + "\n"
        + json.dumps(_row("b", [0, 1, 1], [0.1, 0.2, 0.3]))
        + "\n"
    )
    assert [r["row"] for r in auroc_noise.load_rows(p, ["a"])] == ["a"]
    with pytest.raises(SystemExit, match="old"):
        auroc_noise.load_rows(p, ["a", "old"])
    with pytest.raises(SystemExit, match="different test sets"):
        auroc_noise.load_rows(p, ["a", "b"])
