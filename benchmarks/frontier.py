"""The accuracy frontier of the map (issue 23): which map recipe and blur beat both references?

On ``benchmarks/sweep.py``'s cached features of the defaults (320 px, taps features.6 + .13 + .16
at their natural 32 + 96 + 160 channels), each row builds the memory bank with the engine's own
coreset (``select_bank``) and scores with ``score_embeddings`` (eq. 7 image score), then varies
only what the anomaly map is made of:

- tap weights: ``natural`` (as shipped) or ``balanced`` (every tap's block scaled so that its mean
  squared norm over the training patches is the same; the paper's equal-width pooling does this
  implicitly);
- map source: ``all`` taps (as shipped), ``fine`` (the nearest-neighbour distance over the first
  two taps' columns only, against the same bank rows: the stride-8/16 detail without the stride-32
  context), or ``mean`` (the average of the two patch-score grids);
- sigma of the Gaussian blur.

    .venv/bin/python benchmarks/frontier.py --cache /work/data/sweep-cache \\
        --set tire ../shared/data/mvtec3d_tire_rgb --set transistor /work/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep  # noqa: E402
import tap_balance  # noqa: E402

from helpers import Config, PatchCore  # noqa: E402
from helpers.core.backbones import balanced_tap_weights  # noqa: E402
from helpers.core.images import Geometry  # noqa: E402
from helpers.data.mvtec import list_samples  # noqa: E402
from helpers.evaluation.report import evaluate  # noqa: E402


def sub_nearest(queries: torch.Tensor, bank: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Exact L2 distance of each query row to its nearest bank row (both [*, d'])."""
    b2 = bank.pow(2).sum(1)
    out = []
    for i in range(0, len(queries), block):
        q = queries[i : i + block]
        d2 = (q.pow(2).sum(1, keepdim=True) - 2 * q @ bank.T + b2).min(1).values
        out.append(d2.clamp_min(0).sqrt())
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", nargs=2, action="append", metavar=("CATEGORY", "ROOT"), required=True)
    ap.add_argument("--cache", default="benchmarks/out/sweep-cache")
    ap.add_argument("--weights", default="natural,balanced")
    ap.add_argument("--maps", default="all,fine,mean")
    ap.add_argument("--sigmas", default="4,6,8")
    ap.add_argument("--out", default="benchmarks/out/frontier.jsonl")
    ap.add_argument(
        "--caps",
        default="0",
        help="bank sizes to score with (comma list; each the first rows of the greedy order, "
        "exactly the bank coreset_max_size=that would keep); 0 = the config's bank",
    )
    a = ap.parse_args()
    warnings.filterwarnings("ignore", message="no CUDA GPU found")
    cfg = Config(backbone="mobilenet_v2")
    blocks = tap_balance.tap_blocks(cfg)
    fine_cols = blocks[-2][1]  # the columns of every tap but the last
    print(
        "| set | weights | bank | map | sigma | image AUROC | pixel AUROC | AUPRO | worst AUPRO |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for category, root in a.set:
        train = list_samples(root, category, "train")
        test = list_samples(root, category, "test")
        key = sweep.feature_key(cfg, f"{root}|{category}", None)
        train_f, grid, test_e, _ = sweep.features(cfg, train, test, Path(a.cache), key)
        geoms = [
            Geometry.for_shape(*sweep.shape_of(s.path), cfg.resize, cfg.input_size) for s in test
        ]
        weights = {
            "natural": [1.0] * len(blocks),
            "balanced": balanced_tap_weights(train_f, cfg.tap_dims),  # the engine's, on all patches
        }
        for wname in a.weights.split(","):
            scale = torch.ones(train_f.shape[1])
            for (lo, hi), w in zip(blocks, weights[wname]):
                scale[lo:hi] = w
            model = PatchCore(cfg)
            model.grid = grid
            t0 = time.perf_counter()
            model.select_bank(train_f * scale)
            full_bank = model.memory_bank
            print(f"  ({category} {wname}: bank {time.perf_counter() - t0:.0f} s)")
            for cap in map(int, a.caps.split(",")):
                model.memory_bank = full_bank[:cap] if cap else full_bank
                rows(a, cfg, model, category, wname, test, test_e, geoms, scale, fine_cols)


def rows(a, cfg, model, category, wname, test, test_e, geoms, scale, fine_cols) -> None:
    """Score the test set with ``model``'s bank and print a row per map source and sigma."""
    scores, grids, fine = [], [], []
    bank_fine = model.memory_bank[:, :fine_cols]
    want_fine = a.maps != "all"
    knn_s = 0.0
    for i in range(0, len(test_e), 16):
        e = test_e[i : i + 16] * scale
        t0 = time.perf_counter()
        s, g = model.score_embeddings(e)
        knn_s += time.perf_counter() - t0
        scores.append(s)
        grids.append(g)
        if want_fine:
            f = sub_nearest(e[..., :fine_cols].reshape(-1, fine_cols), bank_fine)
            fine.append(f.view(g.shape))
    scores, grids = torch.cat(scores).numpy(), torch.cat(grids)
    fine = torch.cat(fine) if want_fine else None
    knn_ms = 1000 * knn_s / len(test_e)
    bank = len(model.memory_bank)
    print(f"  ({category} {wname} bank {bank}: kNN + eq. 7 {knn_ms:.0f} ms/image)")
    sources = (
        {"all": grids} if fine is None else {"all": grids, "fine": fine, "mean": (grids + fine) / 2}
    )
    for mname in a.maps.split(","):
        for sigma in map(float, a.sigmas.split(",")):
            model.config = cfg.replace(sigma=sigma)
            maps = model.maps_from_grids(sources[mname], geoms)
            pred = type("P", (), {"scores": scores, "maps": maps})
            m = evaluate(test, pred)
            per = {
                d: v.get("aupro")
                for d, v in (m.get("per_defect_pixel") or {}).items()
                if isinstance(v, dict)
            }
            worst = min((v for v in per.values() if v is not None), default=float("nan"))
            print(
                f"| {category} | {wname} | {bank} | {mname} | {sigma:g} | {m['image_auroc']:.3f} "
                f"| {m['pixel_auroc']:.3f} | {m['aupro']:.3f} | {worst:.3f} |",
                flush=True,
            )
            row = dict(set=category, weights=wname, map=mname, sigma=sigma, per=per, bank=bank)
            row["knn_ms_per_image"] = knn_ms
            row.update({k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")})
            with open(a.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
