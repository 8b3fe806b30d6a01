"""Fit + predict time of this project's PatchCore against anomalib's, on the same images, input
size, backbone (wide_resnet50_2 with RANDOM weights on both sides: nothing downloads) and coreset
ratio, measured in the same run, each side in its own subprocess and virtualenv.

    .venv/bin/python benchmarks/compare_anomalib.py --train-images 220 --test-images 20

anomalib lives in a separate venv (default /work/bench-anomalib-venv), made with:

    python3 -m venv /work/bench-anomalib-venv
    /work/bench-anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/bench-anomalib-venv/bin/pip install anomalib

anomalib's side uses its torch model ``anomalib.models.image.patchcore.torch_model.PatchcoreModel``
directly (what its Lightning module calls in training_step / fit / validation_step), without the
Lightning trainer, so neither side pays for a training framework. Both sides get the same
normalised float tensors, batch size and thread count; timings exclude building the network.
Reported per side: feature extraction + coreset ("fit"), coreset alone, predict (scores + anomaly
maps) and peak RSS (ru_maxrss of the worker process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ workers
def worker_ours(a) -> dict:
    import warnings

    import torch

    sys.path.insert(0, str(ROOT))
    from helpers import Config, PatchCore

    torch.set_num_threads(a.threads)
    data = torch.load(a.data)
    cfg = Config(
        backbone="wide_resnet50_2",
        weights=None,
        input_size=a.input_size,
        resize=a.input_size,
        coreset_ratio=a.ratio,
        device="cpu",
        batch_size=a.batch_size,
        num_neighbors=9,
        seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PatchCore(cfg)
        _ = model.extractor  # build the network outside the timed part (as on anomalib's side)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    model.fit(data["train"])
    t1 = time.perf_counter()
    rss_fit = peak_rss_mb()
    pred = model.predict(data["test"], maps=True)
    t2 = time.perf_counter()
    return {
        "side": "ours",
        "fit_s": t1 - t0,
        "features_s": model.info["features_s"],
        "coreset_s": model.info["coreset_s"],
        "predict_s": t2 - t1,
        "bank": list(model.memory_bank.shape),
        "peak_rss_mb_before_fit": rss0,
        "peak_rss_mb_fit": rss_fit,
        "peak_rss_mb_end": peak_rss_mb(),
        "scores": [float(s) for s in pred.scores],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def worker_anomalib(a) -> dict:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import anomalib
    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    data = torch.load(a.data)
    model = PatchcoreModel(
        layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False, num_neighbors=9
    )
    rss0 = peak_rss_mb()
    train, test, bs = data["train"], data["test"], a.batch_size
    t0 = time.perf_counter()
    model.train()
    for i in range(0, train.shape[0], bs):
        model(train[i : i + bs])
    tf = time.perf_counter()
    model.subsample_embedding(a.ratio)
    t1 = time.perf_counter()
    rss_fit = peak_rss_mb()
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, test.shape[0], bs):
            out = model(test[i : i + bs])
            scores += out.pred_score.reshape(-1).tolist()
            _ = out.anomaly_map.cpu().numpy()
    t2 = time.perf_counter()
    return {
        "side": "anomalib",
        "fit_s": t1 - t0,
        "features_s": tf - t0,
        "coreset_s": t1 - tf,
        "predict_s": t2 - t1,
        "bank": list(model.memory_bank.shape),
        "peak_rss_mb_before_fit": rss0,
        "peak_rss_mb_fit": rss_fit,
        "peak_rss_mb_end": peak_rss_mb(),
        "scores": scores,
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------ driver
def make_data(path: Path, n_train: int, n_test: int, size: int) -> None:
    """Synthetic metal nuts (helpers.data.synthetic), ImageNet-normalised float tensors."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from helpers.core.images import IMAGENET_MEAN, IMAGENET_STD
    from helpers.data.synthetic import DEFECTS, make_sample

    def batch(kinds, salt):
        out = []
        for i, kind in enumerate(kinds):
            img, _ = make_sample(kind, size, np.random.default_rng((salt, i)))
            out.append((img.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

    test_kinds = [("good",) + DEFECTS][0]
    test_kinds = [test_kinds[i % len(test_kinds)] for i in range(n_test)]
    torch.save({"train": batch(["good"] * n_train, 1), "test": batch(test_kinds, 2)}, path)


def run_worker(python: str, side: str, a, data: Path) -> dict:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--data",
        str(data),
        "--threads",
        str(a.threads),
        "--input-size",
        str(a.input_size),
        "--ratio",
        str(a.ratio),
        "--batch-size",
        str(a.batch_size),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(a.threads),
        "MKL_NUM_THREADS": str(a.threads),
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"side": side, "error": proc.stderr[-3000:], "returncode": proc.returncode}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(wall_s=wall, load_before=load0, load_after=os.getloadavg()[0])
    return res


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=220)
    p.add_argument("--test-images", type=int, default=20)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--anomalib-python", default="/work/bench-anomalib-venv/bin/python")
    p.add_argument(
        "--order",
        default="ours,anomalib,ours",
        help="run order; repeating a side brackets the other against load drift",
    )
    p.add_argument("--json", help="write all results here")
    p.add_argument("--worker", choices=["ours", "anomalib"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p.parse_args()


def print_summary(a: argparse.Namespace, results: list[dict]) -> None:
    """The timings of the runs that worked as a table, the failures, and the speed ratio."""
    ok = [r for r in results if "error" not in r]
    print(
        f"\n{a.train_images} train + {a.test_images} test images, {a.input_size} px, "
        f"wide_resnet50_2 (random weights), ratio {a.ratio}, batch {a.batch_size}, "
        f"{a.threads} threads, {platform.node()}"
    )
    print(
        f"{'side':10s} {'fit s':>8s} {'features s':>11s} {'coreset s':>10s} {'predict s':>10s} "
        f"{'fit+pred s':>11s} {'bank':>14s} {'peak RSS fit MB':>16s}"
    )
    for r in ok:
        print(
            f"{r['side']:10s} {r['fit_s']:8.1f} {r['features_s']:11.1f} {r['coreset_s']:10.1f} "
            f"{r['predict_s']:10.1f} {r['fit_s'] + r['predict_s']:11.1f} "
            f"{'x'.join(map(str, r['bank'])):>14s} {r['peak_rss_mb_fit']:16.0f}"
        )
    for r in results:
        if "error" in r:
            print(f"{r['side']}: FAILED\n{r['error']}")
    ours = [r["fit_s"] + r["predict_s"] for r in ok if r["side"] == "ours"]
    theirs = [r["fit_s"] + r["predict_s"] for r in ok if r["side"] == "anomalib"]
    if ours and theirs:
        print(
            f"anomalib / ours (fit + predict): {min(theirs) / max(ours):.2f}x using our slowest "
            f"run, {min(theirs) / min(ours):.2f}x using our fastest"
        )


def main() -> None:
    a = parse_args()
    if a.worker:
        res = worker_ours(a) if a.worker == "ours" else worker_anomalib(a)
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.pt"
        make_data(data, a.train_images, a.test_images, a.input_size)
        results = []
        for side in a.order.split(","):
            python = a.ours_python if side == "ours" else a.anomalib_python
            if side == "anomalib" and not Path(python).exists():
                results.append({"side": side, "error": f"{python} not found (see the module doc)"})
                continue
            r = run_worker(python, side, a, data)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "scores"}), flush=True)

    print_summary(a, results)
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "args": vars(a),
                    "machine": platform.node(),
                    "cpu_count": os.cpu_count(),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
