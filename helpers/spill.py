"""A temporary on-disk store of float32 feature rows: the streaming fit writes every patch
embedding once and reads back only the rows the coreset kept, so memory does not grow with the
number of training images (see :meth:`helpers.model.PatchCore.fit`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class FeatureSpill:
    """Append [n, dim] float32 rows; ``gather(indices)`` returns those rows in the order given.

    The file lives in ``directory`` (default: the system temporary folder) and is deleted on
    ``close()`` / leaving the ``with`` block. Reads are sequential chunks of ``chunk_rows`` rows,
    never a memory map, so the process's resident memory stays bounded by one chunk."""

    def __init__(self, dim: int, directory: str | Path | None = None, chunk_rows: int = 16384):
        self.dim, self.rows, self.chunk_rows = int(dim), 0, int(chunk_rows)
        fd, name = tempfile.mkstemp(prefix="patchcore-features-", suffix=".f32.tmp", dir=directory)
        self.path = Path(name)
        self.keep = False  # True once persisted: close() then leaves the file
        self._fh = os.fdopen(fd, "w+b")

    @classmethod
    def open(cls, path: str | Path, dim: int, chunk_rows: int = 16384) -> FeatureSpill:
        """An existing spill file (written by :meth:`persist`), read-only; kept on close."""
        path = Path(path)
        size = path.stat().st_size
        if size % (4 * dim):
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of {dim}-d float32 "
                "rows (a truncated file?); delete it to have it recomputed"
            )
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
        if not self._fh.closed:
            self._fh.close()
        if not self.keep:
            self.path.unlink(missing_ok=True)

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4

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
