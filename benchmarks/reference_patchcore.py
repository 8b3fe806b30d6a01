"""A plain PatchCore to compare the product against (issue 10), written independently of
``helpers`` (only the data listing and the metrics are shared, so both are scored the same way).

MobileNetV2 (torchvision ImageNet weights) taps features.6 and features.13, each 3x3-averaged
(stride 1, zero padding counted), features.13 upsampled bilinearly to the features.6 grid, the two
concatenated at their natural 32 + 96 = 128 values; the whole image squashed to a square (no
crop); greedy k-center coreset of 1 % on a 128-d Gaussian random projection; image score = the
largest nearest-neighbour L2 distance; map = bilinear upsampling + Gaussian blur sigma 4
(scipy), then resized to the original image for scoring.

    python benchmarks/reference_patchcore.py --data /work/data --category transistor --size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.core.images import load_image
from helpers.core.model import Prediction  # noqa: E402
from helpers.data.mvtec import list_samples  # noqa: E402
from helpers.evaluation.report import evaluate  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def network():
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    from helpers.core.backbones import seed_offline_weights

    seed_offline_weights(verbose=False)
    net = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    return create_feature_extractor(net, {"features.6": "a", "features.13": "b"})


@torch.no_grad()
def embed(net, paths, size: int, batch: int = 16) -> torch.Tensor:
    """[n, h, w, 128] patch features of the images at ``paths``."""
    out = []
    for i in range(0, len(paths), batch):
        xs = []
        for p in paths[i : i + batch]:
            img = cv2.resize(load_image(p), (size, size), interpolation=cv2.INTER_AREA)
            xs.append(((img.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
        taps = net(torch.from_numpy(np.stack(xs)))
        a = F.avg_pool2d(taps["a"], 3, 1, 1)
        b = F.interpolate(
            F.avg_pool2d(taps["b"], 3, 1, 1),
            size=a.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        out.append(torch.cat([a, b], 1).permute(0, 2, 3, 1))
    return torch.cat(out)


def greedy(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k-center greedy on a 128-d Gaussian projection (float32), start at row 0."""
    g = torch.Generator().manual_seed(seed)
    z = x @ (torch.randn(x.shape[1], 128, generator=g) / 128**0.5)
    picked = [0]
    d = ((z - z[0]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(d.argmax())
        picked.append(i)
        d = torch.minimum(d, ((z - z[i]) ** 2).sum(1))
    return torch.tensor(picked)


def run(
    root: str,
    category: str,
    size: int,
    ratio: float,
    sigma: float = 4.0,
    n_train: int | None = None,
) -> dict:
    train = list_samples(root, category, "train")
    if n_train:
        train = [train[i] for i in np.linspace(0, len(train) - 1, n_train).round().astype(int)]
    test = list_samples(root, category, "test")
    net = network()
    t0 = time.perf_counter()
    feats = embed(net, [s.path for s in train], size)
    flat = feats.reshape(-1, feats.shape[-1])
    bank = flat[greedy(flat, max(1, int(flat.shape[0] * ratio)))]
    t1 = time.perf_counter()
    scores, maps = [], []
    for s in test:
        e = embed(net, [s.path], size)[0]
        d = torch.cdist(e.reshape(-1, e.shape[-1]), bank).min(1).values.reshape(e.shape[:2])
        scores.append(float(d.max()))
        up = F.interpolate(d[None, None], size=(size, size), mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()
        h, w = load_image(s.path).shape[:2]
        maps.append(cv2.resize(gaussian_filter(up, sigma), (w, h), interpolation=cv2.INTER_LINEAR))
    t2 = time.perf_counter()
    m = evaluate(
        test,
        Prediction(np.array(scores, np.float32), maps, np.zeros((len(maps), 0, 0), np.float32)),
    )
    return {
        "image_auroc": m["image_auroc"],
        "pixel_auroc": m["pixel_auroc"],
        "aupro": m["aupro"],
        "per_defect_pixel": m["per_defect_pixel"],
        "fit_s": t1 - t0,
        "predict_s": t2 - t1,
        "n_train": len(train),
        "bank": int(bank.shape[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--n-train", type=int, default=None)
    a = ap.parse_args()
    print(json.dumps(run(a.data, a.category, a.size, a.ratio, n_train=a.n_train), indent=1))


if __name__ == "__main__":
    main()
