"""Greedy (k-center) coreset selection, PatchCore's Sec. 3.2 / Alg. 1 (notebook 03): a seeded
random projection (:class:`Projection`), then each pick is the point farthest from the picks so
far (running distances start as the mean distance to ``start_points`` random points, as in the
official code). :func:`greedy_coreset_reference` is the plain loop; :func:`greedy_coreset` runs
the exact fast loops of :mod:`helpers.core.coreset_fast`, same picks. float64 throughout.
"""

from __future__ import annotations

import math

import torch

from helpers.core import coreset_fast
from helpers.core.coreset_fast import ROWS
from helpers.core.runtime import cpu_threads
from helpers.core.runtime import progress as show_progress


def greedy_coreset_reference(
    features: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int = 128,
    start_points: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """The plain greedy loop as the official code writes it (a distance column, a concatenation
    and a min per pick): Alg. 1 to read, and what :func:`greedy_coreset` matches pick for pick."""
    n = features.shape[0]
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=features.device)
    x, n = projected(features, projection_dim, seed)
    sqn = (x * x).sum(dim=1)
    dist = _start_distances(x, sqn, n, min(start_points, n), seed)[:n].reshape(-1, 1)
    picked = []
    for _ in range(n_select):
        idx = int(torch.argmax(dist))
        picked.append(idx)
        new = (sqn - 2 * (x @ x[idx]) + sqn[idx])[:n].reshape(-1, 1)
        dist = torch.min(torch.cat([dist, new], dim=1), dim=1).values.reshape(-1, 1)
    return torch.tensor(picked, dtype=torch.long, device=features.device)


def _start_distances(
    x: torch.Tensor, sqn: torch.Tensor, n: int, n_start: int, seed: int
) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    start = torch.randperm(n, generator=gen)[:n_start].to(x.device)
    d2 = (sqn[:, None] - 2 * x @ x[start].T + sqn[start][None, :]).clamp_min_(0)
    # mean Euclidean distance to the start points, kept squared from here on
    return d2.sqrt_().mean(dim=1).square_()


def _check(n: int, n_select: int) -> None:
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select={n_select} must be in [1, {n}]")


def greedy_coreset(
    features: torch.Tensor | Projection,
    n_select: int,
    *,
    projection_dim: int = 128,
    start_points: int = 10,
    seed: int = 0,
    progress: bool = False,
    method: str = "auto",
    bound_dim: int = 64,
    block_rows: int = 16384,
) -> torch.Tensor:
    """Indices (int64) of ``n_select`` rows, each the row farthest from those picked before it.
    ``features``: rows [N, D] (projected here, ``block_rows`` at a time) or a filled
    :class:`Projection` (the streaming fit's). ``method``: "auto" ("batched" on the CPU for large
    inputs, else "dense"), "dense" or "batched" (its bound uses ``bound_dim`` principal axes): the
    same indices as the reference loop."""
    if method not in ("auto", "dense", "batched"):
        raise ValueError(f"method={method!r} must be 'auto', 'dense' or 'batched'")
    if isinstance(features, Projection):
        x, n = features.result()
    else:
        x, n = projected(features, projection_dim, seed, block_rows)
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=x.device)
    p = max(1, min(bound_dim, x.shape[1] - 1))
    if method == "auto":
        method = "batched" if x.device.type == "cpu" and n >= 8192 and p >= 8 else "dense"
    sqn = (x * x).sum(dim=1)
    min_d2 = _start_distances(x, sqn, n, min(start_points, n), seed)
    min_d2[n:] = -math.inf  # padding rows are never picked
    if method == "batched" and x.device.type != "cpu":
        raise ValueError("method='batched' runs on the CPU; use 'dense' on a GPU")
    bar = show_progress(None, total=n_select, desc="coreset", unit="pick") if progress else None
    tick = None if bar is None else bar.update
    # thousands of small dependent steps: one CPU thread for torch (see runtime.cpu_threads)
    with cpu_threads(1 if x.device.type == "cpu" else None):
        if method == "batched":
            picked = coreset_fast.batched(x, sqn, min_d2, n, n_select, p, tick)
        else:
            picked = coreset_fast.dense(x, sqn, min_d2, n_select, tick)
    if bar is not None:
        bar.close()
    return picked


def covering_radius(features: torch.Tensor, selected: torch.Tensor, chunk: int = 4096) -> float:
    """max over rows of the distance to the nearest selected row (computed in chunks)."""
    centers = features[selected].float()
    worst = 0.0
    for i in range(0, features.shape[0], chunk):
        d = torch.cdist(
            features[i : i + chunk].float(), centers, compute_mode="donot_use_mm_for_euclid_dist"
        )
        worst = max(worst, float(d.min(dim=1).values.max()))
    return worst


def _projection_matrix(d: int, dim: int, seed: int, device, dtype) -> torch.Tensor | None:
    """The seeded Gaussian matrix [d, dim] scaled by 1/sqrt(dim); None when no projection applies
    (``dim <= 0`` or ``dim >= d``: the features are used as they are)."""
    if dim <= 0 or dim >= d:
        return None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(d, dim, generator=gen) / dim**0.5).to(device, dtype)


def random_projection(
    features: torch.Tensor,
    dim: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    chunk: int = 16384,
) -> torch.Tensor:
    """[N, D] -> [N, dim] with a seeded Gaussian matrix / sqrt(dim), in ``dtype``, ``chunk`` rows at
    a time; ``dim <= 0`` or ``dim >= D`` returns the features unprojected."""
    proj = Projection(
        features.shape[1], dim, seed, features.shape[0], features.device, dtype, padded=False
    )
    proj.add(features, block_rows=chunk)
    return proj.result()[0]


class Projection:
    """The coreset's projection, filled block by block (the streaming fit adds one view at a time)
    into a preallocated [capacity + padding, dim] buffer, zero after the last row added. A block
    gives the same numbers whether the features arrive in a stream or as one tensor."""

    def __init__(self, in_dim: int, dim: int, seed: int, capacity: int, device=None,
                 dtype: torch.dtype = torch.float64, padded: bool = True):  # fmt: skip
        self.matrix = _projection_matrix(in_dim, dim, seed, device, dtype)
        self.dim = in_dim if self.matrix is None else dim
        self.capacity, self.n, self.padded = int(capacity), 0, padded
        self.buffer = torch.zeros(
            capacity + (ROWS if padded else 0), self.dim, dtype=dtype, device=device
        )

    @classmethod
    def of_rows(cls, rows: torch.Tensor, device=None) -> Projection:
        """A filled projection from rows already projected (a saved one)."""
        proj = cls(rows.shape[1], 0, 0, rows.shape[0], device, rows.dtype)
        proj.add(rows)
        return proj

    def add(self, rows: torch.Tensor, block_rows: int | None = None) -> None:
        """Append ``rows`` [k, in_dim], projected ``block_rows`` rows per matrix product (all at
        once when None)."""
        if block_rows is not None:
            for start in range(0, rows.shape[0], block_rows):
                self.add(rows[start : start + block_rows])
            return
        k = rows.shape[0]
        if self.n + k > self.capacity:
            raise ValueError(f"projection buffer holds {self.capacity} rows; got {self.n + k}")
        part = rows.to(self.buffer.device, self.buffer.dtype)
        if self.matrix is None:
            self.buffer[self.n : self.n + k] = part
        else:
            torch.mm(part, self.matrix, out=self.buffer[self.n : self.n + k])
        self.n += k

    def result(self) -> tuple[torch.Tensor, int]:
        """(rows [n + padding, dim] with zero padding rows, n); a view of the buffer."""
        pad = (-self.n % ROWS or ROWS) if self.padded else 0
        return self.buffer[: self.n + pad], self.n


def projected(
    features: torch.Tensor, projection_dim: int, seed: int, block_rows: int = 16384
) -> tuple[torch.Tensor, int]:
    """float64 projection zero-padded to a multiple of ROWS rows (at least one zero row, row
    ``n``, which pads gathered row sets), and the real row count."""
    proj = Projection(features.shape[1], projection_dim, seed, features.shape[0], features.device)
    proj.add(features, block_rows=block_rows)
    return proj.result()
