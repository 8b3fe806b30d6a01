"""The run folder cache: load when the hash (and data, scoring settings) match, else compute and
save atomically; the bank equals PatchCore.fit's; metrics.json holds the whole contract."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import make_run

from helpers import Config, PatchCore
from helpers.core.backbones import BACKBONES
from helpers.evaluation.report import METRIC_KEYS
from helpers.run.parameters import config_from_params, repo_root, resolve_run_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A run folder with features, bank and predictions computed once."""
    root = tmp_path_factory.mktemp("run")
    run = make_run(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = run.model()
        pred = run.predictions(model)
    return root, run, model, pred


def test_config_from_params_maps_empty_strings_and_ignores_other_names():
    cfg = config_from_params(
        {
            "dataset_path": "",
            "weights": "IMAGENET1K_V1",
            "input_size": "",
            "backbone": "mobilenet_v2",
            "n_examples": 3,
            "run_dir": "x",
        }
    )
    assert cfg.dataset_path is None and cfg.backbone == "mobilenet_v2"
    assert cfg.input_size == BACKBONES["mobilenet_v2"].defaults["input_size"]


def test_relative_run_dir_starts_at_repo_root(tmp_path):
    assert resolve_run_dir("runs/x") == repo_root() / "runs" / "x"
    assert resolve_run_dir(tmp_path) == tmp_path


def test_synthetic_data_is_generated_inside_the_run_folder(built):
    root, run, *_ = built
    assert run.is_synthetic and run.data_root == root / "data"
    assert len(run.train_samples) == 4 and len(run.test_samples) == 6


def test_every_stage_is_saved_under_its_hash_and_logged(built):
    root, run, *_ = built
    for stage in ("features", "bank", "predictions"):
        assert run.path(stage).is_file() and run.is_cached(stage)
    assert run.path("bank").name == f"bank-{run.config.hash()}.safetensors"
    events = [
        json.loads(line) for line in (root / "artifacts" / "events.jsonl").read_text().splitlines()
    ]
    assert [(e["stage"], e["action"]) for e in events] == [
        ("features", "computed"),
        ("bank", "computed"),
        ("predictions", "computed"),
    ]
    assert not list((root / "artifacts").glob("*.tmp")), "atomic writes leave no temp files"


def test_a_second_run_loads_instead_of_computing(built):
    root, run, model, pred = built
    again = make_run(root)
    feats = again.features()
    m2 = again.model()
    p2 = again.predictions()
    assert [e["action"] for e in again.cache.events] == ["loaded", "loaded", "loaded"]
    assert torch.equal(m2.memory_bank, model.memory_bank.cpu())
    np.testing.assert_array_equal(p2.scores, pred.scores)
    for a, b in zip(p2.maps, pred.maps):
        np.testing.assert_array_equal(a, b)
    grid = feats.grid
    assert feats.n_patches == 4 * again.config.rotations_for(4) * grid[0] * grid[1]
    assert feats.sample(10).shape == (10, again.config.embed_dim)
    feats.close()
    assert again.stages.spill_path().is_file() == (feats.spill is not None)  # close keeps the cache


def test_features_are_recomputed_when_the_spill_file_is_gone(built, tmp_path):
    run = make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = run.features()
        assert first.spill is not None and run.stages.spill_path().is_file()
        want = first.sample(5)
        first.close()
        run.stages.spill_path().unlink()
        again = make_run(tmp_path, pretrain_embed_dim=256, target_embed_dim=256)
        feats = again.features()
    assert [e["action"] for e in again.cache.events] == ["computed"]
    assert torch.equal(feats.sample(5), want)
    feats.close()


def test_bank_equals_patchcore_fit(built):
    _, run, model, _ = built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = PatchCore(run.config).fit(run.train_samples)
    assert torch.equal(model.memory_bank.cpu(), direct.memory_bank.cpu())  # one fit path


def test_maps_are_in_original_pixels(built):
    _, run, _, pred = built
    from helpers.core.images import load_image

    for s, m in zip(run.test_samples, pred.maps):
        assert m.shape == load_image(s.path).shape[:2]
    assert set(pred.defects) == {"good", "bent", "color", "flip", "scratch"}


def test_other_coreset_ratio_reuses_features_but_rebuilds_the_bank(built, tmp_path):
    root, run, *_ = built
    other = make_run(root, coreset_ratio=0.5)
    assert other.stages.hash("features") == run.stages.hash("features")
    assert other.stages.hash("bank") != run.stages.hash("bank")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.model()
    assert [(e["stage"], e["action"]) for e in other.cache.events] == [
        ("features", "loaded"),
        ("bank", "computed"),
    ]


def test_scoring_change_recomputes_predictions_with_the_same_hash(built):
    root, run, *_ = built
    blurrier = make_run(root, sigma=2.0)
    assert blurrier.config.hash() == run.config.hash()
    assert not blurrier.is_cached("predictions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blurrier.predictions()
    assert blurrier.cache.events[-1]["action"] == "computed"
    assert not run.is_cached("predictions")  # replaced, so the sigma=4 run recomputes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.predictions()
    assert run.is_cached("predictions")


def test_other_data_is_never_reused(built):
    root, run, *_ = built
    other = make_run(root, synthetic_n_train=5)
    assert other.config.hash() == run.config.hash() and not other.is_cached("features")


def test_coverage_is_cached_and_greedy_radius_decreases(built):
    root, run, *_ = built
    cov = run.coverage([0.05, 0.25, 1.0], max_patches=200)
    assert cov["n_patches"] == 200 and cov["greedy_radius"][-1] == 0
    assert cov["greedy_radius"][0] >= cov["greedy_radius"][1] >= cov["greedy_radius"][2]
    again = make_run(root)
    cov2 = again.coverage([0.05, 0.25, 1.0], max_patches=200)
    assert again.cache.events[-1]["action"] == "loaded"
    np.testing.assert_array_equal(cov["greedy_radius"], cov2["greedy_radius"])


def test_metrics_json_holds_the_contract(built):
    root, run, _, _ = built
    pred = run.predictions()
    metrics = run.evaluate(pred)
    out = run.write_metrics(metrics, pred)
    saved = json.loads((root / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in saved
    assert saved["n_train"] == 4 and saved["n_test"] == 6
    assert set(saved["timings"]) >= {"fit_s", "infer_ms_per_image", "batch_size", "device"}
    assert saved["timings"]["device"] == "cpu"
    assert set(saved["config"]) == set(Config().to_dict())
    assert saved["versions"]["torch"] == torch.__version__
    assert 0 <= saved["image_auroc"] <= 1 and out["config_hash"] == run.config.hash()


def test_nan_becomes_null_in_metrics(built):
    root, run, _, _ = built
    pred = run.predictions()
    run.write_metrics({"image_auroc": float("nan"), "per_defect": {"x": float("inf")}}, pred)
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["image_auroc"] is None and saved["per_defect"]["x"] is None
    assert saved["aupro"] is None  # missing metrics are null, never made up


def test_show_saves_the_png(tmp_path):
    from matplotlib.figure import Figure

    run = make_run(tmp_path)
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    run.show(fig, "01_test", display=False)
    assert (tmp_path / "figures" / "01_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
