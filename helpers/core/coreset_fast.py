"""The greedy loop of :mod:`helpers.core.coreset` (notebook 03), exact and fast: both return the
indices of ``greedy_coreset_reference`` (tests/test_coreset_fast.py). :func:`dense` (CUDA): one
fused float64 matrix-vector product per pick, no host sync. :func:`filtered` (CPU, large inputs):
conservative float32 tests find the few rows whose running distance can change, and only those
get the exact distance; 16.7x faster than ``dense`` for a 220-image WRN50 fit on 2 CPU cores, and
the cascade with numpy's argmax / flatnonzero another 1.6x (benchmarks/RESULTS.md, issue 23).
"""

from __future__ import annotations

import math

import numpy as np
import torch

ROWS = 64  # every matrix-vector product runs on a multiple of this many rows (see module doc)


def dense(x, sqn, min_d2, steps, n_select) -> torch.Tensor:
    """One fused float64 matrix-vector product over all points per pick (CUDA default). Everything
    stays on the device: no host synchronisation per step."""
    picked = torch.empty(n_select, dtype=torch.long, device=x.device)
    d2 = torch.empty_like(min_d2)
    for i in steps:
        idx = torch.argmax(min_d2).view(1)  # stays on the device: no host sync per pick
        picked[i : i + 1] = idx
        torch.mv(x, x.index_select(0, idx)[0], out=d2)
        # sqn - 2 t + |c|^2, rounded exactly like the reference (2 t is exact)
        torch.sub(sqn, d2, alpha=2, out=d2)
        d2.add_(sqn.index_select(0, idx))
        torch.minimum(min_d2, d2, out=min_d2)
    return picked


def _principal_filter(x: torch.Tensor, n: int, p: int, q: int, chunk: int = 16384) -> tuple:
    """([p + 1, N], [q + 1, N]) float32 (transposed: a column per row of ``x``): the centred row's
    coordinates on the top-``p`` (top-``q``) principal axes and the norm of what is left, rho.
    For any two rows |a - b|^2 >= |y_a - y_b|^2 + (rho_a - rho_b)^2 (orthogonal split + reverse
    triangle inequality), a lower bound that costs p + 1 float32 multiply-adds instead of d
    float64 ones; the q-split bound is weaker and cheaper, and both splits share |(y, rho)|^2.
    Stored transposed because MKL's gemv is ~2x faster that way. Padding rows are zero."""
    d = x.shape[1]
    mu = x[:n].mean(0)
    cov = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    for i in range(0, n, chunk):
        z = x[i : min(i + chunk, n)] - mu
        cov.addmm_(z.T, z)
    _, vecs = torch.linalg.eigh(cov)
    vp = vecs[:, -p:].contiguous()  # top-p eigenvectors, ascending: the last q are the top q
    out = torch.zeros(p + 1, x.shape[0], dtype=torch.float32, device=x.device)
    out_q = torch.zeros(q + 1, x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, n, chunk):
        z = x[i : min(i + chunk, n)] - mu
        y = z @ vp
        rho = (z - y @ vp.T).norm(dim=1, keepdim=True)
        out[:, i : i + z.shape[0]] = torch.cat([y, rho], 1).T
        rho_q = torch.cat([y[:, : p - q], rho], 1).norm(dim=1, keepdim=True)
        out_q[:, i : i + z.shape[0]] = torch.cat([y[:, p - q :], rho_q], 1).T
    return out, out_q


def _argmax(v: torch.Tensor):
    """A function returning argmax(v) as a 1-element tensor, the first of equal maxima, like
    torch.argmax (numpy's on the CPU: ~10x faster for a float64 vector)."""
    if v.device.type == "cpu":
        a = v.numpy()
        return lambda: torch.tensor([int(a.argmax())])
    return lambda: torch.argmax(v).view(1)


def _positive(v: torch.Tensor) -> torch.Tensor:
    """Indices where v > 0 (numpy's flatnonzero on the CPU: 4-10x faster than torch.nonzero)."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(v.numpy() > 0))
    return torch.nonzero(v > 0).squeeze(1)


def _f32_up(v: torch.Tensor) -> torch.Tensor:
    """float64 -> a float32 >= v (v + 1e-7 |v| rounds to nearest within 2^-24 |v|)."""
    return torch.where(v.isfinite(), v + v.abs() * 1e-7, v).float()


def _f32_down(v: torch.Tensor) -> torch.Tensor:
    """float64 -> a float32 <= v."""
    return torch.where(v.isfinite(), v - v.abs() * 1e-7, v).float()


def filtered(x, sqn, min_d2, n, steps, n_select, p, full_pass_fraction: float = 0.25,
             refresh_every: int = 512, q: int = 12) -> torch.Tensor:  # fmt: skip
    """Same loop as :func:`dense`; only rows whose running distance can change get the exact
    float64 distance. Two conservative tests find them:

    1. clusters (Gonzalez): a row belongs to the pick s that set its running distance m_x; with
       R_s >= max m_x over s's rows, none of them can change when |c - s|^2 >= 4 R_s. Used while
       it leaves at most ``full_pass_fraction`` of the rows (probed every 32 picks otherwise).
    2. principal-subspace bound |a - b|^2 >= |y_a - y_b|^2 + (rho_a - rho_b)^2: row x passes
       when (y_x, rho_x, 1, g_x) . (y_c, rho_c, -a_c / 2, -1) > 0 with g_x = (a_x - thr_x) / 2,
       a = (1 - rel) |(y, rho)|^2 and thr_x = m_x + margin: a (p + 3)-float dot product per row.
       Without test 1 it runs as a cascade: first the same test on the top-``q`` split over all
       rows (q + 3 floats a row, a third of the memory traffic), then the p-split test on the few
       rows that pass (the q-split bound is never larger: it rejects only rows p rejects)."""
    state = _Filter(x, sqn, min_d2, n, n_select, p, full_pass_fraction, min(q, p))
    farthest = _argmax(min_d2)
    for i in steps:
        idx = farthest()
        state.picked[i : i + 1] = idx
        cand = state.candidates(i, idx)
        state.update(i, idx, cand)
        if refresh_every and i % refresh_every == refresh_every - 1:
            state.refresh_radii(i)
    return state.picked


def _g_bound(rows_a_half, rows_min_d2, tol: float, rel: float) -> torch.Tensor:
    """g <= (a - thr) / 2 - rel (|a| + |thr|) with thr = min_d2 (1 + 1e-9) + tol (float32)."""
    thr = rows_min_d2.mul(1 + 1e-9).add_(tol)
    return _f32_down(rows_a_half - thr.mul(0.5) - thr.abs().mul_(rel))


class _Filter:
    """The working arrays of :func:`filtered` and its three steps per pick."""

    def __init__(self, x, sqn, min_d2, n, n_select, p, full_pass_fraction, q):
        dev, n_pad = x.device, x.shape[0]
        self.x, self.sqn, self.min_d2 = x, sqn, min_d2
        self.n, self.n_select, self.p, self.q = n, n_select, p, q
        self.full_pass_fraction = full_pass_fraction
        self.yt, yq = _principal_filter(x, n, p, q)  # [p + 1, N], [q + 1, N]
        yt = self.yt
        # float32 error of a (p + 3)-term product (and of storing y, rho, a/2 in float32) is
        # < (p + 3) 2^-23 of the sum of |terms|; the relative margins on a and g are >= 20 times
        # that. tol = 1e-9 max|x|^2 covers the float64 error of the reference's
        # |x|^2 - 2 x.c + |c|^2 (< ~1e-13 max|x|^2) many times over.
        self.rel = rel = max(1e-4, 20 * (p + 3) * 2.0**-23)
        a = (yt.double() ** 2).sum(0) * (1 - rel)
        self.tol = 1e-9 * float(sqn[:n].max())
        self.a_half = a * (0.5 - rel)  # a >= 0
        g0 = _g_bound(self.a_half, min_d2.clamp_min(-1e300), self.tol, rel)
        g0[min_d2 == -math.inf] = math.inf  # padding rows: never candidates
        self.yq = yq
        self.cols = torch.cat([yq, torch.ones_like(yq[:1]), g0[None]])  # [q + 3, N]: all rows
        self.rows = torch.cat([yt, torch.ones_like(yt[:1]), g0[None]]).T.contiguous()  # [N, p + 3]
        self.half_a = (a / 2).float()
        self.coef = torch.empty(p + 3, dtype=torch.float32, device=dev)
        self.coef[p + 2] = -1.0
        self.coef_q = torch.empty(q + 3, dtype=torch.float32, device=dev)
        self.coef_q[q + 2] = -1.0
        # clusters: owner[x] = 1 + pick number whose distance is min_d2[x]; 0 = start distance
        # (always tested), n_select + 1 = padding (never). active[] is indexed by owner.
        self.owner = torch.zeros(n_pad, dtype=torch.long, device=dev)
        self.owner[n:] = n_select + 1
        self.active = torch.zeros(n_select + 2, dtype=torch.bool, device=dev)
        self.active[0] = True
        self.pick_y = torch.empty(n_select, p + 1, dtype=torch.float32, device=dev)
        self.pick_half_a = torch.empty(n_select, dtype=torch.float32, device=dev)
        # >= 4 (R_s + tol), rounded up
        self.radius4 = torch.empty(n_select, dtype=torch.float32, device=dev)
        self.picked = torch.empty(n_select, dtype=torch.long, device=dev)
        self.score = torch.empty(n_pad, dtype=torch.float32, device=dev)
        self.zero_row = torch.tensor([n], device=dev)  # x[n] is a zero padding row
        self.use_clusters = False  # test 1 only pays when it leaves few rows; probed every 32 picks

    def candidates(self, i: int, idx: torch.Tensor) -> torch.Tensor:
        """Rows whose running distance may drop with pick ``idx`` (tests 1 and 2)."""
        p = self.p
        yc = self.yt.index_select(1, idx)[:, 0]
        hc = self.half_a.index_select(0, idx)
        self.coef[: p + 1] = yc
        self.coef[p + 1 : p + 2] = -hc
        self.coef_q[: self.q + 1] = self.yq.index_select(1, idx)[:, 0]
        self.coef_q[self.q + 1 : self.q + 2] = -hc
        cand = None
        if i and (self.use_clusters or i % 32 == 0):
            # test 1: lower bound (minus margin) of |c - s|^2 over the picks s so far
            lb = (
                torch.mv(self.pick_y[:i], yc)
                .mul_(-2)
                .add_(self.pick_half_a[:i], alpha=2)
                .add_(hc, alpha=2)
            )
            torch.lt(lb, self.radius4[:i], out=self.active[1 : i + 1])
            cand = torch.nonzero(self.active.index_select(0, self.owner)).squeeze(1)
            self.use_clusters = cand.shape[0] <= self.full_pass_fraction * self.n
        if not self.use_clusters:  # the q-split test over all rows
            torch.mv(self.cols.T, self.coef_q, out=self.score)
            cand = _positive(self.score)
        cand = cand[_positive(torch.mv(self.rows.index_select(0, cand), self.coef))]
        self.pick_y[i] = yc
        self.pick_half_a[i : i + 1] = hc
        return cand

    def update(self, i: int, idx: torch.Tensor, cand: torch.Tensor) -> None:
        """The exact float64 distance to pick ``idx`` for ``cand``; lower what drops."""
        x, sqn, min_d2, p = self.x, self.sqn, self.min_d2, self.p
        m = cand.shape[0]
        rows_p = torch.cat([cand, self.zero_row.expand(-m % ROWS)])  # whole gemv blocks of rows
        t = torch.mv(x.index_select(0, rows_p), x.index_select(0, idx)[0])[:m]
        d2 = torch.sub(sqn.index_select(0, cand), t, alpha=2).add_(sqn.index_select(0, idx))
        moved = _positive(min_d2.index_select(0, cand).sub_(d2))  # d2 < the running distance
        cand, d2 = cand[moved], d2[moved]  # rows whose running distance drops
        min_d2.index_copy_(0, cand, d2)
        g = _g_bound(self.a_half.index_select(0, cand), d2, self.tol, self.rel)
        self.cols[self.q + 2].index_copy_(0, cand, g)
        self.rows[:, p + 2].index_copy_(0, cand, g)
        self.owner.index_fill_(0, cand, i + 1)
        if d2.numel():
            self.radius4[i : i + 1] = _f32_up(d2.max().view(1).add(self.tol).mul_(4 * (1 + 1e-9)))
        else:
            self.radius4[i] = -math.inf

    def refresh_radii(self, i: int) -> None:
        """Members only ever leave a cluster: recompute the radii exactly (tighter tests)."""
        n = self.n
        rmax = torch.full(
            (self.n_select + 2,), -math.inf, dtype=self.min_d2.dtype, device=self.min_d2.device
        )
        rmax.scatter_reduce_(0, self.owner[:n], self.min_d2[:n], "amax")
        self.radius4[: i + 1] = _f32_up(rmax[1 : i + 2].add(self.tol).mul_(4 * (1 + 1e-9)))
