"""Approximate greedy (k-center) coreset selection, as in PatchCore (Sec. 3.2, Alg. 1).

Features are first mapped to ``projection_dim`` dimensions by a seeded Gaussian random projection
(Johnson-Lindenstrauss). The running "distance to the nearest selected point" starts as the mean
distance to ``start_points`` random points (the official code's approximation) and is updated
with one matrix-vector product per selected point. Nothing of size N x N is ever built: memory is
O(N * projection_dim). All state stays on the features' device (no host round trip per step).
"""
from __future__ import annotations

import torch


def random_projection(features: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """[N, D] -> [N, dim] float32 with a seeded Gaussian matrix scaled by 1/sqrt(dim)."""
    if dim <= 0 or dim >= features.shape[1]:
        return features.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    proj = torch.randn(features.shape[1], dim, generator=gen) / dim ** 0.5
    return features.float() @ proj.to(features.device)


def _start_distances(x: torch.Tensor, sqn: torch.Tensor, n_start: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    start = torch.randperm(x.shape[0], generator=gen)[:n_start].to(x.device)
    d2 = (sqn[:, None] - 2 * x @ x[start].T + sqn[start][None, :]).clamp_min_(0)
    # mean Euclidean distance to the start points, kept squared from here on
    return d2.sqrt_().mean(dim=1).square_()


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128,
                   start_points: int = 10, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Indices (int64, on the features' device) of ``n_select`` rows picked greedily so that each
    pick is the row farthest from those already picked (approximate k-center)."""
    n = features.shape[0]
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select={n_select} must be in [1, {n}]")
    if n_select == n:
        return torch.arange(n, device=features.device)
    x = random_projection(features, projection_dim, seed).contiguous()
    sqn = (x * x).sum(dim=1)
    min_d2 = _start_distances(x, sqn, min(start_points, n), seed)
    picked = torch.empty(n_select, dtype=torch.long, device=x.device)
    d2 = torch.empty_like(min_d2)
    steps = range(n_select)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="coreset", leave=False)
    for i in steps:
        idx = torch.argmax(min_d2)
        picked[i] = idx
        c = x[idx]
        # |x|^2 - 2 x.c + |c|^2, fused: d2 = sqn + |c|^2 - 2 * (x @ c)
        torch.addmv(sqn, x, c, alpha=-2.0, out=d2)
        d2.add_(sqn[idx])
        torch.minimum(min_d2, d2, out=min_d2)
    return picked


def greedy_coreset_reference(features: torch.Tensor, n_select: int, projection_dim: int = 128,
                             start_points: int = 10, seed: int = 0) -> torch.Tensor:
    """Straightforward one-point-per-iteration version (as the official code writes it): a new
    distance column, a concatenation and a min per step. Kept for tests and the benchmark."""
    n = features.shape[0]
    if n_select == n:
        return torch.arange(n, device=features.device)
    x = random_projection(features, projection_dim, seed).contiguous()
    sqn = (x * x).sum(dim=1)
    dist = _start_distances(x, sqn, min(start_points, n), seed).reshape(-1, 1)
    picked = []
    for _ in range(n_select):
        idx = int(torch.argmax(dist))
        picked.append(idx)
        new = (sqn - 2 * x @ x[idx] + sqn[idx]).reshape(-1, 1)
        dist = torch.min(torch.cat([dist, new], dim=1), dim=1).values.reshape(-1, 1)
    return torch.tensor(picked, dtype=torch.long, device=features.device)


def covering_radius(features: torch.Tensor, selected: torch.Tensor, chunk: int = 4096) -> float:
    """max over rows of the distance to the nearest selected row (computed in chunks)."""
    centers = features[selected].float()
    worst = 0.0
    for i in range(0, features.shape[0], chunk):
        d = torch.cdist(features[i:i + chunk].float(), centers,
                        compute_mode="donot_use_mm_for_euclid_dist")
        worst = max(worst, float(d.min(dim=1).values.max()))
    return worst
