"""How much of an image-AUROC difference is test-set noise? Bootstrap intervals for sweep rows.

Each row of ``benchmarks/sweep.py``'s JSON carries its per-image scores and labels. This script
resamples the test images with replacement (good and defective images separately, so every draw
keeps both classes) and prints, for each named row, the 95 % interval of its image AUROC and, for
each row after the first, the 95 % interval of its difference from the first row on the SAME
resampled images (a paired bootstrap: the images that are hard for both rows cancel).

    .venv/bin/python benchmarks/auroc_noise.py benchmarks/out/sweep-tire.json \\
        default old-default-rot1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.evaluation.metrics import image_auroc  # noqa: E402


def load_rows(path: Path, names: list[str]) -> list[dict]:
    """The last row of each name that carries per-image scores (later runs append)."""
    found: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["row"] in names and "image_scores" in r:
                found[r["row"]] = r
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(
            f"{path}: no row with per-image scores named {missing}; re-run them with "
            "benchmarks/sweep.py (rows written before the scores were recorded lack them)"
        )
    labels = {tuple(found[n]["labels"]) for n in names}
    if len(labels) != 1:
        raise SystemExit(f"{path}: rows {names} were scored on different test sets")
    return [found[n] for n in names]


def bootstrap(labels, rows_scores, draws: int = 2000, seed: int = 0):
    """[draws, rows] image AUROCs on resampled test sets (classes resampled separately)."""
    y = np.asarray(labels)
    good, bad = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(rows_scores)))
    for d in range(draws):
        idx = np.concatenate([rng.choice(good, len(good)), rng.choice(bad, len(bad))])
        for j, s in enumerate(rows_scores):
            out[d, j] = image_auroc(y[idx], np.asarray(s)[idx])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a sweep JSON file")
    ap.add_argument("rows", nargs="+", help="row names; differences are taken from the first")
    ap.add_argument("--draws", type=int, default=2000)
    a = ap.parse_args()
    rows = load_rows(a.json, a.rows)
    labels = rows[0]["labels"]
    boot = bootstrap(labels, [r["image_scores"] for r in rows], a.draws)
    n_good = labels.count(0)
    print(
        f"{a.json.name}: {n_good} good / {len(labels) - n_good} defective test images, "
        f"{a.draws} paired draws"
    )
    print("| row | image AUROC | 95 % interval | minus the first row | 95 % interval |")
    print("|---|---|---|---|---|")
    for j, r in enumerate(rows):
        lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
        diff = "(reference) | "
        if j:
            dlo, dhi = np.percentile(boot[:, j] - boot[:, 0], [2.5, 97.5])
            diff = f"{r['image_auroc'] - rows[0]['image_auroc']:+.3f} | [{dlo:+.3f}, {dhi:+.3f}]"
        print(f"| {r['row']} | {r['image_auroc']:.3f} | [{lo:.3f}, {hi:.3f}] | {diff} |")


if __name__ == "__main__":
    main()
