"""Coreset selection: full runs of the straightforward reference loop, the dense fused loop and
the batched loop (the CPU default) on the same real patch features, with identical-pick checks.

    .venv/bin/python benchmarks/coreset_bench.py --images /work/shared/data/mvtec3d_tire_rgb \\
        --category tire --threads 1,2

Features: pretrained MobileNetV2 (offline weights, see README) on the training photos (or
``--splits train,test``: all photos) of an MVTec-layout folder at 224 px, 1024-d patches (the
projected features are the same for every method: each starts from the same seeded float64
projection). ``--features file.pt`` reuses a saved [N, D] tensor instead. Each method runs
``--repeats`` times per thread count; the minimum is reported (timings on a shared machine only
get slower, never faster, from noise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.core.coreset import greedy_coreset, greedy_coreset_reference  # noqa: E402


def features_from_images(
    root: str, category: str, size: int, limit: int | None, splits: str = "train"
) -> torch.Tensor:
    from helpers import Config, PatchCore
    from helpers.data.mvtec import list_samples

    warnings.simplefilter("ignore")
    samples = [s for split in splits.split(",") for s in list_samples(root, category, split)][
        :limit
    ]
    m = PatchCore(
        Config(
            dataset_path=root,
            category=category,
            backbone="mobilenet_v2",
            input_size=size,
            resize=size,
            device="cpu",
            batch_size=16,
        )
    )
    out = []
    for batch in m.embed_images(samples):
        out.append(batch.embeddings.reshape(-1, m.config.target_embed_dim))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default="/work/shared/data/mvtec3d_tire_rgb")
    p.add_argument("--category", default="tire")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--limit", type=int, default=None, help="use the first N images")
    p.add_argument(
        "--splits",
        default="train",
        help="train, or train,test for a larger set (speed only: defects included)",
    )
    p.add_argument("--features", help="a saved [N, D] float tensor (.pt) instead of --images")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--threads", default="1,2", help="torch thread counts to run the methods at")
    p.add_argument("--methods", default="reference,dense,batched")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args()

    feats = (
        torch.load(a.features)
        if a.features
        else features_from_images(a.images, a.category, a.input_size, a.limit, a.splits)
    )
    k = int(feats.shape[0] * a.ratio)
    print(
        f"# {datetime.datetime.now().isoformat(timespec='seconds')} {platform.node()} "
        f"cpus={os.cpu_count()} torch={torch.__version__}"
    )
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# features {tuple(feats.shape)} -> {k} picks (ratio {a.ratio}), projection 128, seed 0")
    runs, picks = {}, {}
    for th in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(th)
        for method in a.methods.split(","):
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                if method == "reference":
                    idx = greedy_coreset_reference(feats, k)
                else:
                    idx = greedy_coreset(feats, k, method=method)
                times.append(time.perf_counter() - t)
            picks.setdefault(method, idx)
            runs[f"{method}@{th}"] = min(times)
            print(
                f"{method:10s} threads={th}  {min(times):8.2f} s  (all: "
                f"{', '.join(f'{x:.2f}' for x in times)}; load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    base = next(iter(picks.values()))
    same = {m: bool(torch.equal(v, base)) for m, v in picks.items()}
    print(f"identical picks across methods: {same}")
    fast = min(v for key, v in runs.items() if key.startswith("batched"))
    for ref in ("reference", "dense"):
        got = [v for key, v in runs.items() if key.startswith(ref)]
        if got:
            print(f"batched (best) vs {ref} (best thread count): {min(got) / fast:.1f}x faster")
    if a.json:
        Path(a.json).write_text(
            json.dumps({"runs": runs, "identical": same, "n": feats.shape[0], "k": k}, indent=2)
        )


if __name__ == "__main__":
    main()
