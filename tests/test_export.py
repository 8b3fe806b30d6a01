"""The ONNX export: run by onnxruntime in a process that cannot import helpers, its scores and
maps equal PatchCore.predict's (scores: relative 1e-4; maps: 1e-4 of the map's range), its
verdicts those at the saved threshold; the config and threshold are in its metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from helpers import Config, PatchCore  # noqa: E402
from helpers.core.images import load_image  # noqa: E402
from helpers.tools.export import ScoringGraph, export_onnx  # noqa: E402

SCORE_RTOL = 1e-4  # relative, on image scores
MAP_TOL = 1e-4  # absolute, as a fraction of the largest map value

# runs with onnxruntime and numpy only: importing helpers fails in this process
RUNNER = """
import sys
sys.modules["helpers"] = None
import numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
out = sess.run(None, {"image": np.load(sys.argv[2])})
np.savez(sys.argv[3], score=out[0], map=out[1], defective=out[2], config=meta["config"],
         threshold=meta["threshold"], rule=meta["rule"])
"""


@pytest.fixture(scope="module")
def model(samples):
    """Resize 128 -> 112 (INTER_AREA, not a whole factor), a 96 px centre crop: every step of
    the geometry is exercised; a threshold from the good training images."""
    cfg = Config(backbone="mobilenet_v2", input_size=96, resize=112, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PatchCore(cfg.replace(coreset_ratio=0.25)).fit(samples[0][:6], threshold=True)


@pytest.fixture(scope="module")
def images(samples):
    return np.stack([load_image(s.path) for s in samples[1]])  # 16 test images, 128 x 128


def test_the_graph_preprocesses_exactly_as_the_library(model, images):
    graph = ScoringGraph(model, 128, 128)
    x = graph.preprocess(torch.from_numpy(images))
    ref = torch.stack([model.preprocess(i)[0] for i in images])
    assert torch.equal(x, ref)


def test_onnx_scores_and_maps_equal_the_python_path_without_helpers(model, images, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx", 128, 128, model.threshold)
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), "images.npy", "out.npz"],
        cwd=tmp_path,
        env=env,
        check=True,
    )
    out = np.load(tmp_path / "out.npz")
    pred = model.predict(list(images))
    np.testing.assert_allclose(out["score"], pred.scores, rtol=SCORE_RTOL)
    top = max(float(m.max()) for m in pred.maps)
    assert out["map"].shape == (len(images), 128, 128)
    for got, want in zip(out["map"], pred.maps):
        np.testing.assert_allclose(got, want, rtol=0, atol=MAP_TOL * top)
    t = model.threshold["value"]
    clear = np.abs(pred.scores - t) > SCORE_RTOL * t  # verdicts away from the threshold
    np.testing.assert_array_equal(out["defective"][clear], (pred.scores >= t)[clear])
    assert json.loads(str(out["threshold"]))["value"] == t
    assert Config.from_dict(json.loads(str(out["config"]))).hash() == model.config.hash()
    assert str(out["rule"]) == "defective when score >= threshold"


def test_clahe_is_refused_and_the_cli_exports_a_bank(model, images, tmp_path, capsys):
    clahe = PatchCore(model.config.replace(clahe=True))
    clahe.memory_bank = model.memory_bank
    with pytest.raises(NotImplementedError, match="CLAHE"):
        ScoringGraph(clahe, 128, 128)
    from helpers.__main__ import main as cli

    bank = model.save(tmp_path / "bank.safetensors")
    np.save(tmp_path / "x.npy", images[:1])
    out = tmp_path / "cli.onnx"
    assert cli(["export", str(bank), "--out", str(out), "--size", "128", "128"]) == 0
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["score", "map", "defective"]
    score = sess.run(None, {"image": images[:2]})[0]
    np.testing.assert_allclose(score, model.predict(list(images[:2])).scores, rtol=SCORE_RTOL)
    assert cli(["export", str(bank), "--out", str(out)]) == 1  # no size: one line
    assert "--size H W" in capsys.readouterr().err
