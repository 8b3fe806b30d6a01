"""Greedy (k-center) coreset selection, as in PatchCore (Sec. 3.2, Alg. 1).

Features are first mapped to ``projection_dim`` dimensions by a seeded Gaussian random projection
(Johnson-Lindenstrauss, :mod:`helpers.projection`). The running "distance to the nearest selected
point" starts as the mean distance to ``start_points`` random points (the official code's
approximation); each pick is the point with the largest running distance (first index on ties),
after which every running distance becomes ``min(old, |x|^2 - 2 x.c + |c|^2)``.

:func:`greedy_coreset_reference` below is that loop written plainly. :func:`greedy_coreset` (what
the model uses) runs the same loop with the exact accelerated implementations of
:mod:`helpers.coreset_fast`, which pick exactly the same points. Arithmetic is float64 throughout
(projection included), so the selection does not depend on the device or on the summation order
of a matrix kernel. Nothing of size N x N is ever built.
"""

from __future__ import annotations

import math

import torch

from . import coreset_fast
from .projection import Projection, projected, random_projection
from .runtime import cpu_threads
from .runtime import progress as show_progress

__all__ = [
    "Projection",
    "covering_radius",
    "greedy_coreset",
    "greedy_coreset_reference",
    "random_projection",
]


def greedy_coreset_reference(
    features: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int = 128,
    start_points: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """The plain greedy k-center loop, one pick per iteration as the official code writes it (a
    new distance column, a concatenation and a min per step): the reference a reader checks
    against the paper's Alg. 1, and the one :func:`greedy_coreset` must match pick for pick."""
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
    features: torch.Tensor | None,
    n_select: int,
    *,
    projection_dim: int = 128,
    start_points: int = 10,
    seed: int = 0,
    progress: bool = False,
    method: str = "auto",
    filter_dim: int = 32,
    block_rows: int = 16384,
    projection: Projection | None = None,
) -> torch.Tensor:
    """Indices (int64, on the features' device) of ``n_select`` rows picked greedily so that each
    pick is the row farthest from those already picked (approximate k-center).

    On CPU the selection loop runs on one thread (the projection before it uses all of them).
    ``method``: ``"auto"`` (``"filtered"`` on CPU for large inputs, else ``"dense"``), ``"dense"``
    or ``"filtered"``; all return the same indices as :func:`greedy_coreset_reference`.

    ``projection``: an already filled :class:`Projection` (the streaming fit's), used instead of
    projecting ``features`` (then None). ``block_rows``: rows projected per matrix product."""
    if method not in ("auto", "dense", "filtered"):
        raise ValueError(f"method={method!r} must be 'auto', 'dense' or 'filtered'")
    if projection is None:
        x, n = projected(features, projection_dim, seed, block_rows)
    else:
        x, n = projection.result()
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=x.device)
    d = x.shape[1]
    if method == "auto":
        method = (
            "filtered" if x.device.type == "cpu" and n >= 8192 and d >= 2 * filter_dim else "dense"
        )
    sqn = (x * x).sum(dim=1)
    min_d2 = _start_distances(x, sqn, n, min(start_points, n), seed)
    min_d2[n:] = -math.inf  # padding rows are never picked
    steps = range(n_select)
    if progress:
        steps = show_progress(steps, total=n_select, desc="coreset", unit="pick")
    # the loop is thousands of small dependent steps: one CPU thread (see runtime.cpu_threads)
    with cpu_threads(1 if x.device.type == "cpu" else None):
        if method == "filtered" and 0 < filter_dim < d:
            return coreset_fast.filtered(x, sqn, min_d2, n, steps, n_select, filter_dim)
        return coreset_fast.dense(x, sqn, min_d2, steps, n_select)


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
