"""Artifacts are keyed on what the data folder holds (names, sizes and modification times of its
images), not on its path: a changed folder is never answered with old features, bank or
predictions, and events.jsonl says why a file was computed again."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import conftest
import pytest

from helpers import Config
from helpers.data.mvtec import fingerprint
from helpers.data.synthetic import generate_dataset
from helpers.run.parameters import DataSource
from helpers.run.run import Run

TINY = dict(conftest.SMALL, train_rotations=1)


def make_run(run_dir, data, **changes) -> Run:
    params = {**TINY, **changes, "dataset_path": str(data), "run_dir": str(run_dir)}
    return Run.from_params(params, verbose=False)


def events(run_dir) -> list[dict]:
    lines = (run_dir / "artifacts" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture()
def data(tmp_path):
    root = generate_dataset(
        tmp_path / "mvtec", size=64, n_train=4, n_test_good=2, n_per_defect=1, seed=3
    )
    return root


def test_fingerprint_follows_names_sizes_and_times_not_the_path(data, tmp_path):
    good = data / "metal_nut" / "train" / "good"
    files = sorted(good.glob("*.png"))
    first = fingerprint(files, data)
    assert first.startswith("4 files #") and fingerprint(files, data) == first
    copy = shutil.copytree(data, tmp_path / "elsewhere")  # copy2 keeps the times
    assert fingerprint(sorted((copy / "metal_nut/train/good").glob("*.png")), copy) == first
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    assert fingerprint(files, data) != first
    files[1].rename(good / "zzz.png")  # renamed
    renamed = sorted(good.glob("*.png"))
    assert fingerprint(renamed, data) not in (first, fingerprint(files[:1] + files[2:], data))


def test_removing_and_adding_training_images_recomputes_the_features(data, tmp_path):
    """The issue's case: two training images removed, one added, same folder path; the next
    fit must not load the old features (nor the old bank)."""
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = make_run(out, data)
        run.model()
        good = data / "metal_nut" / "train" / "good"
        old = run.data.fingerprint("train")
        for name in ("000.png", "001.png"):
            (good / name).unlink()
        shutil.copy(data / "metal_nut" / "test" / "good" / "000.png", good / "new.png")
        again = make_run(out, data, coreset_ratio=0.2)
        assert not again.is_cached("features")
        model = again.model()
    assert model.info["n_train"] == 3
    feats = [e for e in events(out) if e["stage"] == "features"]
    assert [e["action"] for e in feats] == ["computed", "computed"]
    new = again.data.fingerprint("train")
    assert new.startswith("3 files #") and new != old
    assert feats[0]["reason"] == "new"
    assert feats[1]["reason"] == f"training images changed: {old} -> {new}"


def test_adding_test_images_recomputes_the_predictions(data, tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = make_run(out, data).predictions()
        assert len(pred) == 6
        extra = data / "metal_nut" / "test" / "good" / "002.png"
        shutil.copy(data / "metal_nut" / "train" / "good" / "000.png", extra)
        run = make_run(out, data)
        pred = run.predictions()
        metrics = run.evaluate(pred)  # once an IndexError: 7 samples, 6 saved scores
    assert len(pred) == len(run.test_samples) == 7 and metrics["image_auroc"] is not None
    last = [e for e in events(out) if e["stage"] == "predictions"][-1]
    assert last["action"] == "computed" and last["reason"].startswith("test images changed: 6 ")
    bank = [e for e in events(out) if e["stage"] == "bank"]
    actions = [e["action"] for e in bank]  # the training set is the same: built once, then loaded
    assert actions[0] == "computed" and set(actions[1:]) == {"loaded"} and len(actions) > 1


def test_a_file_rewritten_in_place_is_a_change(data, tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_run(out, data).features().close()
        target = data / "metal_nut" / "train" / "good" / "003.png"
        target.write_bytes((data / "metal_nut" / "train" / "good" / "002.png").read_bytes())
        assert not make_run(out, data).is_cached("features")


def test_datasource_fingerprints_every_split(data):
    src = DataSource(Config(backbone="mobilenet_v2", dataset_path=str(data)), data / "x")
    fp = src.fingerprints()
    assert set(fp) == {"train", "test", "masks"}
    assert fp["train"].startswith("4 files") and fp["test"].startswith("6 files")
    assert fp["masks"].startswith("4 files")
    assert src.record()["files"] == fp


def test_a_smaller_synthetic_set_does_not_keep_the_old_sets_extra_files(tmp_path):
    generate_dataset(tmp_path, size=32, n_train=5, n_test_good=1, n_per_defect=1)
    generate_dataset(tmp_path, size=32, n_train=2, n_test_good=1, n_per_defect=1)
    assert len(list((tmp_path / "metal_nut" / "train" / "good").glob("*.png"))) == 2
