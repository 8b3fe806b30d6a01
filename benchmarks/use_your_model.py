"""After the course, checked on a finished run folder (issue 21): the predict command's CSV
scores against the main job's, the ONNX export's scores and maps against the main job's, and
CPU speed of onnxruntime against PyTorch on the same images.

    .venv/bin/python -m helpers run --data /work/data/transistor --out /tmp/tr \\
        -p backbone mobilenet_v2 -p category transistor
    .venv/bin/python benchmarks/use_your_model.py --run /tmp/tr --out /tmp/tr-check [--n-speed 20]

Writes ``OUT/predictions.csv`` (the predict command's), ``OUT/model.onnx`` and prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-speed", type=int, default=20, help="images timed for the speed")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from helpers.core.images import load_image
    from helpers.run.parameters import config_from_params
    from helpers.run.run import Run
    from helpers.tools.predict import load_model, read_csv

    run_dir, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = json.loads((run_dir / "run.json").read_text())["parameters"]
    run = Run.from_params({**params, "run_dir": str(run_dir)}, verbose=False)
    pred = run.predictions()  # the main job's scores, maps from its saved grids
    paths = [run.data_root / p for p in pred.paths]
    result = {"run": str(run_dir), "n_test": len(paths), "config_hash": run.config.hash()}

    # 1. the predict command, as a user runs it
    test_dir = paths[0].parents[1]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "helpers", "predict", str(run_dir), str(test_dir)]
    subprocess.run([*cmd, "--out", str(out), "--quiet"], check=True, cwd=ROOT)
    result["predict_command_s"] = round(time.perf_counter() - t0, 1)
    rows = {r["path"]: r for r in read_csv(out / "predictions.csv")}
    csv_scores = np.array([rows[str(p)]["score"] for p in paths], np.float32)
    diff = np.abs(csv_scores - pred.scores)
    result["predict_vs_main_job"] = {
        "max_abs": float(diff.max()),
        "max_rel": float((diff / np.abs(pred.scores)).max()),
        "bitwise_equal": int((csv_scores == pred.scores).sum()),
        "same_verdicts": bool(
            all(
                (rows[str(p)]["verdict"] == "defective") == (s >= rows[str(p)]["threshold"])
                for p, s in zip(paths, pred.scores)
            )
        ),
    }

    # 2. the ONNX export, run by onnxruntime alone
    import onnxruntime as ort

    from helpers.tools.export import export

    h, w = load_image(paths[0]).shape[:2]
    t0 = time.perf_counter()
    onnx_path = export(run_dir, out / "model.onnx", size=(h, w))
    result["export_s"] = round(time.perf_counter() - t0, 1)
    result["onnx_mib"] = round(onnx_path.stat().st_size / 2**20, 1)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores, map_err, top = [], 0.0, 0.0
    for p, amap in zip(paths, pred.maps):
        s, m = sess.run(None, {"image": load_image(p)[None]})[:2]
        scores.append(float(s[0]))
        map_err = max(map_err, float(np.abs(m[0] - amap).max()))
        top = max(top, float(amap.max()))
    scores = np.array(scores, np.float32)
    diff = np.abs(scores - pred.scores)
    result["onnx_vs_main_job"] = {
        "score_max_abs": float(diff.max()),
        "score_max_rel": float((diff / np.abs(pred.scores)).max()),
        "map_max_abs": map_err,
        "map_max_abs_over_map_max": map_err / top,
    }

    # 3. CPU speed, one image at a time (decoding not counted), same images
    model, _ = load_model(run_dir, device="cpu", batch_size=1)
    imgs = [load_image(p) for p in paths[: args.n_speed]]
    model.predict(imgs[:1])  # warm up
    sess.run(None, {"image": imgs[0][None]})
    t0 = time.perf_counter()
    for im in imgs:
        model.predict([im])
    torch_ms = 1000 * (time.perf_counter() - t0) / len(imgs)
    t0 = time.perf_counter()
    for im in imgs:
        sess.run(None, {"image": im[None]})
    ort_ms = 1000 * (time.perf_counter() - t0) / len(imgs)
    result["cpu_ms_per_image"] = {
        "torch_predict_with_map": round(torch_ms, 1),
        "onnxruntime_with_map": round(ort_ms, 1),
        "threads": torch.get_num_threads(),
        "images": len(imgs),
    }
    cfg = config_from_params(params)
    result["config"] = {k: getattr(cfg, k) for k in ("backbone", "input_size", "sigma")}
    (out / "check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
