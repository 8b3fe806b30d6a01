"""The main job (`python -m helpers run --data DIR`) on data as users have it: a truncated
training PNG, a decompression-bomb-sized test image, masks stored as 0/1, missing or of another
size; then the same folder changed (images removed and added) under --resume. These run the
six notebooks (slow)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings

import cv2
import numpy as np
import pytest
from _nbrun import THREADS
from test_bad_data import bomb_png, truncate

from helpers.data.synthetic import generate_dataset
from helpers.run.parameters import PRESETS
from helpers.tools import pipeline
from helpers.tools.pipeline import run_pipeline

CI = {k: v for k, v in PRESETS["ci"].items() if not k.startswith("synthetic_")}


def quirky_folder(root):
    """A small MVTec-layout folder with what real folders hold: a truncated PNG in train/good,
    a 30000 x 30000 px PNG header in test/good, a 0/1 mask, a mask of half the size and a
    defective image without a mask."""
    generate_dataset(root, size=128, n_train=8, n_test_good=3, n_per_defect=2, seed=5)
    cat = root / "metal_nut"
    truncate(cat / "train" / "good" / "003.png")
    bomb_png(cat / "test" / "good" / "huge.png")
    gt = cat / "ground_truth"
    m = cv2.imread(str(gt / "scratch" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(gt / "scratch" / "000_mask.png"), (m > 0).astype(np.uint8))
    m = cv2.imread(str(gt / "bent" / "001_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(gt / "bent" / "001_mask.png"), cv2.resize(m, (64, 64)))
    (gt / "color" / "001_mask.png").unlink()
    return root


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """One main job on the quirky folder with -p skip_bad_images true, through main() as a user
    runs it; what the terminal showed and the results are kept here (a later test changes the
    data folder)."""
    base = tmp_path_factory.mktemp("quirky")
    data = quirky_folder(base / "mvtec")
    out = base / "run"
    argv = ["--data", str(data), "--out", str(out), "--threads", str(THREADS)]
    argv += ["-p", "skip_bad_images", "true"]
    for name, value in CI.items():
        argv += ["-p", name, json.dumps(value)]
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        code = pipeline.main(argv)
    lines = terminal.getvalue().splitlines()
    print("\n".join(lines))  # shown when a test fails
    metrics = json.loads((out / "metrics.json").read_text()) if code == 0 else {}
    return {"data": data, "out": out, "code": code, "lines": lines, "metrics": metrics}


def test_skip_bad_images_lets_the_main_job_finish(quirky):
    assert quirky["code"] == 0, quirky["lines"]
    m = quirky["metrics"]
    assert m["n_train"] == 7 and m["n_test"] == 11  # the truncated and the huge image left out
    assert m["data"]["skipped"] == {
        "train": ["metal_nut/train/good/003.png"],
        "test": ["metal_nut/test/good/huge.png"],
    }
    assert m["image_auroc"] is not None and m["pixel_auroc"] is not None


def test_data_warnings_reach_the_terminal_once_counted(quirky):
    data_lines = [line for line in quirky["lines"] if line.startswith("data: ")]
    expected = [
        "data: 1 defective test image(s) have no mask",
        "data: skipped 1 unreadable train image(s) (skip_bad_images), e.g. ",
        "data: skipped 1 unreadable test image(s) (skip_bad_images), e.g. ",
        "data: 1 mask(s) differ in size from their image; resized with nearest neighbour",
        "data: 1 mask(s) hold values 1-127 only",
    ]
    assert len(data_lines) == len(expected), data_lines
    for start in expected:
        assert sum(line.startswith(start) for line in data_lines) == 1, (start, data_lines)
    assert any("decompression bombs" in line and "huge.png" in line for line in data_lines)


def test_resume_after_the_data_changed_never_loads_the_old_features(quirky, tmp_path):
    """The issue's case: two training images removed, one added (and a test image added) in the
    same folder, then --resume -p coreset_ratio 0.2: features, bank and predictions are
    computed again from the new images, and events.jsonl says why."""
    assert quirky["code"] == 0
    out = tmp_path / "run"
    shutil.copytree(quirky["out"], out)
    cat = quirky["data"] / "metal_nut"
    for name in ("000.png", "001.png"):
        (cat / "train" / "good" / name).unlink()
    shutil.copy(cat / "test" / "good" / "000.png", cat / "train" / "good" / "new.png")
    shutil.copy(cat / "test" / "good" / "001.png", cat / "test" / "good" / "new.png")
    n_old = len((out / "artifacts" / "events.jsonl").read_text().splitlines())
    logs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run_pipeline(
            out, params={"coreset_ratio": 0.2}, resume=True, threads=THREADS, log=logs.append
        )
    assert any(
        line.startswith("parameters changed (coreset_ratio: (unset) -> 0.2)") for line in logs
    )
    assert any(line.startswith("data changed since the last run (") for line in logs)
    assert metrics["n_train"] == 6 and metrics["n_test"] == 12
    events = [json.loads(x) for x in (out / "artifacts" / "events.jsonl").read_text().splitlines()]
    new = events[n_old:]
    feats = [e for e in new if e["stage"] == "features"]
    assert feats[0]["action"] == "computed"  # then loaded by the notebooks after 02
    assert feats[0]["reason"].startswith("training images changed: 8 files #")
    assert " -> 7 files #" in feats[0]["reason"]
    first = {e["stage"]: e["action"] for e in reversed(new)}  # each stage's first event
    assert first == {
        "features": "computed",
        "bank": "computed",  # coreset_ratio 0.2: another hash (a new file)
        "coverage": "computed",
        "predictions": "computed",
        "heldout": "computed",  # the good-only threshold's held-out scores (notebook 05)
    }


def test_a_test_set_without_good_images_completes_with_null_image_auroc(tmp_path):
    data = generate_dataset(
        tmp_path / "mvtec", size=128, n_train=8, n_test_good=1, n_per_defect=2, seed=2
    )
    shutil.rmtree(data / "metal_nut" / "test" / "good")
    logs: list[str] = []
    metrics = run_pipeline(tmp_path / "run", data=data, params=CI, threads=THREADS, log=logs.append)
    assert "(no good test images)" in logs[0].splitlines()[1]
    assert metrics["image_auroc"] is None and metrics["pixel_auroc"] is not None


def test_a_test_set_without_defective_images_completes_with_null_image_metrics(tmp_path):
    data = generate_dataset(
        tmp_path / "mvtec", size=128, n_train=8, n_test_good=3, n_per_defect=1, seed=2
    )
    test = data / "metal_nut" / "test"
    for folder in [p for p in test.iterdir() if p.name != "good"]:
        shutil.rmtree(folder)
    shutil.rmtree(data / "metal_nut" / "ground_truth", ignore_errors=True)
    metrics = run_pipeline(tmp_path / "run", data=data, params=CI, threads=THREADS, log=[].append)
    assert metrics["n_test"] == 3
    assert metrics["image_auroc"] is None and metrics["f1_threshold"] is None
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    # the good-only threshold needs no defective image: its false alarms are measured
    assert metrics["thresholds"]["good_only"]["n_good"] == 3
