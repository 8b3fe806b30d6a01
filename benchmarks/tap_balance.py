"""Does one stride-32 tap drown the others? An experiment for issue 9's tire gap (not a default).

With the natural embedding (``pretrain_embed_dim = target_embed_dim = 0``) each tap keeps its own
channels, so the tap with the largest squared norm (on tire, ``features.16``: 160 channels) weighs
most in every L2 distance. The paper's 1024-d pooling gives every tap the same length instead.
This script rescales each tap's block of the cached features (``benchmarks/sweep.py``'s cache) so
that every tap has the same mean squared norm over the training patches, and scores the test set
with the engine's own seams (``select_bank``, ``score_embeddings``, ``maps_from_grids``), next to
the natural and the no-``features.16`` variants.

    .venv/bin/python benchmarks/tap_balance.py --set tire ../shared/data/mvtec3d_tire_rgb \\
        --set transistor /work/data
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep  # noqa: E402

from helpers import Config, PatchCore  # noqa: E402
from helpers.core.backbones import BACKBONES  # noqa: E402
from helpers.core.images import Geometry  # noqa: E402
from helpers.data.mvtec import list_samples
from helpers.evaluation.report import evaluate  # noqa: E402


def tap_blocks(cfg: Config) -> list[tuple[int, int]]:
    """Column ranges of each tap in the natural embedding."""
    out, start = [], 0
    for layer in cfg.layers:
        width = BACKBONES[cfg.backbone].channels[layer]
        out.append((start, start + width))
        start += width
    return out


def score(cfg, train_f, grid, test_e, test, scale) -> dict:
    model = PatchCore(cfg)
    model.grid = grid
    model.select_bank(train_f * scale)
    scores, grids = [], []
    for i in range(0, len(test_e), 16):
        s, g = model.score_embeddings(test_e[i : i + 16] * scale)
        scores.append(s)
        grids.append(g)
    geoms = [Geometry.for_shape(*sweep.shape_of(s.path), cfg.resize, cfg.input_size) for s in test]
    maps = model.maps_from_grids(torch.cat(grids), geoms)
    pred = type("P", (), {"scores": torch.cat(scores).numpy(), "maps": maps})
    return evaluate(test, pred)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", nargs=2, action="append", metavar=("CATEGORY", "ROOT"), required=True)
    ap.add_argument("--cache", default="benchmarks/out/sweep-cache")
    a = ap.parse_args()
    warnings.filterwarnings("ignore", message="no CUDA GPU found")
    cfg = Config(backbone="mobilenet_v2")
    blocks = tap_blocks(cfg)
    print("| set | variant | tap weights | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|---|")
    for category, root in a.set:
        train = list_samples(root, category, "train")
        test = list_samples(root, category, "test")
        key = sweep.feature_key(cfg, f"{root}|{category}", None)
        train_f, grid, test_e, _ = sweep.features(cfg, train, test, Path(a.cache), key)
        sq = [train_f[:, lo:hi].pow(2).sum(1).mean().item() for lo, hi in blocks]
        variants = {
            "natural": [1.0] * len(blocks),
            "balanced": [(sum(sq) / len(sq) / x) ** 0.5 for x in sq],
            "without the last tap": [1.0] * (len(blocks) - 1) + [0.0],
        }
        for name, weights in variants.items():
            scale = torch.ones(train_f.shape[1])
            for (lo, hi), w in zip(blocks, weights):
                scale[lo:hi] = w
            m = score(cfg, train_f, grid, test_e, test, scale)
            print(
                f"| {category} | {name} | {', '.join(f'{w:.2f}' for w in weights)} | "
                f"{m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
