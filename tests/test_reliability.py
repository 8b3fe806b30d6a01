"""Issue 5: every bad input or failure gets a clear answer, nothing half written, runs
repeatable."""

import os
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch

from helpers import PatchCore
from helpers.core.images import ImageReadError
from helpers.core.runtime import atomic_write_bytes, resolve_device
from helpers.data.mvtec import list_samples
from helpers.evaluation.report import evaluate


@pytest.fixture()
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fake_oom(*_, **__):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_in_extraction_halves_the_batch_and_continues(fitted, samples, monkeypatch):
    model = PatchCore(fitted.config.replace(batch_size=8))
    model.memory_bank = fitted.memory_bank
    expected = model.predict(samples[1][:8]).scores
    real = model.extractor.forward

    def limited(x):
        if x.shape[0] > 2:
            _fake_oom()
        return real(x)

    monkeypatch.setattr(model.extractor, "forward", limited)
    with pytest.warns(UserWarning, match="out of memory during feature extraction"):
        got = model.predict(samples[1][:8]).scores
    assert np.allclose(got, expected, atol=1e-5)
    assert model._embed_cap == 2


def test_oom_in_knn_halves_the_block_budget(fitted, samples, monkeypatch):
    import helpers.core.bank as hm

    model = PatchCore(fitted.config.replace(knn_memory_mb=64, knn_backend="torch"))
    model.memory_bank = fitted.memory_bank
    expected = model.predict(samples[1][:3]).scores
    real = hm.knn_torch

    def limited(*args, **kw):
        if kw["memory_mb"] > 16:
            _fake_oom()
        return real(*args, **kw)

    monkeypatch.setattr(hm, "knn_torch", limited)
    with pytest.warns(UserWarning, match="nearest-neighbour search"):
        got = model.predict(samples[1][:3]).scores
    assert np.allclose(got, expected, atol=1e-5)


def test_other_runtime_errors_are_not_swallowed(fitted, monkeypatch):
    model = PatchCore(fitted.config)
    monkeypatch.setattr(
        model.extractor, "forward", lambda x: (_ for _ in ()).throw(RuntimeError("shape bug"))
    )
    with pytest.raises(RuntimeError, match="shape bug"):
        model.embed(torch.zeros(2, 3, 128, 128))


def test_gpu_requested_but_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")
    import helpers.core.runtime as rt

    monkeypatch.setattr(rt, "_WARNED_CPU", False)
    with pytest.warns(UserWarning, match="running on the CPU"):
        assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"


def test_bad_images_stop_the_run_or_are_skipped(fitted, samples, tmp_path, quiet):
    bad = tmp_path / "broken.png"
    data = samples[0][0].path.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    paths = [s.path for s in samples[0][:3]] + [bad]
    with pytest.raises(ImageReadError, match="broken.png"):
        PatchCore(fitted.config).fit(paths)
    skipping = PatchCore(fitted.config.replace(skip_bad_images=True))
    with pytest.warns(UserWarning, match="broken.png"):
        skipping.fit(paths)
    assert skipping.info["n_train"] == 3
    pred = skipping.predict([samples[1][0].path, bad])
    assert np.isfinite(pred.scores[0]) and np.isnan(pred.scores[1]) and pred.maps[1] is None


def test_mixed_sizes_and_modes_are_converted_consistently(fitted, tmp_path, quiet):
    from PIL import Image

    rgb = cv2.cvtColor(cv2.imread(str(fitted_sample_path(fitted))), cv2.COLOR_BGR2RGB)
    files = []
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    files.append(tmp_path / "rgb.png")
    Image.fromarray(cv2.resize(rgb, (150, 120))).convert("RGBA").save(tmp_path / "rgba.png")
    files.append(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    files.append(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "pal.png")
    files.append(tmp_path / "pal.png")
    cv2.imwrite(
        str(tmp_path / "deep.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    )
    files.append(tmp_path / "deep.png")
    pred = fitted.predict(files)
    assert np.isfinite(pred.scores).all()
    assert pred.maps[1].shape == (120, 150) and pred.maps[0].shape == rgb.shape[:2]
    # the 16-bit copy holds the same picture as the 8-bit one
    assert pred.scores[4] == pytest.approx(pred.scores[0], rel=1e-4)


def fitted_sample_path(fitted):
    from pathlib import Path

    return sorted((Path(fitted.config.dataset_path) / "metal_nut/train/good").glob("*.png"))[0]


def _copy_set(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_masks_no_ground_truth_no_test_good(fitted, synth_root, tmp_path, quiet):
    root = _copy_set(synth_root, tmp_path / "set")
    cat = root / "metal_nut"
    os.remove(cat / "ground_truth/scratch/000_mask.png")
    test = list_samples(root, "metal_nut", "test")
    pred = fitted.predict(test)
    with pytest.warns(UserWarning, match="scratch/000.png"):
        m = evaluate(test, pred, quiet=False)
    assert m["pixel_auroc"] is not None and m["aupro"] is not None
    shutil.rmtree(cat / "ground_truth")
    test = list_samples(root, "metal_nut", "test")
    m = evaluate(test, fitted.predict(test))
    assert m["pixel_auroc"] is None and m["aupro"] is None and m["image_auroc"] > 0.5
    shutil.rmtree(cat / "test/good")
    test = list_samples(root, "metal_nut", "test")
    m = evaluate(test, fitted.predict(test))
    assert m["image_auroc"] is None and m["f1_threshold"] is None
    assert all(v is None for v in m["per_defect"].values())


def test_killed_while_saving_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "bank.safetensors"
    atomic_write_bytes(target, b"old complete file")

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between write and rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new file that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]


def test_same_config_and_seed_give_identical_results(small_config, samples, quiet):
    a = PatchCore(small_config).fit(samples[0][:5])
    b = PatchCore(small_config).fit(samples[0][:5])
    assert torch.equal(a.coreset_indices, b.coreset_indices)
    assert torch.equal(a.memory_bank, b.memory_bank)
    assert np.array_equal(a.predict(samples[1][:4]).scores, b.predict(samples[1][:4]).scores)
    c = PatchCore(small_config.replace(seed=1)).fit(samples[0][:5])
    assert not torch.equal(a.coreset_indices, c.coreset_indices)
