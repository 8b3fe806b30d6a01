"""Bad data turned into one clear line: unreadable and oversized images, masks stored as 0/1,
coloured, empty or of another size, test sets without good or without defective images. Here
through the library and the preflight (no notebook runs); the main job end to end is in
tests/test_pipeline_data.py."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib

import conftest
import cv2
import numpy as np
import pytest

from helpers import Config, PatchCore
from helpers.core.images import ImageReadError, check_image_file, load_image
from helpers.data.mvtec import list_samples, load_mask, masks_like
from helpers.data.synthetic import generate_dataset
from helpers.run.parameters import BASE_PARAMETERS, DataSource
from helpers.run.run import Run
from helpers.tools.pipeline import PipelineError
from helpers.tools.report import preflight

SMALL = dict(conftest.SMALL, train_rotations=1)


def bomb_png(path, side: int = 30000):
    """A few hundred bytes whose header claims side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture()
def data(tmp_path):
    return generate_dataset(
        tmp_path / "mvtec", size=64, n_train=5, n_test_good=2, n_per_defect=1, seed=1
    )


def check(data, run_dir, **params) -> str:
    return preflight(
        {
            **BASE_PARAMETERS,
            **SMALL,
            **params,
            "dataset_path": str(data),
            "run_dir": str(run_dir),
        }
    )


# ------------------------------------------------------------------ images
def test_a_decompression_bomb_is_named_and_refused_or_skipped(tmp_path, samples):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError) as err:
        load_image(bomb)
    msg = str(err.value)
    assert str(bomb) in msg and "decompression bomb" in msg and "skip_bad_images" in msg
    assert "too large" in check_image_file(bomb)
    cfg = Config(**SMALL, skip_bad_images=True)
    with pytest.warns(UserWarning, match="bomb.png"):
        model = PatchCore(cfg).fit([s.path for s in samples[0][:3]] + [bomb])
    assert model.info["n_train"] == 3


def test_check_image_file_finds_truncated_and_corrupt_files_without_decoding(tmp_path):
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    assert check_image_file(ok) is None
    for keep in (0.2, 0.9, 0.999):
        cut = tmp_path / f"cut{keep}.png"
        cut.write_bytes(ok.read_bytes()[: int(ok.stat().st_size * keep)])
        assert check_image_file(cut), keep
    flipped = bytearray(ok.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flip.png").write_bytes(bytes(flipped))
    assert "broken PNG" in check_image_file(tmp_path / "flip.png")
    jpg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg), np.full((32, 32, 3), 90, np.uint8))
    assert check_image_file(jpg) is None
    assert check_image_file(truncate(jpg, 0.6))


def test_skip_bad_images_leaves_unreadable_files_out_of_the_run(data, tmp_path):
    """What notebook 01 loads itself (run.train_samples, run.test_samples) never holds the
    unreadable file: the truncated PNG is left out with one counted warning."""
    truncate(data / "metal_nut" / "train" / "good" / "002.png")
    bomb_png(data / "metal_nut" / "test" / "good" / "bomb.png")
    src = DataSource(Config(**SMALL, dataset_path=str(data)), tmp_path / "d")
    assert len(src.train_samples) == 5  # without skip_bad_images every file is used
    assert [s.path.name for s, _ in src.unreadable("train")] == ["002.png"]
    run = Run.from_params(
        {**SMALL, "dataset_path": str(data), "skip_bad_images": True, "run_dir": str(tmp_path)},
        verbose=False,
    )
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable train image\(s\)") as rec:
        names = [s.path.name for s in run.train_samples]
    assert names == ["000.png", "001.png", "003.png", "004.png"] and len(rec) == 1
    with pytest.warns(UserWarning, match="bomb.png"):
        assert "bomb.png" not in [s.path.name for s in run.test_samples]
    for s in run.train_samples + run.test_samples:
        load_image(s.path)  # every image a notebook is handed decodes
    assert run.data.record()["skipped"] == {
        "train": ["metal_nut/train/good/002.png"],
        "test": ["metal_nut/test/good/bomb.png"],
    }


def test_preflight_refuses_an_unreadable_image_in_one_line_or_skips_it(data, tmp_path):
    bad = truncate(data / "metal_nut" / "train" / "good" / "002.png")
    with pytest.raises(PipelineError) as err:
        check(data, tmp_path / "r")
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "-p skip_bad_images true" in msg
    lines = check(data, tmp_path / "r", skip_bad_images=True).splitlines()
    assert lines[0].startswith("preflight: 4 training images")
    assert [line for line in lines if "skipped" in line] == [
        f"data: skipped 1 unreadable train image(s) (skip_bad_images), e.g. {bad}: "
        + check_image_file(bad)
    ]
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ masks
def _mask(path, values):
    cv2.imwrite(str(path), values)
    return path


def test_masks_stored_as_0_1_coloured_or_empty(tmp_path):
    square = np.zeros((16, 16), np.uint8)
    square[4:8, 4:8] = 1
    with pytest.warns(UserWarning, match="0-1, not 0/255"):
        got = load_mask(_mask(tmp_path / "01.png", square), (16, 16))
    assert got.sum() == 16  # once read as an empty mask, without a word
    green = np.zeros((16, 16, 3), np.uint8)
    green[4:8, 4:8] = (0, 255, 0)  # cv2 writes BGR: a green mask, red channel 0
    assert load_mask(_mask(tmp_path / "green.png", green), (16, 16)).sum() == 16
    with pytest.warns(UserWarning, match="empty"):
        assert not load_mask(
            _mask(tmp_path / "e.png", np.zeros((16, 16), np.uint8)), (16, 16)
        ).any()


def test_masks_like_warns_once_per_kind_counted(data):
    gt = data / "metal_nut" / "ground_truth"
    for d in ("bent", "color"):
        m = cv2.imread(str(gt / d / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(gt / d / "000_mask.png"), (m > 0).astype(np.uint8))  # 0/1
    m = cv2.imread(str(gt / "flip" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(gt / "flip" / "000_mask.png"), cv2.resize(m, (32, 32)))
    test = list_samples(data, "metal_nut", "test")
    maps = [np.zeros((64, 64), np.float32) for _ in test]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = masks_like(test, maps)
    text = sorted(str(w.message) for w in caught)
    assert len(text) == 2, text
    assert text[0].startswith("1 mask(s) differ in size from their image")
    assert text[1].startswith("2 mask(s) hold values 1-127 only")
    assert all(m.any() for s, m in zip(test, masks) if s.defect != "good")


def test_preflight_reports_mask_problems_once_counted(data, tmp_path):
    gt = data / "metal_nut" / "ground_truth"
    (gt / "scratch" / "000_mask.png").unlink()
    m = cv2.imread(str(gt / "bent" / "000_mask.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(gt / "bent" / "000_mask.png"), (m > 0).astype(np.uint8))
    lines = check(data, tmp_path / "r").splitlines()
    data_lines = [line for line in lines if line.startswith("data: ")]
    assert len(data_lines) == 2, lines
    assert "1 defective test image(s) have no mask" in data_lines[0]
    assert "1 mask(s) hold values 1-127 only" in data_lines[1]
    assert "3 with a mask" in lines[1]


def test_preflight_refuses_a_single_training_image_in_one_line(data, tmp_path):
    train = data / "metal_nut" / "train" / "good"
    for extra in sorted(train.iterdir())[1:]:
        extra.unlink()
    with pytest.raises(PipelineError, match="1 training image") as err:
        check(data, tmp_path / "r")
    assert "\n" not in str(err.value) and "train/good/" in str(err.value)


# ------------------------------------------------------------------ one-class test sets
def test_preflight_says_what_a_one_class_test_set_allows(data, tmp_path):
    cat = data / "metal_nut"
    shutil.rmtree(cat / "test" / "good")
    line = check(data, tmp_path / "r").splitlines()[1]
    assert line.startswith("preflight: test set of 0 good + 4 defective image(s)")
    assert "image AUROC, F1 threshold and per-defect AUROC null (no good test images)" in line
    assert "pixel AUROC and AUPRO will be computed" in line
    for d in ("bent", "color", "flip", "scratch"):  # empty defect folders, no masks
        shutil.rmtree(cat / "test" / d)
        (cat / "test" / d).mkdir()
    shutil.rmtree(cat / "ground_truth")
    shutil.copytree(cat / "train" / "good", cat / "test" / "good")
    line = check(data, tmp_path / "r").splitlines()[1]
    assert "5 good + 0 defective" in line and "(no defective test images)" in line
    assert "pixel AUROC and AUPRO null (no defective image with a mask)" in line
    shutil.rmtree(cat / "test" / "good")
    with pytest.raises(PipelineError, match="no test images") as err:
        check(data, tmp_path / "r")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("remove", ["good", "defective"])
def test_a_one_class_test_set_gives_null_image_metrics_in_metrics_json(data, tmp_path, remove):
    """What notebooks 04 and 05 call, on a test set without good / without defective images:
    predictions, evaluation and metrics.json with null image AUROC (README: null metrics)."""
    test = data / "metal_nut" / "test"
    for d in test.iterdir():
        if (d.name == "good") == (remove == "good"):
            for f in d.iterdir():
                f.unlink()  # the folder stays, empty
    run = Run.from_params({**SMALL, "dataset_path": str(data), "run_dir": str(tmp_path)}, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = run.predictions()
        metrics = run.evaluate(pred)
        run.write_metrics(metrics, pred)
    saved = json.loads(run.metrics_path.read_text())
    assert saved["image_auroc"] is None and saved["f1_threshold"] is None
    assert saved["n_test"] == (4 if remove == "good" else 2)
    if remove == "good":
        assert saved["pixel_auroc"] is not None  # defect masks hold normal pixels too
