"""The good-only threshold on a real category (issue 21): what it costs, how close the cheap
leave-one-image-out scores come to a true k-fold refit, and the false-alarm and miss rates it
gives on the test set next to the F1-optimal threshold (chosen with the test labels).

    .venv/bin/python benchmarks/good_only_threshold.py --data /work/data --category transistor \\
        --out /tmp/threshold.json [--folds 5] [-p backbone mobilenet_v2]

Steps, each timed: extract the training features once; build the bank; the held-out scores
(:func:`helpers.core.bank.held_out_scores`: each image against M without its own rows);
then, as the reference, ``--folds`` true refits (the coreset selected again on the other folds'
patches) scoring their held-out images; finally the test set's scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from helpers import Config, PatchCore
from helpers.core.bank import good_only_threshold, held_out_scores
from helpers.data.mvtec import list_samples
from helpers.evaluation.metrics import f1_threshold, threshold_rates
from helpers.run.parameters import parse_value


def kfold_scores(model: PatchCore, feats, folds: int) -> np.ndarray:
    """Each image's score against a bank re-selected (greedy coreset) without its fold."""
    n, per_image = feats.n_images, feats.per_image * (feats.n_views // feats.n_images)
    h, w = feats.grid
    out = np.full(n, np.nan, np.float32)
    fold_of = np.arange(n) % folds
    for f in range(folds):
        keep = np.flatnonzero(fold_of != f)
        rows = torch.cat(
            [feats.rows(torch.arange(i * per_image, (i + 1) * per_image)) for i in keep]
        )
        refit = PatchCore(model.config)
        refit.grid = feats.grid
        refit.select_bank(rows.to(refit.device))
        del rows
        for i in np.flatnonzero(fold_of == f):
            view = feats.rows(torch.arange(i * per_image, i * per_image + h * w))
            s, _ = refit.score_embeddings(view.reshape(1, h, w, -1).to(refit.device))
            out[i] = float(s[0])
    return out


def rates(labels, scores, value) -> dict:
    r = threshold_rates(labels, scores, value)
    return {k: r[k] for k in ("value", "false_alarm_rate", "miss_rate", "false_alarms", "misses")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", default="transistor")
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5, help="true refits for the reference; 0: none")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    overrides = {"backbone": "mobilenet_v2", **{k: parse_value(v) for k, v in args.p}}
    cfg = Config(dataset_path=args.data, category=args.category, device="cpu", **overrides)
    train = list_samples(args.data, args.category, "train")
    test = list_samples(args.data, args.category, "test")
    labels = np.array([s.label for s in test])
    model = PatchCore(cfg)
    times = {}
    t0 = time.perf_counter()
    feats = model.extract(train)
    times["features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.build_bank(feats)
    times["coreset_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loo, _ = held_out_scores(model, feats)
    times["held_out_s"] = time.perf_counter() - t0
    ref = None
    if args.folds:
        t0 = time.perf_counter()
        ref = kfold_scores(model, feats, args.folds)
        times[f"refit_{args.folds}_fold_s"] = time.perf_counter() - t0
    feats.close()
    t0 = time.perf_counter()
    scores = model.predict(test, maps=False).scores
    times["test_scores_s"] = time.perf_counter() - t0
    n_good = int((labels == 0).sum())
    se = math.sqrt(args.rate * (1 - args.rate) / n_good)
    result = {
        "category": args.category,
        "config": {k: getattr(cfg, k) for k in ("backbone", "input_size", "coreset_max_size")},
        "n_train": len(train),
        "n_test_good": n_good,
        "n_test_defective": int(labels.sum()),
        "rate": args.rate,
        "binomial_se_on_test_good": se,
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "f1_optimal": rates(labels, scores, f1_threshold(labels, scores)[0]),
    }
    sets = {"held_out": loo, **({f"refit_{args.folds}_fold": ref} if ref is not None else {})}
    for name, held in sets.items():
        t = good_only_threshold(held, args.rate)
        result[name] = {
            "threshold": rates(labels, scores, t["value"]),
            "max_of_good": rates(labels, scores, t["max_of_good"]),
            "held_out_mean": float(np.mean(held)),
            "held_out_quantiles": np.quantile(held, [0.5, 0.9, 0.95, 1.0]).round(4).tolist(),
        }
    if ref is not None:
        result["held_out_vs_refit"] = {
            "mean_ratio": float(np.mean(loo / ref)),
            "pearson": float(np.corrcoef(loo, ref)[0, 1]),
        }
    result["test_good_quantiles"] = np.quantile(scores[labels == 0], [0.5, 0.9, 0.95, 1.0])
    result["test_good_quantiles"] = result["test_good_quantiles"].round(4).tolist()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
