"""helpers.evaluation: metrics of a prediction and the metrics.json contract, on its own."""

import json

import numpy as np

from helpers.evaluation.report import (
    METRIC_KEYS,
    finite,
    pixel_f1_threshold,
    timings,
    write_metrics,
)
from helpers.run.stages import RunPrediction


def test_pixel_f1_threshold():
    masks = [np.zeros((8, 8), bool), np.pad(np.ones((4, 4), bool), 2)]
    maps = [np.zeros((8, 8)), np.pad(np.full((4, 4), 5.0), 2)]
    assert pixel_f1_threshold(masks, maps, step=1) == 5.0
    assert pixel_f1_threshold([np.zeros((4, 4), bool)], [np.zeros((4, 4))]) is None
    assert pixel_f1_threshold([None], [None]) is None


def test_write_metrics_fills_the_contract_with_nulls(tmp_path):
    out = write_metrics(tmp_path / "m.json", {"image_auroc": float("nan")}, {"n_train": 3})
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(METRIC_KEYS) <= set(saved) and saved["image_auroc"] is None
    assert saved["n_train"] == 3 and out["aupro"] is None


def test_finite_and_timings():
    assert finite({"a": [float("inf"), 1.0]}) == {"a": [None, 1.0]}
    pred = RunPrediction(
        np.zeros(4), [None] * 4, np.zeros((4, 1, 1)), seconds=2.0, batch_size=2, device="cpu"
    )
    t = timings({"fit_s": 1.0}, pred)
    assert t["infer_ms_per_image"] == 500.0 and t["fit_s"] == 1.0 and t["coreset_s"] is None
