"""``python -m helpers predict``: the CSV's scores equal the run's, verdicts at the saved
good-only threshold, overlays in the original pixels, and bad inputs get a row or one line."""

from __future__ import annotations

import json
import shutil
import warnings

import conftest
import numpy as np
import pytest

from helpers.__main__ import main as cli
from helpers.core.images import load_image
from helpers.run.run import Run
from helpers.run.stages import threshold_path
from helpers.tools.predict import PredictError, predict, read_csv

# six good training images (a 0.2 false-alarm threshold is reachable), scored 3 at a time
TINY = dict(conftest.TINY, synthetic_n_train=6, synthetic_n_test_good=3, false_alarm_rate=0.2)
TINY["batch_size"] = 3


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as the main job leaves it: run.json, the bank, the threshold, predictions."""
    root = tmp_path_factory.mktemp("run")
    params = {**TINY, "run_dir": str(root), "dataset_path": ""}
    (root / "run.json").write_text(json.dumps({"parameters": params}))
    run = Run.from_params(params, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = run.predictions()
        metrics = run.evaluate(pred)
    return root, run, pred, metrics


def test_csv_scores_equal_the_runs_and_verdicts_use_the_saved_threshold(run_folder, tmp_path):
    root, run, pred, metrics = run_folder
    test_dir = run.data_root / run.config.category / "test"
    assert cli(["predict", str(root), str(test_dir), "--out", str(tmp_path), "--quiet"]) == 0
    rows = read_csv(tmp_path / "predictions.csv")
    assert len(rows) == len(pred.paths) == 7
    want = {str(run.data_root / p): s for p, s in zip(pred.paths, pred.scores)}
    value = metrics["thresholds"]["good_only"]["value"]
    for r in rows:
        assert r["score"] == pytest.approx(float(want[r["path"]]), rel=1e-5, abs=1e-6)
        assert r["threshold"] == value and r["error"] == ""
        assert r["verdict"] == ("defective" if r["score"] >= value else "good")


def test_unreadable_and_non_image_files_get_an_error_row_and_overlays_keep_pixels(
    run_folder, tmp_path
):
    root, run, pred, _ = run_folder
    good = run.test_samples[0].path
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text = tmp_path / "in" / "notes.txt"
    text.write_text("hello")
    wide = tmp_path / "in" / "wide.png"  # another size: the overlay keeps it
    import cv2

    cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(good)), (100, 60)))
    result = predict(
        root, [good, broken, text, wide], tmp_path / "out", overlays=True, progress=False
    )
    rows = {r.path: r for r in result.rows}
    assert rows[str(broken)].verdict == "error" and "cannot read image" in rows[str(broken)].error
    assert rows[str(text)].verdict == "error" and rows[str(text)].score is None
    assert result.n_scored == 2 and len(result.overlays) == 2
    assert load_image(rows[str(wide)].overlay).shape == (60, 100, 3)
    assert load_image(rows[str(good)].overlay).shape == load_image(good).shape
    on_disk = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["path"] for r in on_disk] == [str(good), str(broken), str(text), str(wide)]
    assert on_disk[1]["score"] is None and "cannot read image" in on_disk[1]["error"]


def test_nothing_scored_missing_paths_and_other_configs_give_one_line(run_folder, tmp_path, capsys):
    root, run, *_ = run_folder
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    SMALLER = [
        "-p",
        "input_size",
        "96",
        "-p",
        "resize",
        "96",
    ]  # settings the bank was not built with
    cases = {
        "could be scored": [str(root), str(text)],
        "does not exist": [str(root), str(tmp_path / "nowhere")],
        "holds no image files": [str(root), str(tmp_path / "empty")],
        "not a run folder": [str(tmp_path), str(text)],
        "input_size": [str(run.path("bank")), str(text), *SMALLER],
        "no memory bank for its config": [str(root), str(text), *SMALLER],
    }
    (tmp_path / "empty").mkdir()
    for words, args in cases.items():
        capsys.readouterr()
        assert cli(["predict", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 1, words
        err = capsys.readouterr().err.strip()
        assert words in err and err.startswith("error: ") and "\n" not in err, (words, err)


def test_a_bank_file_with_its_threshold_beside_it_and_a_python_model(run_folder, tmp_path):
    root, run, pred, metrics = run_folder
    bank = tmp_path / "model.safetensors"
    shutil.copy(run.path("bank"), bank)
    images = [s.path for s in run.test_samples]
    plain = predict(bank, images, progress=False)  # no threshold: scores, no verdicts
    assert plain.threshold is None and {r.verdict for r in plain.rows} == {""}
    np.testing.assert_allclose(plain.scores, pred.scores, rtol=1e-5)
    side = json.loads(threshold_path(run.path("bank")).read_text())
    threshold_path(bank).write_text(json.dumps(side))
    result = predict(bank, images, threshold="max_of_good", progress=False)
    assert result.threshold == side["max_of_good"] and "max of good" in result.threshold_note
    from helpers import PatchCore

    model = PatchCore.load(bank)
    model.threshold = side
    same = predict(model, images, threshold=0.5, progress=False)
    assert {r.threshold for r in same.rows} == {0.5}
    np.testing.assert_array_equal(same.scores, result.scores)
    side["bank_sha256"] = "0" * 64  # a threshold made for another bank is refused
    threshold_path(bank).write_text(json.dumps(side))
    with pytest.raises(PredictError, match="another memory bank"):
        predict(bank, images, progress=False)
