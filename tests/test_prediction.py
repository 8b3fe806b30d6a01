import math

import numpy as np

from helpers import Prediction


def test_one_result_type_plain_predict_fields_default_empty():
    pred = Prediction(np.zeros(3, np.float32), [None] * 3, np.zeros((3, 2, 2), np.float32))
    assert len(pred) == 3
    assert pred.geometries == [] and pred.defects == [] and pred.paths == []
    assert pred.labels is None and pred.batch_size is None and math.isnan(pred.seconds)


def test_run_fields_are_keywords():
    pred = Prediction(
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
    assert pred.labels.tolist() == [0, 1] and pred.device == "cpu"
