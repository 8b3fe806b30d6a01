"""Speed and memory of PatchCore's stages, on CPU or GPU, printed as a table.

    python benchmarks/bench.py --device cpu --train-images 16 --bank-size 1254
    python benchmarks/bench.py --device cuda --train-images 220 --bank-size 17248 --batches 1,64

Rows: feature extraction (img/s) at each batch size, fit (features + coreset) on
``--train-images`` synthetic metal-nut images with a coreset ratio chosen so the bank has
``--bank-size`` rows, kNN + scoring (ms/image), end-to-end predict with anomaly maps (ms/image)
at each batch size, and peak memory (process RSS; CUDA max allocated per stage).
``--compare-coreset`` also times the straightforward reference loop and the dense loop on the
same features (the reference for ``--reference-steps`` picks, extrapolated linearly: its cost per
pick is constant) and checks that they pick the same points.

``weights=None`` (random weights, stated in the output) is the default since pretrained weights
are not available offline; speed does not depend on the weight values. Images: synthetic metal
nuts (``--images synthetic``) or Gaussian noise (``--images noise``); timings exclude decoding.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import Config, PatchCore  # noqa: E402
from helpers.core.coreset import greedy_coreset, greedy_coreset_reference  # noqa: E402
from helpers.core.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from helpers.core.runtime import autocast_dtype, cpu_threads  # noqa: E402


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cuda_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def images(n: int, size: int, kind: str, salt: int) -> torch.Tensor:
    if kind == "noise":
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(salt))
    from helpers.data.synthetic import DEFECTS, make_sample

    kinds = ("good",) * n if salt == 0 else [(("good",) + DEFECTS)[i % 5] for i in range(n)]
    out = [
        (
            make_sample(k, size, np.random.default_rng((salt, i)))[0].astype(np.float32) / 255
            - IMAGENET_MEAN
        )
        / IMAGENET_STD
        for i, k in enumerate(kinds)
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def timed(fn, device, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def parse_args() -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="wide_resnet50_2")
    p.add_argument(
        "--weights", default=None, help="torchvision weights name; default None = random"
    )
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--train-images", type=int, default=220)
    p.add_argument(
        "--bank-size",
        type=int,
        default=None,
        help="memory-bank rows (default: 10%% of the training patches)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--batches", default="1,64", help="batch sizes for extraction/kNN/predict")
    p.add_argument("--fit-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    p.add_argument(
        "--batch1-images", type=int, default=10, help="images timed one by one at batch 1"
    )
    p.add_argument("--images", default="synthetic", choices=["synthetic", "noise"])
    p.add_argument("--knn-backend", default="auto", choices=["auto", "torch", "faiss"])
    p.add_argument("--knn-memory-mb", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--compare-coreset", action="store_true")
    p.add_argument("--reference-steps", type=int, default=300)
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(), p


class Table:
    """The rows printed as they are measured (and as a markdown table at the end), and the
    results written to ``--json``."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.res: dict = {}

    def row(self, name: str, value: str) -> None:
        self.rows.append((name, value))
        print(f"{name:58s} {value}", flush=True)

    def finish(self, json_path: str | None) -> None:
        print("\n| stage | value |\n|---|---|")
        for name, value in self.rows:
            print(f"| {name} | {value} |")
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(self.res, indent=2, default=str))


def make_model(a: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[PatchCore, int]:
    """The model under test and its bank size (``--bank-size``, else 10% of the patches)."""
    cfg = Config(
        backbone=a.backbone,
        weights=a.weights,
        input_size=a.input_size,
        resize=a.input_size,
        device=a.device,
        precision=a.precision,
        batch_size=a.fit_batch,
        knn_backend=a.knn_backend,
        knn_memory_mb=a.knn_memory_mb,
        train_rotations=1,
    )  # per-image cost; rotations multiply the fit work
    model = PatchCore(cfg)
    grid = model.extractor.grid_size(a.input_size)
    n_patches = a.train_images * grid * grid
    bank_size = a.bank_size or max(1, n_patches // 10)
    if not 1 <= bank_size <= n_patches:
        p.error(f"--bank-size must be in [1, {n_patches}] for {a.train_images} images")
    # int(n * ratio) must land on bank_size exactly despite float rounding
    ratio = min(1.0, (bank_size + 0.5) / n_patches)
    model.config = cfg.replace(coreset_ratio=ratio)
    if a.compile:
        model._extractor = torch.compile(model.extractor, dynamic=False)
    return model, bank_size


def run_meta(a: argparse.Namespace, model: PatchCore) -> dict:
    """The machine, versions and settings of this run, printed as ``# key: value`` lines."""
    dev, cfg = model.device, model.config
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "device": str(dev),
        "precision": cfg.precision,
        "autocast": str(autocast_dtype(dev, cfg.precision)),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "backbone": a.backbone,
        "weights": a.weights or "None (random)",
        "input_size": a.input_size,
        "train_images": a.train_images,
        "images": a.images,
        "compile": a.compile,
        "knn_backend": a.knn_backend,
    }
    for k, v in meta.items():
        print(f"# {k}: {v}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"# load average before: {load}")
    return meta


def bench_extraction(model: PatchCore, test, batches, repeats: int, t: Table) -> None:
    with torch.inference_mode():
        for b in batches:
            x = test[:b]
            model.embed(x)  # warm-up (cudnn autotune, compile)
            sec = statistics.median(timed(lambda: model.embed(x), model.device, repeats))  # noqa: B023
            t.res[f"extract_img_s_b{b}"] = b / sec
            t.row(f"feature extraction, batch {b} (img/s)", f"{b / sec:.1f}")


def bench_fit(model: PatchCore, train, n_train: int, t: Table):
    """Fit as ``fit`` does (extract, then build_bank); returns the training features."""
    dev = model.device
    reset_cuda_peak(dev)
    fit_features = model.extract(train)
    model.build_bank(fit_features)
    info = model.info
    t.res.update(fit=info, fit_rss_peak_mb=rss_peak_mb(), fit_cuda_peak_mb=cuda_peak_mb(dev))
    t.row(
        f"fit: {n_train} images -> bank {tuple(model.memory_bank.shape)} (s)",
        f"{info['fit_s']:.2f}  (features {info['features_s']:.2f} = "
        f"{n_train / info['features_s']:.1f} img/s, coreset {info['coreset_s']:.2f})",
    )
    t.row("peak RSS after fit (MB)", f"{t.res['fit_rss_peak_mb']:.0f}")
    if dev.type == "cuda":
        t.row("CUDA max allocated during fit (MB)", f"{t.res['fit_cuda_peak_mb']:.0f}")
    return fit_features


def time_coreset_loops(model: PatchCore, feats: torch.Tensor, reference_steps: int) -> dict:
    """Time the reference loop and the dense loop on the fit's features (each on a prefix of the
    picks where it is slow, extrapolated) and compare their picks with the fit's."""
    dev, cfg = model.device, model.config
    k = model.memory_bank.shape[0]
    seed_args = dict(
        projection_dim=cfg.coreset_projection_dim,
        start_points=cfg.coreset_start_points,
        seed=cfg.seed,
    )
    fast_idx = model.coreset_indices
    kk = min(k, reference_steps)
    t_ref = math.inf
    # the reference at the run's thread count and at 1 thread (faster on a busy machine)
    for th in [None, 1] if dev.type == "cpu" and torch.get_num_threads() > 1 else [None]:
        with cpu_threads(th):
            sync(dev)
            t = time.perf_counter()
            ref_idx = greedy_coreset_reference(feats, kk, **seed_args)
            sync(dev)
            t_ref = min(t_ref, (time.perf_counter() - t) * k / kk)
    kd = k if dev.type == "cuda" else kk  # on CPU the dense loop is timed on a prefix too
    sync(dev)
    t = time.perf_counter()
    dense_idx = greedy_coreset(feats, kd, method="dense", **seed_args)
    sync(dev)
    t_dense = (time.perf_counter() - t) * k / kd
    return dict(
        coreset_reference_s_extrapolated=t_ref,
        coreset_dense_s=t_dense,
        coreset_fast_s=model.info["coreset_s"],
        coreset_same_as_reference_prefix=bool(torch.equal(ref_idx, fast_idx[:kk])),
        coreset_same_as_dense=bool(torch.equal(dense_idx, fast_idx[:kd])),
        reference_steps=kk,
        dense_steps=kd,
    )


def compare_coreset(model: PatchCore, fit_features, reference_steps: int, t: Table) -> None:
    feats = fit_features.rows(torch.arange(fit_features.n_patches)).to(model.device)
    r = time_coreset_loops(model, feats, reference_steps)
    del feats
    t.res.update(r)
    k, kk, kd = model.memory_bank.shape[0], r["reference_steps"], r["dense_steps"]
    t_ref, t_dense, t_fast = (
        r["coreset_reference_s_extrapolated"],
        r["coreset_dense_s"],
        r["coreset_fast_s"],
    )
    t.row(
        f"coreset reference loop, {kk} of {k} picks timed, extrapolated, best of "
        f"1 and {torch.get_num_threads()} threads (s)",
        f"{t_ref:.1f}",
    )
    t.row(
        f"coreset dense fused loop, {kd} of {k} picks timed"
        f"{', extrapolated' if kd < k else ''} (s)",
        f"{t_dense:.1f}",
    )
    t.row("coreset default (as in fit) (s)", f"{t_fast:.2f}")
    t.row(
        "coreset speed-up vs reference / vs dense",
        f"{t_ref / t_fast:.1f}x / {t_dense / t_fast:.1f}x",
    )
    t.row(
        f"identical picks: first {kk} vs reference / first {kd} vs dense",
        f"{r['coreset_same_as_reference_prefix']} / {r['coreset_same_as_dense']}",
    )


def bench_knn(model: PatchCore, test, batches, repeats: int, bank_size: int, t: Table) -> None:
    with torch.inference_mode():
        for b in batches:
            emb = model.embed(test[:b])
            model.score_embeddings(emb)
            sec = statistics.median(
                timed(lambda: model.score_embeddings(emb), model.device, repeats)  # noqa: B023
            )
            t.res[f"knn_ms_per_image_b{b}"] = 1000 * sec / b
            t.row(
                f"kNN + image score vs {bank_size} x {model.memory_bank.shape[1]} bank, "
                f"batch {b} (ms/img)",
                f"{1000 * sec / b:.2f}",
            )


def bench_predict(model: PatchCore, test, batches, a: argparse.Namespace, t: Table) -> None:
    dev = model.device
    reset_cuda_peak(dev)
    for b in batches:
        if b == 1:
            xs = [test[i : i + 1] for i in range(a.batch1_images)]
            model.predict(xs[0])
            sync(dev)
            ts = timed(lambda: [model.predict(x) for x in xs], dev, a.repeats)  # noqa: B023
            per = statistics.median(ts) / len(xs)
        else:
            x = test[:b]
            model.predict(x)
            per = statistics.median(timed(lambda: model.predict(x), dev, a.repeats)) / b  # noqa: B023
        t.res[f"predict_ms_per_image_b{b}"] = 1000 * per
        t.row(f"end-to-end predict with maps, batch {b} (ms/img)", f"{1000 * per:.2f}")
    t.res["peak_rss_mb"] = rss_peak_mb()
    t.res["predict_cuda_peak_mb"] = cuda_peak_mb(dev)
    t.row("peak RSS of the whole run (MB)", f"{t.res['peak_rss_mb']:.0f}")
    if dev.type == "cuda":
        t.row("CUDA max allocated during predict (MB)", f"{t.res['predict_cuda_peak_mb']:.0f}")


def main() -> None:
    a, p = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    warnings.simplefilter("ignore")
    model, bank_size = make_model(a, p)
    t = Table()
    t.res["meta"] = run_meta(a, model)
    test = images(max(batches + [a.batch1_images]), a.input_size, a.images, salt=1)
    train = images(a.train_images, a.input_size, a.images, salt=0)

    bench_extraction(model, test, batches, a.repeats, t)
    fit_features = bench_fit(model, train, a.train_images, t)
    if a.compare_coreset:
        compare_coreset(model, fit_features, a.reference_steps, t)
    fit_features.close()
    bench_knn(model, test, batches, a.repeats, bank_size, t)
    bench_predict(model, test, batches, a, t)
    t.res["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t.finish(a.json)


if __name__ == "__main__":
    main()
