"""Where predict's time goes, stage by stage, and the CPU's kNN backends on the same bank.

    .venv/bin/python benchmarks/predict_profile.py BANK.safetensors DATA CATEGORY [N_IMAGES]

BANK: a bank a run saved (``<run>/artifacts/bank-<hash>.safetensors``). Prints ms/image for
decoding, preprocessing, the backbone, the kNN (the exact pruned search, the torch blocks and,
when installed, faiss), eq. 7 and the maps, then predict() end to end with each backend and the
largest score difference from the pruned search's.
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.simplefilter("ignore")

import helpers as H  # noqa: E402
from helpers.core.images import load_image  # noqa: E402
from helpers.core.knn import faiss_available  # noqa: E402
from helpers.data.mvtec import list_samples  # noqa: E402
from helpers.evaluation.report import evaluate  # noqa: E402


def stages(model, test, batch: int = 8) -> dict[str, float]:
    t: dict[str, float] = {}

    def add(name, start):
        t[name] = t.get(name, 0.0) + time.perf_counter() - start

    for i in range(0, len(test), batch):
        chunk = test[i : i + batch]
        s = time.perf_counter()
        images = [load_image(x.path) for x in chunk]
        add("decode", s)
        s = time.perf_counter()
        xs = [model.preprocess(im) for im in images]
        add("preprocess", s)
        s = time.perf_counter()
        emb = model.embed(torch.stack([x for x, _ in xs]))
        add("backbone + embedding", s)
        s = time.perf_counter()
        _, grid = model.score_embeddings(emb)
        add(f"kNN + eq. 7 ({model.config.knn_backend})", s)
        s = time.perf_counter()
        model.maps_from_grids(grid, [g for _, g in xs])
        add("maps", s)
    return {k: v / len(test) * 1000 for k, v in t.items()}


def main() -> None:
    bank, data, category = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    test = list_samples(data, category, "test")
    test = test[:n] if n else test
    print(f"threads {torch.get_num_threads()}, {len(test)} test images of {category}")
    preds = {}
    for backend in ["pruned", "torch"] + (["faiss"] if faiss_available() else []):
        model = H.PatchCore.load(bank, knn_backend=backend, device="cpu")
        model.predict(test[:8])  # warm-up
        row = stages(model, test)
        print(backend, "stages (ms/image):", {k: round(v, 1) for k, v in row.items()})
        s = time.perf_counter()
        preds[backend] = pred = model.predict(test)
        ms = (time.perf_counter() - s) / len(test) * 1000
        m = evaluate(test, pred)
        keys = ("image_auroc", "pixel_auroc", "aupro")
        print(f"{backend} predict(): {ms:.0f} ms/image;", {k: m[k] for k in keys})
    a = preds["pruned"].scores
    for backend, pred in preds.items():
        if backend != "pruned":
            diff = float(np.abs(pred.scores - a).max() / np.abs(a).min())
            print(f"max relative score difference {backend} vs pruned: {diff:.2g}")


if __name__ == "__main__":
    main()
