"""Pixel metrics and anomaly-map alignment on real photos with pixel masks (MVTec 3D-AD ``tire``).

Data: ``/work/shared/data/mvtec3d_tire_rgb/tire`` (MVTec AD layout; 600x800 portrait RGB photos,
60 train good, 25 test good, 87 defective with masks whose defect pixels are 253-255; see its
PROVENANCE.md). Images are read where they are, never copied.

For each preprocessing geometry it fits ``mobilenet_v2`` (``Config(backbone="mobilenet_v2")``
plus the named overrides), predicts every test image, and reports

* image AUROC, pixel AUROC and AUPRO (to FPR 0.3) from
  ``helpers.evaluation.report.evaluate``, on maps
  in ORIGINAL pixels as ``PatchCore.predict`` returns them;
* ``in view``: defect pixels inside the part of the photo the network saw (a square centre crop:
  even resize == input_size crops the long side of a portrait photo), and how many defective images
  have part of their mask outside it;
* ``argmax hit``: fraction of defective images whose map argmax lies in the mask dilated by 0 / 8
  original pixels (and the same over the images whose mask is fully in view);
* ``best shift``: the (dy, dx) shift of the map, in original pixels (step 4, |d| <= 24), that
  maximises the mean per-image min-max-normalised map value over defect pixels. A map that is
  registered to the original pixels peaks at or next to (0, 0); a geometry bug (a wrong crop
  offset or a scale error) shows up as a large shift.

Reproduce (2-core CPU, about 15 minutes; training images subsampled, see --train-every):

    .venv/bin/python benchmarks/tire_pixel.py --out benchmarks/out/tire_pixel.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_metal_nut import SCORING_FIELDS  # noqa: E402  (the settings a row reports)

from helpers import Config, PatchCore  # noqa: E402
from helpers.data.mvtec import list_samples, load_mask  # noqa: E402
from helpers.evaluation.report import evaluate  # noqa: E402

DEFAULT_DATA = "/work/shared/data/mvtec3d_tire_rgb"


def view_mask(geometry) -> np.ndarray:
    """Bool [orig_h, orig_w]: the original pixels whose centre falls inside the network's crop."""
    g = geometry
    ys = (np.arange(g.orig_h) + 0.5) * g.res_h / g.orig_h - 0.5 - g.top
    xs = (np.arange(g.orig_w) + 0.5) * g.res_w / g.orig_w - 0.5 - g.left
    iy = (ys >= -0.5) & (ys <= g.crop - 0.5)
    ix = (xs >= -0.5) & (xs <= g.crop - 0.5)
    return iy[:, None] & ix[None, :]


def alignment(samples, pred, dilate_px=(0, 8), max_shift=24, step=4) -> dict:
    defective = [
        (s, a, g)
        for s, a, g in zip(samples, pred.maps, pred.geometries)
        if s.defect != "good" and a is not None
    ]
    hits = {d: [] for d in dilate_px}
    hits_full = {d: [] for d in dilate_px}
    in_view_frac, partly_out = [], 0
    shifts = [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1, step)
        for dx in range(-max_shift, max_shift + 1, step)
    ]
    shift_score = np.zeros(len(shifts))
    for s, amap, g in defective:
        mask = load_mask(s.mask_path, amap.shape)
        seen = view_mask(g)
        frac = float((mask & seen).sum() / mask.sum())
        in_view_frac.append(frac)
        partly_out += frac < 1.0
        y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
        for d in dilate_px:
            m = (
                mask
                if d == 0
                else cv2.dilate(
                    mask.astype(np.uint8),
                    cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d + 1, 2 * d + 1)),
                ).astype(bool)
            )
            hits[d].append(bool(m[y, x]))
            if frac == 1.0:
                hits_full[d].append(bool(m[y, x]))
        lo, hi = float(amap.min()), float(amap.max())
        norm = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
        ys, xs = np.nonzero(mask)
        for k, (dy, dx) in enumerate(shifts):
            # the map moved by (dy, dx): value at defect pixel p is norm[p - (dy, dx)]
            yy = np.clip(ys - dy, 0, amap.shape[0] - 1)
            xx = np.clip(xs - dx, 0, amap.shape[1] - 1)
            shift_score[k] += norm[yy, xx].mean()
    n = len(defective)
    best = int(np.argmax(shift_score))
    zero = shifts.index((0, 0))
    return {
        "n_defective": n,
        "defect_pixels_in_view": float(np.mean(in_view_frac)),
        "images_partly_out_of_view": int(partly_out),
        **{f"argmax_hit_dilate{d}": float(np.mean(hits[d])) for d in dilate_px},
        **{
            f"argmax_hit_dilate{d}_fully_in_view": float(np.mean(hits_full[d]))
            if hits_full[d]
            else None
            for d in dilate_px
        },
        "n_fully_in_view": len(hits_full[dilate_px[0]]),
        "best_shift_yx": list(shifts[best]),
        "mask_mean_at_best_shift": float(shift_score[best] / n),
        "mask_mean_at_zero_shift": float(shift_score[zero] / n),
    }


def run(name: str, overrides: dict, train, test, threads: int) -> dict:
    cfg = Config(backbone="mobilenet_v2", device="cpu", **overrides)
    t0 = time.perf_counter()
    model = PatchCore(cfg).fit(train)
    t1 = time.perf_counter()
    pred = model.predict(test)
    t2 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate(test, pred)
    align = alignment(test, pred)
    t3 = time.perf_counter()
    return {
        "name": name,
        "overrides": overrides,
        "config": {k: getattr(cfg, k) for k in SCORING_FIELDS},
        "bank_size": model.info["bank_size"],
        "n_train": len(train),
        "n_test": len(test),
        "fit_s": t1 - t0,
        "predict_s": t2 - t1,
        "metrics_s": t3 - t2,
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": metrics["pixel_auroc"],
        "aupro": metrics["aupro"],
        "per_defect_auroc": metrics["per_defect"],
        **align,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder holding tire/ (MVTec layout)")
    ap.add_argument("--category", default="tire")
    ap.add_argument("--out", default="benchmarks/out/tire_pixel.json", help="JSON of results")
    ap.add_argument(
        "--train-every",
        type=int,
        default=3,
        help="fit on every k-th training image (1 = all 60; default 3 = 20 images)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_all = list_samples(args.data, args.category, "train")
    train = train_all[:: args.train_every]
    test = list_samples(args.data, args.category, "test")
    d = Config(backbone="mobilenet_v2")
    s = d.input_size
    settings = [
        (f"defaults ({s}/{d.resize})", {}),
        (f"crop: resize {round(s * 8 / 7)} -> {s}", {"resize": round(s * 8 / 7)}),
    ]
    if d.train_rotations > 1:
        settings.append(("defaults, train_rotations=1", {"train_rotations": 1}))
    results = []
    print(
        f"tire: {len(train)} of {len(train_all)} train images, {len(test)} test "
        f"({sum(x.defect != 'good' for x in test)} defective)"
    )
    hdr = (
        f"{'setting':32s} {'imgAUROC':>8s} {'pixAUROC':>8s} {'AUPRO':>6s} {'inView':>6s} "
        f"{'hit0':>5s} {'hit8':>5s} {'hit8full':>8s} {'bestShift':>10s} {'fit s':>6s} "
        f"{'pred s':>6s}"
    )
    print(hdr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_every": args.train_every,
    }
    for name, ov in settings:
        r = run(name, ov, train, test, args.threads)
        results.append(r)
        print(
            f"{name:32s} {r['image_auroc']:8.3f} {r['pixel_auroc']:8.3f} {r['aupro']:6.3f} "
            f"{r['defect_pixels_in_view']:6.3f} {r['argmax_hit_dilate0']:5.2f} "
            f"{r['argmax_hit_dilate8']:5.2f} {r['argmax_hit_dilate8_fully_in_view']:8.2f} "
            f"{str(tuple(r['best_shift_yx'])):>10s} {r['fit_s']:6.0f} {r['predict_s']:6.0f}",
            flush=True,
        )
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
