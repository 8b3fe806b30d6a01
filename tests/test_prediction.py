"""The two result types: a plain ``PatchCore.predict`` (model output only) and a run's test-set
prediction, which adds what the run knows (labels, defects, paths, timing)."""

import dataclasses
import math

import numpy as np

from helpers import Prediction
from helpers.run.stages import RunPrediction


def test_plain_predict_holds_model_output_only():
    pred = Prediction(np.zeros(3, np.float32), [None] * 3, np.zeros((3, 2, 2), np.float32))
    assert len(pred) == 3 and pred.geometries == []
    assert {f.name for f in dataclasses.fields(pred)} == {
        "scores",
        "maps",
        "patch_scores",
        "geometries",
    }


def test_a_runs_prediction_adds_the_test_set_as_keywords():
    empty = RunPrediction(np.zeros(2), [None] * 2, np.zeros((2, 1, 1)))
    assert empty.labels is None and empty.defects == [] and math.isnan(empty.seconds)
    pred = RunPrediction(
        np.ones(2),
        [None, None],
        np.zeros((2, 1, 1)),
        [None, None],
        labels=np.array([0, 1]),
        defects=["good", "crack"],
        paths=["a", "b"],
        seconds=1.5,
        batch_size=8,
        device="cpu",
    )
    assert isinstance(pred, Prediction)
    assert pred.labels.tolist() == [0, 1] and pred.device == "cpu" and len(pred) == 2
