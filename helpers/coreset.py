"""Approximate greedy (k-center) coreset selection, as in PatchCore (Sec. 3.2, Alg. 1).

Features are first mapped to ``projection_dim`` dimensions by a seeded Gaussian random projection
(Johnson-Lindenstrauss). The running "distance to the nearest selected point" starts as the mean
distance to ``start_points`` random points (the official code's approximation); each pick is the
point with the largest running distance (first index on ties), after which every running distance
becomes ``min(old, |x|^2 - 2 x.c + |c|^2)``. Nothing of size N x N is ever built.

Arithmetic is float64 throughout (projection included), so the selection does not depend on the
device or on the summation order of a matrix kernel: CPU and CUDA pick the same points, and the
fast path below picks exactly what the straightforward loop (:func:`greedy_coreset_reference`)
picks. Dot products always go through a matrix-vector product whose row count is a multiple of
``_ROWS`` (zero-padded): MKL's gemv rounds its last ``N mod 8`` rows differently from the others,
which made two identical patches get different distances depending on where they sat.

Two exact implementations of the same loop:

* ``dense`` (CUDA default): one fused float64 matrix-vector product over all points per pick.
  Everything stays on the device; no host synchronisation per step.
* ``filtered`` (CPU default for large inputs): a float32 lower bound of every squared distance
  from the top-``filter_dim`` principal coordinates of the projected points plus the norm of the
  rest (``filter_dim + 1`` numbers per point instead of ``projection_dim`` float64) marks the few
  points whose running distance can change; only those get the exact float64 distance. Generous
  margins make the bound safe against every rounding error, so the picks are identical.
  (Compact blocks with centre + radius and triangle-inequality pruning were tried first: on real
  CNN features 80% of 64-point blocks stayed active at a 10% ratio, slower than ``dense``.)
"""
from __future__ import annotations

import math

import torch

from .runtime import cpu_threads

_ROWS = 64  # every matrix-vector product runs on a multiple of this many rows (see module doc)


def random_projection(features: torch.Tensor, dim: int, seed: int = 0,
                      dtype: torch.dtype = torch.float32, chunk: int = 16384) -> torch.Tensor:
    """[N, D] -> [N, dim] with a seeded Gaussian matrix scaled by 1/sqrt(dim) (``dtype`` result,
    computed in that dtype, in row chunks so a float64 copy of the features is never made).
    ``dim <= 0`` or ``dim >= D`` returns the features unprojected."""
    if dim <= 0 or dim >= features.shape[1]:
        return features.to(dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    proj = (torch.randn(features.shape[1], dim, generator=gen) / dim ** 0.5).to(features.device, dtype)
    out = torch.empty(features.shape[0], dim, dtype=dtype, device=features.device)
    for i in range(0, features.shape[0], chunk):
        torch.mm(features[i:i + chunk].to(dtype), proj, out=out[i:i + chunk])
    return out


def _projected(features: torch.Tensor, projection_dim: int, seed: int) -> tuple[torch.Tensor, int]:
    """float64 projection zero-padded to a multiple of _ROWS rows, and the real row count."""
    n = features.shape[0]
    x = random_projection(features, projection_dim, seed, dtype=torch.float64)
    pad = -n % _ROWS
    if pad:
        x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
    return x.contiguous(), n


def _start_distances(x: torch.Tensor, sqn: torch.Tensor, n: int, n_start: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    start = torch.randperm(n, generator=gen)[:n_start].to(x.device)
    d2 = (sqn[:, None] - 2 * x @ x[start].T + sqn[start][None, :]).clamp_min_(0)
    # mean Euclidean distance to the start points, kept squared from here on
    return d2.sqrt_().mean(dim=1).square_()


def _check(n: int, n_select: int) -> None:
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select={n_select} must be in [1, {n}]")


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128,
                   start_points: int = 10, seed: int = 0, progress: bool = False,
                   method: str = "auto", filter_dim: int = 32) -> torch.Tensor:
    """Indices (int64, on the features' device) of ``n_select`` rows picked greedily so that each
    pick is the row farthest from those already picked (approximate k-center).

    On CPU the selection loop runs on one thread (the projection before it uses all of them).
    ``method``: ``"auto"`` (``"filtered"`` on CPU for large inputs, else ``"dense"``), ``"dense"``
    or ``"filtered"``; all return the same indices as :func:`greedy_coreset_reference`."""
    n = features.shape[0]
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=features.device)
    if method not in ("auto", "dense", "filtered"):
        raise ValueError(f"method={method!r} must be 'auto', 'dense' or 'filtered'")
    x, n = _projected(features, projection_dim, seed)
    d = x.shape[1]
    if method == "auto":
        method = ("filtered" if features.device.type == "cpu" and n >= 8192 and d >= 2 * filter_dim
                  else "dense")
    sqn = (x * x).sum(dim=1)
    min_d2 = _start_distances(x, sqn, n, min(start_points, n), seed)
    min_d2[n:] = -math.inf  # padding rows are never picked
    steps = range(n_select)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="coreset", leave=False)
    # the loop is thousands of small dependent steps: one CPU thread (see runtime.cpu_threads)
    with cpu_threads(1 if x.device.type == "cpu" else None):
        if method == "filtered" and 0 < filter_dim < d:
            return _filtered(x, sqn, min_d2, n, steps, n_select, filter_dim)
        return _dense(x, sqn, min_d2, steps, n_select)


def _dense(x, sqn, min_d2, steps, n_select) -> torch.Tensor:
    picked = torch.empty(n_select, dtype=torch.long, device=x.device)
    d2 = torch.empty_like(min_d2)
    for i in steps:
        idx = torch.argmax(min_d2)
        picked[i] = idx
        c = x[idx]
        torch.mv(x, c, out=d2)
        # sqn - 2 t + |c|^2, rounded exactly like the reference (2 t is exact)
        torch.sub(sqn, d2, alpha=2, out=d2)
        d2.add_(sqn[idx])
        torch.minimum(min_d2, d2, out=min_d2)
    return picked


def _principal_filter(x: torch.Tensor, n: int, p: int, chunk: int = 16384) -> torch.Tensor:
    """[N, p + 1] float32 rows (y, rho): the centred row's coordinates on the top-``p`` principal
    axes and the norm of what is left. For any two rows |a - b|^2 >= |y_a - y_b|^2 +
    (rho_a - rho_b)^2 (orthogonal split + reverse triangle inequality), a lower bound that costs
    p + 1 float32 multiply-adds instead of d float64 ones. Padding rows are zero."""
    d = x.shape[1]
    mu = x[:n].mean(0)
    cov = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    for i in range(0, n, chunk):
        z = x[i:min(i + chunk, n)] - mu
        cov.addmm_(z.T, z)
    _, vecs = torch.linalg.eigh(cov)
    vp = vecs[:, -p:].contiguous()                    # top-p eigenvectors (order is irrelevant)
    out = torch.zeros(x.shape[0], p + 1, dtype=torch.float32, device=x.device)
    for i in range(0, n, chunk):
        z = x[i:min(i + chunk, n)] - mu
        y = z @ vp
        rho = (z - y @ vp.T).norm(dim=1, keepdim=True)
        out[i:i + z.shape[0]] = torch.cat([y, rho], 1)
    return out


def _round_up_f32(v: torch.Tensor) -> torch.Tensor:
    """float64 -> the smallest float32 >= v (so a float32 comparison never loses a candidate)."""
    r = v.float()
    return torch.where(r.double() < v, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def _filtered(x, sqn, min_d2, n, steps, n_select, p) -> torch.Tensor:
    """Same loop as :func:`_dense`. A cheap float32 lower bound (``_principal_filter``) finds
    the rows whose running distance could change; only those get the exact float64 distance.
    A row left out provably keeps its value (margins below cover every rounding error by
    orders of magnitude), so the running distances and hence the picks are the reference's."""
    dev = x.device
    y = _principal_filter(x, n, p)
    sqy = (y * y).sum(1)
    rel = 1e-4   # float32 error of |y_a|^2 - 2 y_a.y_b + |y_b|^2 is < (p + 3) 2^-23 (|y_a|^2 + |y_b|^2)
    assert (p + 3) * 2.0 ** -23 < rel / 10
    a = sqy * (1 - rel)
    # float64 error of the reference's |x|^2 - 2 x.c + |c|^2 is < ~1e-13 max|x|^2
    tol = 1e-9 * float(sqn[:n].max())
    thresh = _round_up_f32(min_d2 * (1 + 1e-9) + tol)   # -inf for padding rows
    picked = torch.empty(n_select, dtype=torch.long, device=dev)
    lb = torch.empty(x.shape[0], dtype=torch.float32, device=dev)
    for i in steps:
        idx = torch.argmax(min_d2)
        picked[i] = idx
        # lower bound (minus margin) of the squared distance of every row to the new pick
        torch.addmv(a, y, y[idx], alpha=-2.0, out=lb)
        lb.add_(a[idx])
        cand = torch.nonzero(lb < thresh).squeeze(1)
        m = cand.shape[0]
        pad = -m % _ROWS
        xc = x.index_select(0, cand)
        if pad:
            xc = torch.cat([xc, xc.new_zeros(pad, xc.shape[1])])
        t = torch.mv(xc, x[idx])[:m]
        d2 = torch.sub(sqn.index_select(0, cand), t, alpha=2).add_(sqn[idx])
        new = torch.minimum(min_d2.index_select(0, cand), d2)
        min_d2.index_copy_(0, cand, new)
        thresh.index_copy_(0, cand, _round_up_f32(new * (1 + 1e-9) + tol))
    return picked


def greedy_coreset_reference(features: torch.Tensor, n_select: int, projection_dim: int = 128,
                             start_points: int = 10, seed: int = 0) -> torch.Tensor:
    """Straightforward one-point-per-iteration version (as the official code writes it): a new
    distance column, a concatenation and a min per step. Kept for tests and the benchmark."""
    n = features.shape[0]
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=features.device)
    x, n = _projected(features, projection_dim, seed)
    sqn = (x * x).sum(dim=1)
    dist = _start_distances(x, sqn, n, min(start_points, n), seed)[:n].reshape(-1, 1)
    picked = []
    for _ in range(n_select):
        idx = int(torch.argmax(dist))
        picked.append(idx)
        new = (sqn - 2 * (x @ x[idx]) + sqn[idx])[:n].reshape(-1, 1)
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
