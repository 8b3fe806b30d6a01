"""Inference on a GPU (an A100 in Colab) or the CPU: device report, batch-size choice, and a
latency / throughput benchmark timed with CUDA events (``time.perf_counter`` on the CPU) after a
warm-up, halving the batch on CUDA out-of-memory."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from helpers.core.runtime import autocast_dtype, has_native_bf16, resolve_device, run_halving

A100_BATCH = 64  # fits an A100 (40 or 80 GB) with wide_resnet50_2 at 224 px in bf16
OTHER_GPU_BATCH = 32
CPU_BATCH = 8


def device_report(device: torch.device, precision: str = "auto") -> dict:
    """What the model will run on: name, memory, autocast dtype, channels_last."""
    dtype = autocast_dtype(device, precision)
    info = {
        "device": str(device),
        "autocast": str(dtype).replace("torch.", "") if dtype else "fp32 (none)",
        "channels_last": device.type == "cuda",
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16_native=has_native_bf16(device),
        )
    else:
        info.update(name="CPU", threads=torch.get_num_threads())
    return info


def resolve_device_quietly(requested: str = "auto") -> torch.device:
    """:func:`helpers.core.runtime.resolve_device` without its "no CUDA GPU found" warning, for a
    notebook whose setup cell already said there is no GPU (one CPU note, not two). That warning
    is issued once per process, so models created later in the same kernel stay quiet too."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no CUDA GPU found")
        return resolve_device(requested)


def pick_batch_size(requested: int, device: torch.device) -> int:
    """``requested`` when > 0; else 64 on a GPU with >= 30 GB (A100 class), 32 on smaller GPUs,
    8 on the CPU."""
    if requested and requested > 0:
        return int(requested)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return A100_BATCH if total >= 30 * 2**30 else OTHER_GPU_BATCH
    return CPU_BATCH


class Timer:
    """Elapsed milliseconds of a block: CUDA events on a GPU (the GPU's own clock, no host
    jitter), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.start = self.end = None  # CUDA events
        self.t0 = 0.0  # perf_counter start on the CPU
        self.ms = float("nan")  # the elapsed milliseconds, once the block has run

    def __enter__(self):
        if self.cuda:
            self.start, self.end = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = 1000 * (time.perf_counter() - self.t0)
        return False


def _infer(model, x: torch.Tensor) -> torch.Tensor:
    """The timed work: features, nearest-neighbour scores and blurred anomaly maps."""
    from helpers.core.maps import patch_scores_to_maps

    emb = model.embed(x)
    _, grid = model.score_embeddings(emb)
    return patch_scores_to_maps(grid, model.config.input_size, model.config.sigma)


def time_batch(
    model,
    x: torch.Tensor,
    batch: int,
    *,
    warmup: int = 2,
    repeats: int = 5,
    infer: Callable = _infer,
) -> dict:
    """Median milliseconds for one batch of ``batch`` images (repeating ``x`` as needed)."""
    reps = -(-batch // x.shape[0])
    xb = x.repeat(reps, 1, 1, 1)[:batch].to(model.device)
    for _ in range(warmup):
        infer(model, xb)
    times = []
    for _ in range(repeats):
        with Timer(model.device) as t:
            infer(model, xb)
        times.append(t.ms)
    ms = float(np.median(times))
    return {
        "batch": batch,
        "ms_per_batch": ms,
        "ms_per_image": ms / batch,
        "images_per_s": 1000 * batch / ms,
    }


def benchmark(
    model,
    x: torch.Tensor,
    batch_size: int,
    *,
    warmup: int = 2,
    repeats: int = 5,
    infer: Callable = _infer,
) -> list[dict]:
    """Latency (batch 1) and throughput (batch ``batch_size``, halved on CUDA out-of-memory).
    ``repeats=0``: 10 timed repeats on a GPU, 2 on the CPU (where one repeat of a batch already
    takes seconds, and 10 took longer than scoring the whole test set)."""
    if repeats == 0:
        repeats = 10 if getattr(model, "device", torch.device("cpu")).type == "cuda" else 2
    rows = [
        {"mode": "latency", **time_batch(model, x, 1, warmup=warmup, repeats=repeats, infer=infer)}
    ]
    if batch_size > 1:
        row, used = run_halving(
            lambda b: time_batch(model, x, b, warmup=warmup, repeats=repeats, infer=infer),
            batch_size,
            "throughput benchmark",
        )
        rows.append(
            {"mode": "throughput", **row, "requested_batch": batch_size, "embed_micro_batch": used}
        )
    return rows


def sweep_figure(rows: list[dict], title: str = ""):
    """Notebook 04's batch-size sweep: milliseconds per image at each batch size, split into the
    stages (``features_ms``, ``knn_ms``, ``maps_ms`` per image), one bar per (batch, threads);
    rows with fewer threads than the first row are drawn apart, on the right."""
    from helpers.lessons.viz_base import new_figure

    fig = new_figure(8.5, 3.6)
    ax = fig.subplots()
    first = rows[0].get("threads")
    apart = [r.get("threads") != first for r in rows]
    pos = np.arange(len(rows)) + 0.6 * np.cumsum(np.diff([False, *apart]) != 0)
    labels = [
        f"{r['batch']}\n{r['threads']} thread(s)" if "threads" in r else str(r["batch"])
        for r in rows
    ]
    bottom = np.zeros(len(rows))
    stages = (
        ("features_ms", "features (network)"),
        ("knn_ms", "nearest neighbours + eq. 7"),
        ("maps_ms", "upsample + blur"),
    )
    for key, name in stages:
        values = np.array([r[key] for r in rows])
        ax.bar(pos, values, bottom=bottom, label=name)
        bottom += values
    for p, total in zip(pos, bottom):
        ax.annotate(f"{total:.0f}", (p, total), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_xlabel("batch size (and CPU threads)")
    ax.set_ylabel("milliseconds per image")
    ax.set_ylim(0, 1.12 * bottom.max())
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "Time per image by batch size")
    return fig


def cpu_caches() -> dict[str, str]:
    """This CPU's cache sizes as Linux reports them (``{"L1d": "32K", "L2": "512K", ...}``; per
    core except the last level, usually shared); empty where /sys does not say."""
    from pathlib import Path

    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind.strip() != "Instruction":
            out[f"L{level}" + ("d" if kind.strip() == "Data" else "")] = size
    return out


def largest_activation_mb(model, x: torch.Tensor) -> float:
    """Megabytes of the largest single output of any layer of ``model``'s network for the
    images ``x`` (one image: the working set a batch of B multiplies by B)."""
    sizes: list[int] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in model.extractor.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.embed(x)
    finally:
        for h in handles:
            h.remove()
    return max(sizes, default=0) / 2**20
