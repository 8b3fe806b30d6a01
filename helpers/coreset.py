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
* ``filtered`` (CPU default for large inputs): conservative tests find the few points whose
  running distance can change, and only those get the exact float64 distance (see
  :func:`_filtered`): a float32 lower bound of |x - c|^2 from the top-``filter_dim`` principal
  coordinates plus the norm of the rest, and, when it pays, Gonzalez clusters (a point whose
  running distance was set by pick s cannot change when |c - s|^2 >= 4 max(running distance in
  s's cluster)). Margins make both safe against every rounding error (>= 20x), so the picks
  are identical. Measured (benchmarks/RESULTS.md): ~5x faster than the reference on 47k real
  MobileNetV2 patches, ~28x on 172k WRN50 patches of synthetic parts, where clusters prune well.
  (Fixed blocks with centre + radius were tried first: on real CNN features 80% of 64-point
  blocks stayed active at a 10% ratio, slower than ``dense``.)
"""
from __future__ import annotations

import math

import torch

from .runtime import cpu_threads
from .runtime import progress as show_progress

_ROWS = 64  # every matrix-vector product runs on a multiple of this many rows (see module doc)


def _projection_matrix(d: int, dim: int, seed: int, device, dtype) -> torch.Tensor | None:
    """The seeded Gaussian matrix [d, dim] scaled by 1/sqrt(dim); None when no projection applies
    (``dim <= 0`` or ``dim >= d``: the features are used as they are)."""
    if dim <= 0 or dim >= d:
        return None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(d, dim, generator=gen) / dim ** 0.5).to(device, dtype)


def random_projection(features: torch.Tensor, dim: int, seed: int = 0,
                      dtype: torch.dtype = torch.float32, chunk: int = 16384) -> torch.Tensor:
    """[N, D] -> [N, dim] with a seeded Gaussian matrix scaled by 1/sqrt(dim) (``dtype`` result,
    computed in that dtype, in row chunks so a float64 copy of the features is never made).
    ``dim <= 0`` or ``dim >= D`` returns the features unprojected."""
    proj = Projection(features.shape[1], dim, seed, features.shape[0], features.device, dtype,
                      padded=False)
    proj.add(features, block_rows=chunk)
    return proj.result()[0]


class Projection:
    """The coreset's projection, filled block by block (the streaming fit adds one image's patches
    at a time): a preallocated [capacity + padding, dim] buffer whose rows after the last added
    one are zero. The same blocks give the same numbers whether the features arrive in a stream
    or from one tensor (the matrix product of a block depends only on that block)."""

    def __init__(self, in_dim: int, dim: int, seed: int, capacity: int, device=None,
                 dtype: torch.dtype = torch.float64, padded: bool = True):
        self.matrix = _projection_matrix(in_dim, dim, seed, device, dtype)
        self.dim = in_dim if self.matrix is None else dim
        self.capacity, self.n, self.padded = int(capacity), 0, padded
        self.buffer = torch.zeros(capacity + (_ROWS if padded else 0), self.dim, dtype=dtype,
                                  device=device)

    @classmethod
    def of_rows(cls, rows: torch.Tensor, device=None) -> "Projection":
        """A filled projection from rows already projected (a saved one)."""
        proj = cls(rows.shape[1], 0, 0, rows.shape[0], device, rows.dtype)
        proj.add(rows)
        return proj

    def add(self, rows: torch.Tensor, block_rows: int | None = None) -> None:
        """Append ``rows`` [k, in_dim], projected ``block_rows`` rows per matrix product (all at
        once when None)."""
        if block_rows is not None:
            for start in range(0, rows.shape[0], block_rows):
                self.add(rows[start:start + block_rows])
            return
        k = rows.shape[0]
        if self.n + k > self.capacity:
            raise ValueError(f"projection buffer holds {self.capacity} rows; got {self.n + k}")
        part = rows.to(self.buffer.device, self.buffer.dtype)
        if self.matrix is None:
            self.buffer[self.n:self.n + k] = part
        else:
            torch.mm(part, self.matrix, out=self.buffer[self.n:self.n + k])
        self.n += k

    def result(self) -> tuple[torch.Tensor, int]:
        """(rows [n + padding, dim] with zero padding rows, n); a view of the buffer."""
        pad = (-self.n % _ROWS or _ROWS) if self.padded else 0
        return self.buffer[:self.n + pad], self.n


def _projected(features: torch.Tensor, projection_dim: int, seed: int,
               block_rows: int = 16384) -> tuple[torch.Tensor, int]:
    """float64 projection zero-padded to a multiple of _ROWS rows (at least one zero row, row
    ``n``, which pads gathered row sets), and the real row count."""
    proj = Projection(features.shape[1], projection_dim, seed, features.shape[0], features.device)
    proj.add(features, block_rows=block_rows)
    return proj.result()


def _start_distances(x: torch.Tensor, sqn: torch.Tensor, n: int, n_start: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    start = torch.randperm(n, generator=gen)[:n_start].to(x.device)
    d2 = (sqn[:, None] - 2 * x @ x[start].T + sqn[start][None, :]).clamp_min_(0)
    # mean Euclidean distance to the start points, kept squared from here on
    return d2.sqrt_().mean(dim=1).square_()


def _check(n: int, n_select: int) -> None:
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select={n_select} must be in [1, {n}]")


def greedy_coreset(features: torch.Tensor | None, n_select: int, projection_dim: int = 128,
                   start_points: int = 10, seed: int = 0, progress: bool = False,
                   method: str = "auto", filter_dim: int = 32, *, block_rows: int = 16384,
                   projection: "Projection | None" = None) -> torch.Tensor:
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
        x, n = _projected(features, projection_dim, seed, block_rows)
    else:
        x, n = projection.result()
    _check(n, n_select)
    if n_select == n:
        return torch.arange(n, device=x.device)
    d = x.shape[1]
    if method == "auto":
        method = ("filtered" if x.device.type == "cpu" and n >= 8192 and d >= 2 * filter_dim
                  else "dense")
    sqn = (x * x).sum(dim=1)
    min_d2 = _start_distances(x, sqn, n, min(start_points, n), seed)
    min_d2[n:] = -math.inf  # padding rows are never picked
    steps = range(n_select)
    if progress:
        steps = show_progress(steps, total=n_select, desc="coreset", unit="pick")
    # the loop is thousands of small dependent steps: one CPU thread (see runtime.cpu_threads)
    with cpu_threads(1 if x.device.type == "cpu" else None):
        if method == "filtered" and 0 < filter_dim < d:
            return _filtered(x, sqn, min_d2, n, steps, n_select, filter_dim)
        return _dense(x, sqn, min_d2, steps, n_select)


def _dense(x, sqn, min_d2, steps, n_select) -> torch.Tensor:
    picked = torch.empty(n_select, dtype=torch.long, device=x.device)
    d2 = torch.empty_like(min_d2)
    for i in steps:
        idx = torch.argmax(min_d2).view(1)   # stays on the device: no host sync per pick
        picked[i:i + 1] = idx
        torch.mv(x, x.index_select(0, idx)[0], out=d2)
        # sqn - 2 t + |c|^2, rounded exactly like the reference (2 t is exact)
        torch.sub(sqn, d2, alpha=2, out=d2)
        d2.add_(sqn.index_select(0, idx))
        torch.minimum(min_d2, d2, out=min_d2)
    return picked


def _principal_filter(x: torch.Tensor, n: int, p: int, chunk: int = 16384) -> torch.Tensor:
    """[p + 1, N] float32 (transposed: a column per row of ``x``): the centred row's coordinates
    on the top-``p`` principal axes and the norm of what is left, rho. For any two rows
    |a - b|^2 >= |y_a - y_b|^2 + (rho_a - rho_b)^2 (orthogonal split + reverse triangle
    inequality), a lower bound that costs p + 1 float32 multiply-adds instead of d float64 ones.
    Stored transposed because MKL's gemv is ~2x faster that way. Padding rows are zero."""
    d = x.shape[1]
    mu = x[:n].mean(0)
    cov = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    for i in range(0, n, chunk):
        z = x[i:min(i + chunk, n)] - mu
        cov.addmm_(z.T, z)
    _, vecs = torch.linalg.eigh(cov)
    vp = vecs[:, -p:].contiguous()                    # top-p eigenvectors (order is irrelevant)
    out = torch.zeros(p + 1, x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, n, chunk):
        z = x[i:min(i + chunk, n)] - mu
        y = z @ vp
        rho = (z - y @ vp.T).norm(dim=1, keepdim=True)
        out[:, i:i + z.shape[0]] = torch.cat([y, rho], 1).T
    return out


def _f32_up(v: torch.Tensor) -> torch.Tensor:
    """float64 -> a float32 >= v (v + 1e-7 |v| rounds to nearest within 2^-24 |v|)."""
    return torch.where(v.isfinite(), v + v.abs() * 1e-7, v).float()


def _f32_down(v: torch.Tensor) -> torch.Tensor:
    """float64 -> a float32 <= v."""
    return torch.where(v.isfinite(), v - v.abs() * 1e-7, v).float()


def _filtered(x, sqn, min_d2, n, steps, n_select, p, full_pass_fraction: float = 0.25,
              refresh_every: int = 512) -> torch.Tensor:
    """Same loop as :func:`_dense`; only rows whose running distance can change get the exact
    float64 distance, so the running distances, hence the picks, are the reference's. Two
    conservative tests (float error margins cover every rounding by >= 20x) find those rows:

    1. clusters (Gonzalez): every row remembers the pick that set its running distance m_x
       (row "belongs" to that pick s; rows still at their start distance belong to none). With
       R_s >= max m_x over s's rows, no row of s can change when |c - s|^2 >= 4 R_s (triangle
       inequality). |c - s| is bounded below in the principal subspace (test 2's coordinates),
       one float32 product over the picks so far. On well-clustered features ~1-2% of the rows
       remain after a few hundred picks; on real CNN features of one texture it prunes little.
       It is used while it leaves at most ``full_pass_fraction`` of the rows (probed every 32
       picks otherwise).
    2. principal-subspace bound: |a - b|^2 >= |y_a - y_b|^2 + (rho_a - rho_b)^2. Row x passes
       when a_x + a_c - 2 (y_x.y_c + rho_x rho_c) < thr_x (a = (1 - rel) |(y, rho)|^2,
       thr_x = m_x + margin), i.e. when (y_x, rho_x, 1, g_x) . (y_c, rho_c, -a_c / 2, -1) > 0
       with g_x = (a_x - thr_x) / 2: a (p + 3)-float dot product per row, on the rows left by
       test 1 (gathered) or on all rows (one matrix-vector product)."""
    dev, n_pad = x.device, x.shape[0]
    yt = _principal_filter(x, n, p)                   # [p + 1, N]
    # float32 error of a (p + 3)-term product (and of storing y, rho, a/2 in float32) is
    # < (p + 3) 2^-23 of the sum of |terms|; the relative margins on a and g are >= 20 times
    # that. tol = 1e-9 max|x|^2 covers the float64 error of the reference's |x|^2 - 2 x.c + |c|^2
    # (< ~1e-13 max|x|^2) many times over.
    rel = max(1e-4, 20 * (p + 3) * 2.0 ** -23)
    a = (yt.double() ** 2).sum(0) * (1 - rel)
    tol = 1e-9 * float(sqn[:n].max())

    a_half = a * (0.5 - rel)                           # a >= 0

    def g_of(rows_a_half, rows_min_d2):
        # g <= (a - thr) / 2 - rel (|a| + |thr|) with thr = min_d2 (1 + 1e-9) + tol
        thr = rows_min_d2.mul(1 + 1e-9).add_(tol)
        return _f32_down(rows_a_half - thr.mul(0.5) - thr.abs().mul_(rel))

    g0 = g_of(a_half, min_d2.clamp_min(-1e300))
    g0[min_d2 == -math.inf] = math.inf                 # padding rows: never candidates
    cols = torch.cat([yt, torch.ones_like(yt[:1]), g0[None]])  # [p + 3, N]
    rows = cols.T.contiguous()                         # [N, p + 3], for gathering rows
    half_a = (a / 2).float()
    coef = torch.empty(p + 3, dtype=torch.float32, device=dev)
    coef[p + 2] = -1.0
    # clusters: owner[x] = 1 + pick number whose distance is min_d2[x]; 0 = start distance (always
    # tested), n_select + 1 = padding (never). active[] is indexed by owner.
    owner = torch.zeros(n_pad, dtype=torch.long, device=dev)
    owner[n:] = n_select + 1
    active = torch.zeros(n_select + 2, dtype=torch.bool, device=dev)
    active[0] = True
    pick_y = torch.empty(n_select, p + 1, dtype=torch.float32, device=dev)
    pick_half_a = torch.empty(n_select, dtype=torch.float32, device=dev)
    radius4 = torch.empty(n_select, dtype=torch.float32, device=dev)  # >= 4 (R_s + tol), rounded up
    picked = torch.empty(n_select, dtype=torch.long, device=dev)
    score = torch.empty(n_pad, dtype=torch.float32, device=dev)
    zero_row = torch.tensor([n], device=dev)          # x[n] is a zero padding row
    use_clusters = False   # test 1 only pays when it leaves few rows; probed every 32 picks
    for i in steps:
        idx = torch.argmax(min_d2).view(1)
        picked[i:i + 1] = idx
        yc = yt.index_select(1, idx)[:, 0]
        hc = half_a.index_select(0, idx)
        coef[:p + 1] = yc
        coef[p + 1:p + 2] = -hc
        cand = None
        if i and (use_clusters or i % 32 == 0):
            # test 1: lower bound (minus margin) of |c - s|^2 over the picks s so far
            lb = torch.mv(pick_y[:i], yc).mul_(-2).add_(pick_half_a[:i], alpha=2).add_(hc, alpha=2)
            torch.lt(lb, radius4[:i], out=active[1:i + 1])
            cand = torch.nonzero(active.index_select(0, owner)).squeeze(1)
            use_clusters = cand.shape[0] <= full_pass_fraction * n
        if use_clusters:
            cand = cand[torch.mv(rows.index_select(0, cand), coef) > 0]
        else:
            torch.mv(cols.T, coef, out=score)
            cand = torch.nonzero(score > 0).squeeze(1)
        pick_y[i] = yc
        pick_half_a[i:i + 1] = hc
        m = cand.shape[0]
        rows_p = torch.cat([cand, zero_row.expand(-m % _ROWS)])  # whole gemv blocks of rows
        t = torch.mv(x.index_select(0, rows_p), x.index_select(0, idx)[0])[:m]
        d2 = torch.sub(sqn.index_select(0, cand), t, alpha=2).add_(sqn.index_select(0, idx))
        moved = d2 < min_d2.index_select(0, cand)
        cand, d2 = cand[moved], d2[moved]             # rows whose running distance drops
        min_d2.index_copy_(0, cand, d2)
        g = g_of(a_half.index_select(0, cand), d2)
        cols[p + 2].index_copy_(0, cand, g)
        rows[:, p + 2].index_copy_(0, cand, g)
        owner.index_fill_(0, cand, i + 1)
        if d2.numel():
            radius4[i:i + 1] = _f32_up(d2.max().view(1).add(tol).mul_(4 * (1 + 1e-9)))
        else:
            radius4[i] = -math.inf
        if refresh_every and i % refresh_every == refresh_every - 1:
            # members only ever leave a cluster: recompute the radii exactly (tighter tests)
            rmax = torch.full((n_select + 2,), -math.inf, dtype=min_d2.dtype, device=dev)
            rmax.scatter_reduce_(0, owner[:n], min_d2[:n], "amax")
            radius4[:i + 1] = _f32_up(rmax[1:i + 2].add(tol).mul_(4 * (1 + 1e-9)))
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
