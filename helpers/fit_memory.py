"""Will a fit fit? The streaming fit's memory estimate (RAM, disk, GPU) and the check that refuses,
before any work, a fit larger than the free memory."""

from __future__ import annotations

import torch

from .backbones import BACKBONES
from .config import Config
from .runtime import CPU_MICRO_BATCH

BASE_RAM = 1 << 30  # the libraries, the backbone and the test-time working set (measured ~0.9 GiB)


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; None if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fit_memory_estimate(config: Config, device: torch.device, n_images: int) -> dict[str, int]:
    """Bytes the streaming fit needs for ``n_images`` training images: ``ram`` (projection,
    the coreset's working arrays, the bank and one batch of activations, plus the libraries),
    ``disk`` (the temporary feature file) and, on CUDA, ``gpu``."""
    c = config
    side = -(-c.input_size // 8)  # every registered backbone's first tap has stride >= 8
    patches = n_images * c.rotations_for(n_images) * side * side
    dim = c.embed_dim
    p = dim if not 0 < c.coreset_projection_dim < dim else c.coreset_projection_dim
    work = patches * (p * 8 + 160)  # float64 projection + coreset arrays
    bank = c.coreset_size(patches) * dim * 4
    forward = min(c.batch_size, CPU_MICRO_BATCH) if device.type == "cpu" else c.batch_size
    batch = forward * 3 * c.input_size**2 * 4 * 24  # backbone activations, roughly
    # one batch of embeddings: the taps' pooled rows, the pooled-down rows, and the copies made
    # by concatenating them (x1.5: wide_resnet50_2 at 224 px, 220 images, estimate 1.79 GiB vs
    # 1.73 measured; mobilenet_v2 at 320 px, 320 images, 1.88 vs 1.82: benchmarks/RESULTS.md)
    stacked = BACKBONES[c.backbone].embed_dim(c.layers, c.pretrain_embed_dim, 0)  # before pooling
    views = max(1, min(c.batch_size, n_images * c.rotations_for(n_images)))
    rows = views * side * side * (stacked + (dim if dim != stacked else 0))
    batch += int(rows * 4 * 1.5)
    est = {"disk": patches * dim * 4 if p < dim else 0}
    if device.type == "cuda":
        est.update(gpu=work + bank + batch, ram=BASE_RAM + bank)
    else:
        est.update(ram=BASE_RAM + work + bank + batch)
    return est


def check_fit_memory(config: Config, device: torch.device, n_images: int) -> dict[str, int]:
    """Refuse, before any work, a fit whose estimated peak exceeds 90% of the free memory,
    in one line naming the estimate, the free memory and the knobs to change. Returns the
    estimate (:func:`fit_memory_estimate`) when the fit fits."""
    est = fit_memory_estimate(config, device, n_images)
    free = {"ram": available_ram()}
    if device.type == "cuda":
        free["gpu"] = torch.cuda.mem_get_info()[0]
    for kind in ("gpu", "ram"):
        if kind in est and free.get(kind) is not None and est[kind] > 0.9 * free[kind]:
            c = config
            raise MemoryError(
                f"fitting {n_images} images needs about {est[kind] / 2**30:.1f} GiB of "
                f"{'GPU memory' if kind == 'gpu' else 'RAM'} but {free[kind] / 2**30:.1f} GiB "
                f"is free: lower train_rotations (now {c.rotations_for(n_images)}), input_size "
                f"(now {c.input_size}) or coreset_projection_dim (now "
                f"{c.coreset_projection_dim}), or fit on fewer images"
            )
    return est
