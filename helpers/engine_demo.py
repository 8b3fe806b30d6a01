"""A notebook-free end-to-end run: fit, predict, evaluate, save into a run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .bank_file import versions
from .config import Config
from .data import list_samples
from .io import atomic_write_json
from .metrics import evaluate_samples
from .model import PatchCore
from .synthetic import generate_dataset

DEFAULT_SYNTHETIC = Path("data/synthetic")


def run_demo(
    data: str | None, out: str, backbone: str = "mobilenet_v2", overwrite: bool = False
) -> dict:
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"run folder {out_dir} already holds results; pass --overwrite or choose another --out"
        )
    if data is None:
        data = str(generate_dataset(DEFAULT_SYNTHETIC))
    cfg = Config(dataset_path=data, backbone=backbone)
    train = list_samples(cfg.dataset_path, cfg.category, "train")
    test = list_samples(cfg.dataset_path, cfg.category, "test")
    model = PatchCore(cfg).fit(train)
    t0 = time.perf_counter()
    pred = model.predict(test)
    infer_ms = 1000 * (time.perf_counter() - t0) / len(test)
    metrics = evaluate_samples(test, pred)
    metrics.update(
        n_train=len(train),
        n_test=len(test),
        timings={
            "fit_s": model.info["fit_s"],
            "infer_ms_per_image": infer_ms,
            "batch_size": cfg.batch_size,
            "device": str(model.device),
        },
        config=cfg.to_dict(),
        versions=versions(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_json(out_dir / "config.json")
    model.save(out_dir / "bank.safetensors")
    atomic_write_json(out_dir / "metrics.json", metrics)
    np.savez_compressed(
        out_dir / "predictions.npz",
        scores=pred.scores,
        labels=np.array([s.label for s in test]),
        defects=np.array([s.defect for s in test]),
        paths=np.array([str(s.path) for s in test]),
    )
    print(
        json.dumps(
            {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro", "per_defect")}, indent=1
        )
    )
    print(f"results in {out_dir}/")
    return metrics
