"""Sweep PatchCore settings on a real MVTec-layout category with pixel masks and print the table
(issue 10's protocol: choose on one set, confirm on the others).

Each row is a set of ``Config`` overrides on top of ``Config(backbone="mobilenet_v2")``. Rows that
share the feature settings (input size, resize, taps, embedding sizes, rotations) share one
extraction, cached in ``--cache``; the bank, the coreset, the kNN scoring and the maps are the
engine's own code (``PatchCore.select_bank``, ``score_embeddings``, ``maps_from_grids``), so a
row equals ``PatchCore(cfg).fit(train).predict(test)`` (``--check`` verifies this for the first
row). Metrics: ``helpers.evaluation.report.evaluate`` in original image pixels.

    python benchmarks/sweep.py --data /work/data --category transistor --rows ref224 l2-224
    python benchmarks/sweep.py --table benchmarks/out/sweep-transistor.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import Config, PatchCore  # noqa: E402
from helpers.core.backbones import balanced_tap_weights  # noqa: E402
from helpers.core.images import Geometry  # noqa: E402
from helpers.core.training import tap_sample_rows  # noqa: E402
from helpers.data.mvtec import list_samples
from helpers.evaluation.metrics import image_auroc
from helpers.evaluation.report import evaluate  # noqa: E402

# taps .6 + .13 at their natural 32 + 96 = 128 dims, no rotations (the plain reference's features)
NAT = dict(
    pretrain_embed_dim=0,
    target_embed_dim=0,
    layers=["features.6", "features.13"],
    train_rotations=1,
)
OLD = dict(
    input_size=352,
    resize=352,
    pretrain_embed_dim=1024,
    target_embed_dim=1024,
    layers=["features.6", "features.13"],
    distance="cosine",
    cosine_floor=0.3,
    sigma=8.0,
    coreset_ratio=0.1,
)  # the issue-2 defaults
L2 = dict(distance="l2", cosine_floor=0.0)
ROWS: dict[str, dict] = {
    # the plain reference's settings through the engine (squash, natural dims, L2, 1 %, max)
    "ref224": dict(
        input_size=224, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01, num_neighbors=1
    ),
    "ref320": dict(
        input_size=320, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01, num_neighbors=1
    ),
    "old-default-rot1": dict(**OLD, train_rotations=1),
    "l2-224": dict(input_size=224, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01),
    "l2-224-10pc": dict(input_size=224, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.1),
    "l2-224-s2": dict(input_size=224, resize=0, **NAT, **L2, sigma=2.0, coreset_ratio=0.01),
    "l2-224-s8": dict(input_size=224, resize=0, **NAT, **L2, sigma=8.0, coreset_ratio=0.01),
    "cos03-224": dict(
        input_size=224,
        resize=0,
        **NAT,
        distance="cosine",
        cosine_floor=0.3,
        sigma=4.0,
        coreset_ratio=0.01,
    ),
    "cos1-224": dict(
        input_size=224,
        resize=0,
        **NAT,
        distance="cosine",
        cosine_floor=1.0,
        sigma=4.0,
        coreset_ratio=0.01,
    ),
    "l2-224-1024d": dict(
        input_size=224,
        resize=0,
        **{**NAT, "pretrain_embed_dim": 1024, "target_embed_dim": 1024},
        **L2,
        sigma=4.0,
        coreset_ratio=0.01,
    ),
    "l2-256": dict(input_size=256, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01),
    "l2-288": dict(input_size=288, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01),
    "l2-320": dict(input_size=320, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.01),
    "l2-224-f10": dict(
        input_size=224,
        resize=0,
        **{**NAT, "layers": ["features.6", "features.10", "features.13"]},
        **L2,
        sigma=4.0,
        coreset_ratio=0.01,
    ),
    "ref224-10pc": dict(
        input_size=224, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.1, num_neighbors=1
    ),
    "l2-224-10pc-s8": dict(input_size=224, resize=0, **NAT, **L2, sigma=8.0, coreset_ratio=0.1),
    "l2-224-10pc-rot8": dict(
        input_size=224,
        resize=0,
        **{**NAT, "train_rotations": 8},
        **L2,
        sigma=4.0,
        coreset_ratio=0.1,
    ),
    "l2-256-10pc": dict(input_size=256, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.1),
    "l2-320-10pc": dict(input_size=320, resize=0, **NAT, **L2, sigma=4.0, coreset_ratio=0.1),
    "l2-224-rot8": dict(
        input_size=224,
        resize=0,
        **{**NAT, "train_rotations": 8},
        **L2,
        sigma=4.0,
        coreset_ratio=0.01,
    ),
}
FEATURE_FIELDS = (
    "input_size",
    "resize",
    "layers",
    "pretrain_embed_dim",
    "target_embed_dim",
    "clahe",
    "train_rotations",
    "patch_size",
)
BASE = dict(backbone="mobilenet_v2")  # "default" is Config(backbone="mobilenet_v2") itself


def subset(samples, n):
    if not n or n >= len(samples):
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, n).round().astype(int)]


def feature_key(cfg: Config, data: str, n_train) -> str:
    blob = json.dumps([data, n_train] + [getattr(cfg, f) for f in FEATURE_FIELDS])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def features(cfg, train, test, cache: Path, key: str):
    """(train features [N, D], grid, test embeddings [n, h, w, D], extract seconds)."""
    path = cache / f"{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return d["train"], tuple(d["grid"]), d["test"], d["seconds"]
    model = PatchCore(cfg)
    t0 = time.perf_counter()
    train_f = torch.cat(
        [
            b.embeddings.reshape(-1, b.embeddings.shape[-1])
            for b in model.embed_images(train, cfg.rotations_for(len(train)), progress=True)
        ]
    )
    seconds = time.perf_counter() - t0
    embs = [b.embeddings for b in model.embed_images(test, progress=True, desc="test")]
    test_e = torch.cat(embs)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"train": train_f, "grid": list(test_e.shape[1:3]), "test": test_e, "seconds": seconds},
        path,
    )
    return train_f, tuple(test_e.shape[1:3]), test_e, seconds


def evaluate_row(name, overrides, root, category, n_train, cache, base) -> dict:
    cfg = Config(**{**base, **overrides})
    train = subset(list_samples(root, category, "train"), n_train)
    test = list_samples(root, category, "test")
    train_f, grid, test_e, extract_s = features(
        cfg, train, test, cache, feature_key(cfg, f"{root}|{category}", n_train)
    )
    model = PatchCore(cfg)
    model.grid = grid
    if cfg.balance_taps:  # as PatchCore.extract: weights from the sampled training images' views
        rows = tap_sample_rows(len(train), cfg.rotations_for(len(train)), grid[0] * grid[1])
        model.tap_weights = balanced_tap_weights(train_f[rows], cfg.tap_dims)
        scale = model.tap_scale()
        train_f, test_e = train_f * scale, test_e * scale
    t0 = time.perf_counter()
    model.select_bank(train_f)
    coreset_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, grids = [], []
    for i in range(0, len(test_e), 16):
        s, g = model.score_embeddings(test_e[i : i + 16])
        scores.append(s)
        grids.append(g)
    score_s = time.perf_counter() - t0
    geoms = [Geometry.for_shape(*shape_of(s.path), cfg.resize, cfg.input_size) for s in test]
    maps = model.maps_from_grids(torch.cat(grids), geoms)
    pred = type("P", (), {"scores": torch.cat(scores).numpy(), "maps": maps})
    m = evaluate(test, pred)
    mapmax = image_auroc([s.label for s in test], [float(a.max()) for a in maps])
    return {
        "row": name,
        "data": category,
        "n_train": len(train),
        "overrides": overrides,
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro"],
        "image_auroc_mapmax": mapmax,
        # per test image, for the bootstrap intervals of benchmarks/auroc_noise.py
        "labels": [int(s.label) for s in test],
        "image_scores": [round(float(v), 6) for v in pred.scores],
        "per_defect": m["per_defect"],
        "per_defect_pixel": m["per_defect_pixel"],
        "bank": int(model.memory_bank.shape[0]),
        "dim": int(model.memory_bank.shape[1]),
        "extract_s": extract_s,
        "coreset_s": coreset_s,
        "score_s": score_s,
        "date": time.strftime("%Y-%m-%d"),
    }


_SHAPES: dict = {}


def shape_of(path) -> tuple[int, int]:
    if path not in _SHAPES:
        import cv2

        im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        _SHAPES[path] = im.shape[:2]
    return _SHAPES[path]


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = [
        "| row | data | train | image AUROC | pixel AUROC | AUPRO | bank x dim | extract s "
        "| coreset s | per-defect pixel AUROC |",
        "|" + "---|" * 10,
    ]
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        pd = ", ".join(
            f"{k} {f(v['pixel_auroc'])}" for k, v in (r["per_defect_pixel"] or {}).items()
        )
        out.append(
            f"| {r['row']} | {r['data']} | {r['n_train']} | {f(r['image_auroc'])} | "
            f"{f(r['pixel_auroc'])} | {f(r['aupro'])} | {r['bank']} x {r['dim']} | "
            f"{r['extract_s']:.0f} | {r['coreset_s']:.0f} | {pd} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data")
    ap.add_argument("--category")
    ap.add_argument("--rows", nargs="*", default=[])
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--cache", default="benchmarks/out/sweep-cache")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None)
    a = ap.parse_args()
    if a.table:
        print(table(Path(a.table)))
        return
    base = BASE
    out = Path(a.out or f"benchmarks/out/sweep-{a.category}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.rows:
        overrides = row_overrides(name)
        r = evaluate_row(name, overrides, a.data, a.category, a.n_train, Path(a.cache), base)
        with open(out, "a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(table_line(r), flush=True)


def row_overrides(name: str) -> dict:
    """A row's overrides: a ROWS name, "default", or either followed by ``:field=json;...``
    (for example ``l2-224-10pc:resize=224;sigma=6``)."""
    base, _, extra = name.partition(":")
    overrides = {} if base == "default" else dict(ROWS[base])
    for item in filter(None, extra.split(";")):
        field, _, value = item.partition("=")
        overrides[field] = json.loads(value)
    return overrides


def table_line(r: dict) -> str:
    return (
        f"{r['row']:<18} {r['data']} n={r['n_train']} img {r['image_auroc']:.3f} pix "
        f"{r['pixel_auroc']:.3f} pro {r['aupro']:.3f} "
        f"mapmax {r.get('image_auroc_mapmax', 0):.3f} bank {r['bank']}x{r['dim']} "
        f"ext {r['extract_s']:.0f}s core {r['coreset_s']:.0f}s score {r['score_s']:.0f}s "
        + " ".join(f"{k}:{v['pixel_auroc']:.3f}" for k, v in r["per_defect_pixel"].items())
    )


if __name__ == "__main__":
    main()
