"""A run's good-only threshold: held-out scores cached, the threshold written beside the bank,
and metrics.json's ``thresholds`` (F1-optimal and good-only side by side with their rates)."""

from __future__ import annotations

import functools
import json
import warnings

import conftest
import numpy as np
import pytest

from helpers.core.bank import good_only_threshold
from helpers.run.stages import threshold_path

# six good training images: a held-out threshold at a 0.2 false-alarm rate is reachable
make_run = functools.partial(
    conftest.make_run, synthetic_n_train=6, synthetic_n_test_good=3, false_alarm_rate=0.2
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run's predictions and metrics (with the thresholds), computed once."""
    run = make_run(root := tmp_path_factory.mktemp("run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return root, run, (pred := run.predictions()), run.evaluate(pred)


def test_thresholds_side_by_side_with_their_rates(evaluated):
    root, run, pred, metrics = evaluated
    t = metrics["thresholds"]
    assert set(t) == {"f1_optimal", "good_only", "max_of_good"}
    assert t["f1_optimal"]["value"] == metrics["f1_threshold"]
    labels = np.array([s.label for s in run.test_samples])
    for name in t:
        value = t[name]["value"]
        flagged = pred.scores >= value
        assert t[name]["false_alarm_rate"] == pytest.approx(flagged[labels == 0].mean())
        assert t[name]["miss_rate"] == pytest.approx((~flagged[labels == 1]).mean())
        assert t[name]["n_good"] == 3 and t[name]["n_defective"] == 4
    good = t["good_only"]
    assert good["target_false_alarm_rate"] == 0.2
    assert good["chosen_on"] == "6 good training images, leave-one-image-out"
    assert good["false_alarm_rate_se"] == pytest.approx((0.2 * 0.8 / 3) ** 0.5)
    assert t["max_of_good"]["value"] >= good["value"]
    saved = run.write_metrics(metrics, pred)
    on_disk = json.loads((root / "metrics.json").read_text())
    assert on_disk["thresholds"] == json.loads(json.dumps(saved["thresholds"]))


def test_the_threshold_is_saved_beside_the_bank(evaluated):
    root, run, _, metrics = evaluated
    path = threshold_path(run.path("bank"))
    assert path.name == f"bank-{run.config.hash()}.threshold.json"
    saved = json.loads(path.read_text())
    assert saved["value"] == metrics["thresholds"]["good_only"]["value"]
    assert saved["bank_file"] == run.path("bank").name and saved["data"] == run.data.data_id()
    assert saved["config_hash"] == run.config.hash() and len(saved["held_out_scores"]) == 6
    again = good_only_threshold(saved["held_out_scores"], 0.2)
    assert again["value"] == saved["value"] and again["max_of_good"] == saved["max_of_good"]


def test_held_out_scores_are_cached_and_a_new_rate_needs_no_scoring(evaluated):
    root, *_ = evaluated
    run = make_run(root, false_alarm_rate=0.5)
    t = run.threshold()
    assert [(e["stage"], e["action"]) for e in run.cache.events] == [
        ("bank", "loaded"),
        ("heldout", "loaded"),
    ]
    assert t["false_alarm_rate"] == 0.5 and t["rank"] == 4  # ceil(7 x 0.5)
    # another num_neighbors changes the held-out scores (same bank): computed again
    other = make_run(root, num_neighbors=1)
    other.threshold()
    assert ("heldout", "computed") in [(e["stage"], e["action"]) for e in other.cache.events]
