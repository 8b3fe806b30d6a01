"""Fit memory and time against the number of training images (issue 9's linear-growth table).

Each size is fitted in a fresh child process (so the peak RSS is that fit's alone) with
``PatchCore(Config(backbone=...)).fit(first N images)`` at the shipped defaults; the child reports
features s, coreset s, bank rows and its peak RSS (``ru_maxrss``, what ``/usr/bin/time -v`` calls
"Maximum resident set size").

    .venv/bin/python benchmarks/fit_scaling.py --train-dir runs/syn320/data/metal_nut/train/good \\
        --sizes 40 80 160 320
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(train_dir: str, n: int, backbone: str, overrides: dict) -> dict:
    from helpers import Config, PatchCore

    paths = sorted(Path(train_dir).glob("*.png"))
    if len(paths) < n:
        raise SystemExit(f"{train_dir} holds {len(paths)} PNG images, fewer than {n}")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model = PatchCore(Config(backbone=backbone, device="cpu", **overrides)).fit(paths[:n])
    info = model.info
    return {
        "n_train": n,
        "features_s": round(info["features_s"], 1),
        "coreset_s": round(info["coreset_s"], 1),
        "fit_wall_s": round(time.perf_counter() - t0, 1),
        "n_patches": info["n_patches"],
        "bank": info["bank_size"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-dir", required=True, help="folder of training PNGs (sorted by name)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[40, 80, 160, 320])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "JSON"))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="benchmarks/out/fit_scaling.json")
    a = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in a.set}
    if a.child is not None:
        print(json.dumps(child(a.train_dir, a.child, a.backbone, overrides)))
        return
    rows = []
    print("| train images | patches | bank | features s | coreset s | fit wall s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for n in a.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--train-dir",
            a.train_dir,
            "--child",
            str(n),
            "--backbone",
            a.backbone,
        ] + [x for kv in a.set for x in ("--set", *kv)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"| {n} | {r['n_patches']} | {r['bank']} | {r['features_s']} | {r['coreset_s']} | "
            f"{r['fit_wall_s']} | {r['peak_rss_gib']} |",
            flush=True,
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "overrides": overrides, "rows": rows}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
