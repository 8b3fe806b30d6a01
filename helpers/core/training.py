"""What a fit works on (notebook 03): the training patches of :meth:`PatchCore.extract` (the
coreset's projection in memory, the full embeddings in a spill file or a tensor), the spill file
itself, and the fit's memory estimate, checked before any work."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from helpers.core.backbones import BACKBONES, tap_sums, weights_for_mean_squares
from helpers.core.config import Config
from helpers.core.coreset import Projection
from helpers.core.images import as_list
from helpers.core.runtime import CPU_MICRO_BATCH

NOT_FINITE = (
    "the training features hold NaN or infinite values (precision={precision!r}; fp16 can "
    "overflow): nothing is saved; set precision='fp32' and fit again"
)


def projection_for(config: Config, capacity: int, dim: int, device) -> Projection:
    """The coreset's seeded random projection of ``capacity`` patches of length ``dim``."""
    return Projection(dim, config.coreset_projection_dim, config.seed, capacity, device)


def extract(model, images, progress: bool = False, spill_dir=None) -> TrainingFeatures:
    """Every training patch of ``images`` (and their ``train_rotations`` rotated copies) embedded
    by ``model`` (a :class:`~helpers.core.model.PatchCore`) batch by batch: its coreset projection
    in memory and, unless that is the identity, its full embedding in a spill file."""
    c = model.config
    items = images if isinstance(images, torch.Tensor) else as_list(images)
    n = items.shape[0] if isinstance(items, torch.Tensor) else len(items)
    if not isinstance(items, torch.Tensor):
        check_fit_memory(c, model.device, n)  # refuse a fit larger than free memory
    t0 = time.perf_counter()
    views, proj, spill, grid, rotations = 0, None, None, None, c.rotations_for(n)
    model.tap_weights = None
    if c.balance_taps:  # the weights that make the taps count alike (notebook 02)
        model.tap_weights = sampled_tap_weights(model, items, rotations, n)
    try:
        for batch in model.embed_images(items, rotations, progress):
            emb = batch.embeddings  # weighed by model.embed
            if proj is None:
                grid, dim = tuple(emb.shape[1:3]), emb.shape[-1]
                proj = projection_for(c, n * rotations * grid[0] * grid[1], dim, model.device)
                spill = FeatureSpill(dim, spill_dir) if proj.matrix is not None else None
            for view in emb:
                proj.add(view.reshape(-1, dim))
            if spill is not None:
                spill.append(emb.reshape(-1, dim))
            views += emb.shape[0]
        if proj is None:
            raise ValueError("no training image could be read")
        rows, n_rows = proj.result()
        if not torch.isfinite(rows[:n_rows]).all():
            raise ValueError(NOT_FINITE.format(precision=c.precision))
    except BaseException:
        if spill is not None:
            spill.close()
        raise
    kw = dict(grid=grid, n_views=views, rotations=rotations, seconds=time.perf_counter() - t0)
    return TrainingFeatures(proj, spill, **kw)


TAP_SAMPLE = 64  # training images the balance_taps weights are measured on, spread over the set


def tap_sample(n: int) -> slice:
    """The training images (of ``n``) the balance_taps weights are measured on: at most
    TAP_SAMPLE, evenly spaced (notebook 02 shows them)."""
    return slice(None, None, max(1, -(-n // TAP_SAMPLE)))


def tap_sample_rows(n: int, rotations: int, per_view: int) -> torch.Tensor:
    """The patch rows, in the fit's order (each image's views, then each view's patches), of the
    :func:`tap_sample` images of ``n``: what the weights were measured on (notebook 02)."""
    views = torch.arange(n * rotations).view(n, rotations)[tap_sample(n)].flatten()
    return (views[:, None] * per_view + torch.arange(per_view)).flatten()


def sampled_tap_weights(model, items, rotations: int, n: int) -> list[float]:
    """balance_taps: the weights that give every tap the same mean squared norm over the views of
    up to TAP_SAMPLE training images spread evenly over the set (:func:`tap_sample`; one more
    embedding pass over them, ~3 s on transistor). The fit's first batch alone depended on the
    images' order; on tire the sample (all 60 images) lifted AUPRO 0.958 -> 0.960 (RESULTS.md)."""
    sums, rows = 0.0, 0
    for batch in model.embed_images(items[tap_sample(n)], rotations):
        s, r = tap_sums(batch.embeddings, model.config.tap_dims)
        sums, rows = sums + s, rows + r
    if not rows:
        raise ValueError("no training image could be read")
    return weights_for_mean_squares(sums / rows)


class TrainingFeatures:
    """Every training patch as the fit sees it: the coreset's projection in memory (float64,
    ``n_patches`` rows) and the full embeddings in ``spill`` (a file), in ``full`` (a tensor) or,
    when the projection is the identity, nowhere else. ``close()`` removes a temporary spill."""

    def __init__(self, projection: Projection, spill: FeatureSpill | None, *, grid, n_views: int,
                 rotations=1, seconds=0.0, full: torch.Tensor | None = None):  # fmt: skip
        self.projection, self.spill, self.full = projection, spill, full
        self.grid, self.n_views, self.seconds = tuple(grid), n_views, seconds
        self.n_images = n_views // rotations  # each image gave ``rotations`` views

    @classmethod
    def in_memory(cls, projection: Projection, features: torch.Tensor, grid) -> TrainingFeatures:
        """Patches already held in a tensor [N, D] (``grid`` rows per view, in order) with their
        filled ``projection``."""
        n_views = features.shape[0] // (grid[0] * grid[1])
        return cls(projection, None, grid=grid, n_views=n_views, full=features)

    @property
    def n_patches(self) -> int:
        return self.projection.n

    @property
    def per_image(self) -> int:
        """Patches per view (one image or one rotated copy)."""
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        if self.full is not None:
            return self.full.shape[1]
        return self.spill.dim if self.spill is not None else self.projection.dim

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Full float32 features of patches ``idx`` (CPU for a spill, else where they live)."""
        if self.full is not None:
            return self.full[idx.to(self.full.device)].float()
        if self.spill is not None:
            return self.spill.gather(idx)
        return self.projection.result()[0][idx].float()

    def sample(self, k: int) -> torch.Tensor:
        """``k`` evenly spaced patches' full features (all when there are fewer), CPU float32."""
        idx = torch.linspace(0, self.n_patches - 1, min(k, self.n_patches)).round().long()
        return self.rows(idx).cpu()

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


class FeatureSpill:
    """Append [n, dim] float32 rows to a temporary file in ``directory`` (deleted on ``close()``);
    ``gather(indices)`` reads them back in order, in chunks of ``chunk_rows`` (no memory map)."""

    def __init__(self, dim: int, directory: str | Path | None = None, chunk_rows: int = 16384):
        self.dim, self.rows, self.chunk_rows = int(dim), 0, int(chunk_rows)
        fd, name = tempfile.mkstemp(prefix="patchcore-features-", suffix=".f32.tmp", dir=directory)
        self.path, self.keep = Path(name), False  # keep: True once persisted (close() leaves it)
        self._fh = os.fdopen(fd, "w+b")

    @classmethod
    def open(cls, path: str | Path, dim: int, rows: int | None = None, chunk_rows=16384):
        """An existing spill file (written by :meth:`persist`), read-only; kept on close. With
        ``rows``, the file must hold exactly that many rows."""
        path = Path(path)
        size = path.stat().st_size
        if size % (4 * dim) or (rows is not None and size != rows * dim * 4):
            expected = f"{rows} rows of" if rows is not None else "a whole number of"
            raise ValueError(f"{path}: {size} bytes is not {expected} {dim}-d float32 rows (a "
                             "truncated file?); delete it to have it recomputed")  # fmt: skip
        spill = cls.__new__(cls)
        spill.dim, spill.rows, spill.chunk_rows = int(dim), size // (4 * dim), int(chunk_rows)
        spill.path, spill.keep, spill._fh = path, True, open(path, "rb")
        return spill

    def persist(self, path: str | Path) -> Path:
        """Flush to disk and move the file to ``path`` (atomic rename); it then outlives close()."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        os.replace(self.path, path)
        self.path, self.keep = Path(path), True
        return self.path

    def __enter__(self) -> FeatureSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()  # a second close is a no-op
        if not self.keep:
            self.path.unlink(missing_ok=True)

    def append(self, rows: torch.Tensor) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"spill rows must be [n, {self.dim}], got {tuple(rows.shape)}")
        arr = rows.detach().to("cpu", torch.float32).contiguous().numpy()
        self._fh.write(arr.tobytes())
        self.rows += arr.shape[0]

    def gather(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows ``indices`` (any order, repeats allowed) as a float32 CPU tensor [k, dim]."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            raise IndexError(f"row index out of range [0, {self.rows})")
        self._fh.flush()
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, self.dim), np.float32)
        row_bytes = self.dim * 4
        pos = 0
        for start in range(0, self.rows, self.chunk_rows):
            stop = min(self.rows, start + self.chunk_rows)
            end = int(np.searchsorted(idx[order], stop, side="left"))
            if end == pos:
                continue
            self._fh.seek(start * row_bytes)
            chunk = np.frombuffer(self._fh.read((stop - start) * row_bytes), np.float32)
            chunk = chunk.reshape(stop - start, self.dim)
            out[order[pos:end]] = chunk[idx[order[pos:end]] - start]
            pos = end
        self._fh.seek(0, os.SEEK_END)
        return torch.from_numpy(out)


BASE_RAM = 1 << 30  # the libraries, the backbone and the test-time working set (measured ~0.9 GiB)


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; None if unknown)."""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
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
    disk = patches * dim * 4 if p < dim else 0
    if device.type == "cuda":
        return {"disk": disk, "gpu": work + bank + batch, "ram": BASE_RAM + bank}
    return {"disk": disk, "ram": BASE_RAM + work + bank + batch}


def check_fit_memory(config: Config, device: torch.device, n_images: int) -> dict[str, int]:
    """Refuse, before any work, a fit whose estimated peak exceeds 90% of the free memory (one
    line: estimate, free memory, the knobs to change); else return :func:`fit_memory_estimate`."""
    est = fit_memory_estimate(config, device, n_images)
    free = {"ram": available_ram()}
    if device.type == "cuda":
        free["gpu"] = torch.cuda.mem_get_info()[0]
    for kind in ("gpu", "ram"):
        if kind in est and free.get(kind) is not None and est[kind] > 0.9 * free[kind]:
            c = config
            raise MemoryError(f"fitting {n_images} images needs about {est[kind] / 2**30:.1f} GiB "
                              f"of {'GPU memory' if kind == 'gpu' else 'RAM'} but "
                              f"{free[kind] / 2**30:.1f} GiB is free: lower train_rotations (now "
                              f"{c.rotations_for(n_images)}), input_size (now {c.input_size}) or "
                              f"coreset_projection_dim (now {c.coreset_projection_dim}), or fit on "
                              "fewer images")  # fmt: skip
    return est
