"""Notebooks 03 and 04 time inference with these: the device report, the batch-size choice, a
:class:`Timer` (CUDA events on a GPU, ``perf_counter`` on the CPU) and the batch-sweep figure."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from helpers.core.knn import resolve_backend
from helpers.core.runtime import autocast_dtype, has_native_bf16, resolve_device

A100_BATCH = 64  # fits an A100 (40 or 80 GB) with wide_resnet50_2 at 224 px in bf16
OTHER_GPU_BATCH = 32
CPU_BATCH = 8


KNN_SEARCH = {
    "bf16": "bf16 candidates, exact float32 re-rank (this CPU multiplies bf16 natively)",
    "pruned": "principal-axis bounds, then exact distances to the rows they leave (exact)",
    "faiss": "faiss flat index (exact)",
    "torch": "torch matmul blocks (exact)",
}


def device_report(device: torch.device, precision: str = "auto") -> dict:
    """What the model will run on: name, memory, autocast dtype, channels_last (every device), and
    on a CPU the nearest-neighbour search ``knn_backend="auto"`` picks there."""
    dtype = autocast_dtype(device, precision)
    info = {
        "device": str(device),
        "autocast": str(dtype).replace("torch.", "") if dtype else "fp32 (none)",
        "channels_last": True,  # PatchCore.extractor: faster on GPUs and on CPUs (oneDNN)
        "torch": torch.__version__,
    }
    if device.type != "cuda":
        search = KNN_SEARCH[resolve_backend("auto", device)]
        return {**info, "name": "CPU", "threads": torch.get_num_threads(), "kNN search": search}
    props = torch.cuda.get_device_properties(device)
    return {
        **info,
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "bf16_native": has_native_bf16(device),
    }


def resolve_device_quietly(requested: str = "auto") -> torch.device:
    """``resolve_device`` without its once-per-process "no CUDA GPU found" warning: the notebook's
    setup cell already said so (models made later in the kernel stay quiet too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no CUDA GPU found")
        return resolve_device(requested)


def pick_batch_size(requested: int, device: torch.device) -> int:
    """``requested`` when > 0; else 64 on a GPU with >= 30 GB, 32 on smaller GPUs, 8 on the CPU."""
    if requested and requested > 0:
        return int(requested)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return A100_BATCH if total >= 30 * 2**30 else OTHER_GPU_BATCH
    return CPU_BATCH


class Timer:
    """``with Timer(device) as t: ...`` then ``t.ms``: CUDA events on a GPU (its own clock, no
    host jitter), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.ms = float("nan")  # the elapsed milliseconds, once the block has run

    def __enter__(self):
        if self.cuda:
            self.start, self.end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            self.start.record()
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


def sweep_figure(rows: list[dict], title: str = ""):
    """Notebook 04's batch sweep: ms per image per (batch, threads), stacked by stage
    (``features_ms``, ``knn_ms``, ``maps_ms``); rows with other threads than the first, apart."""
    from helpers.lessons.viz_data import new_figure

    fig = new_figure(8.5, 3.6)
    ax = fig.subplots()
    apart = [r.get("threads") != rows[0].get("threads") for r in rows]
    pos = np.arange(len(rows)) + 0.6 * np.cumsum(np.diff([False, *apart]) != 0)
    bottom = np.zeros(len(rows))
    for key, name in (
        ("features_ms", "features (network)"),
        ("knn_ms", "nearest neighbours + eq. 7"),
        ("maps_ms", "upsample + blur"),
    ):
        values = np.array([r[key] for r in rows])
        ax.bar(pos, values, bottom=bottom, label=name)
        bottom += values
    for p, total in zip(pos, bottom):
        ax.annotate(f"{total:.0f}", (p, total), ha="center", va="bottom", fontsize=8)
    labels = [f"{r['batch']}\n{r['threads']} thread(s)" if "threads" in r else str(r["batch"])
              for r in rows]  # fmt: skip
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set(xlabel="batch size (and CPU threads)", ylabel="milliseconds per image")
    ax.set_ylim(0, 1.12 * bottom.max())
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "Time per image by batch size")
    return fig


def cpu_caches() -> dict[str, str]:
    """This CPU's cache sizes from Linux's /sys (``{"L1d": "32K", "L2": "512K", ...}``; per core
    except the last level); empty where /sys does not say."""
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
    """Megabytes of the largest output of any layer of ``model``'s network for the images ``x``
    (one image: the working set a batch of B multiplies by B)."""
    sizes: list[int] = []

    def hook(_module, _inputs, output):  # returns None: the output is kept
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
