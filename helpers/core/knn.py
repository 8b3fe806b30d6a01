"""Nearest neighbours in the memory bank (notebook 04), in bounded memory: torch blocks of at most
``memory_mb`` of distances; the exact pruned search (:func:`knn_pruned`: principal-axis lower
bounds, then exact distances to the few rows they leave; the CPU default); faiss's flat index
(``pip install faiss-cpu``); or, on CPUs that multiply bf16 natively, bf16 candidates re-ranked by
their exact float32 distances (:func:`knn_bf16`). Distances: ``l2`` or ``1 - cos``;
``norm_floor`` (cosine) divides by ``|x| + norm_floor``, so weak vectors (dark background, noisy
direction) shrink towards the origin instead of looking far apart."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

BF16_CANDIDATES = 8  # rows re-ranked exactly per query by knn_bf16 (4 always sufficed on MVTec)
PRUNE_DIMS = 64  # principal axes of knn_pruned's bound (chosen on transistor, RESULTS.md)
PRUNE_REL = 1e-4  # knn_pruned's margin, relative to |low(q)|^2 + max |low(m)|^2
PRUNE_DENSE = 512  # a query with more candidate rows than this gets all its distances at once
CPU_GROUP_BLOCKS = 32  # knn_pruned on the CPU: blocks of queries whose candidates are held at once


def prepare(x: torch.Tensor, distance: str, norm_floor: float = 0.0) -> torch.Tensor:
    """The vectors whose squared Euclidean distances give ``distance`` (float32, last dim)."""
    x = x.float()
    if distance == "cosine":
        if norm_floor > 0:
            return x / (x.norm(dim=-1, keepdim=True) + norm_floor)
        x = torch.nn.functional.normalize(x, dim=-1)
    return x


def pair_distance(a: torch.Tensor, b: torch.Tensor, distance="l2", norm_floor=0.0) -> torch.Tensor:
    """Distance between rows of ``a`` and ``b`` (broadcast over leading dims), as kNN reports it."""
    d2 = ((prepare(a, distance, norm_floor) - prepare(b, distance, norm_floor)) ** 2).sum(-1)
    return finish(d2, distance)


def finish(d2: torch.Tensor, distance: str) -> torch.Tensor:
    """Squared distances of prepared vectors -> the distance (unit vectors: 1 - cos = d2 / 2)."""
    return d2.clamp_min(0).sqrt() if distance == "l2" else (d2 / 2).clamp_min(0)


def _check(queries: torch.Tensor, bank: torch.Tensor, k: int) -> None:
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        shapes = f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)}"
        raise ValueError(f"{shapes} must be 2-D with the same feature dimension")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k={k} must be in [1, bank size {bank.shape[0]}]")


def knn_torch(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, distance: str = "l2",
              memory_mb: int = 256, bank_sqn=None, norm_floor: float = 0.0) -> tuple:  # fmt: skip
    """(distances [Q, k] ascending, indices [Q, k]) of each query's k nearest bank rows."""
    _check(queries, bank, k)
    q, b = prepare(queries, distance, norm_floor), prepare(bank, distance, norm_floor)
    qn = (q * q).sum(1, keepdim=True)
    bn = (b * b).sum(1) if bank_sqn is None or distance == "cosine" else bank_sqn.float()
    budget = max(1, memory_mb * (1 << 20) // 4)
    # a query block and a bank block whose product fits the budget
    q_step = min(q.shape[0], max(1, budget // min(b.shape[0], 65536)))
    b_step = max(k, min(b.shape[0], budget // q_step))
    best_d = torch.empty(q.shape[0], k, device=q.device)
    best_i = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)
    for qs in range(0, q.shape[0], q_step):
        qq, qqn = q[qs : qs + q_step], qn[qs : qs + q_step]
        run_d = run_i = None
        for bs in range(0, b.shape[0], b_step):
            # |q|^2 - 2 q.b + |b|^2 for one [q_step, b_step] block (the only large temporary)
            d2 = torch.addmm(bn[bs : bs + b_step][None, :], qq, b[bs : bs + b_step].T, alpha=-2.0)
            d2.add_(qqn)
            if k == 1:
                vals, idx = d2.min(dim=1, keepdim=True)
            else:
                vals, idx = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
            del d2
            idx += bs
            if run_d is None:
                run_d, run_i = vals, idx
            elif k == 1:
                better = vals < run_d  # strict: the earlier bank row wins a tie, as in one block
                run_d, run_i = torch.where(better, vals, run_d), torch.where(better, idx, run_i)
            else:
                cat_d, cat_i = torch.cat([run_d, vals], 1), torch.cat([run_i, idx], 1)
                run_d, order = torch.topk(cat_d, k, dim=1, largest=False)
                run_i = torch.gather(cat_i, 1, order)
        best_d[qs : qs + q_step], best_i[qs : qs + q_step] = run_d, run_i
    return finish(best_d, distance), best_i


def faiss_index(bank: torch.Tensor, distance: str = "l2", norm_floor: float = 0.0):
    """An exact flat faiss index over ``bank`` prepared for ``distance`` (it copies the bank: build
    it once, as :class:`helpers.core.bank.MemoryBank` does, and pass it to :func:`knn_faiss`)."""
    import faiss

    b = prepare(bank, distance, norm_floor).detach().cpu().contiguous().numpy()
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(b)
    return index


def knn_faiss(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, distance: str = "l2",
              norm_floor: float = 0.0, index=None) -> tuple:  # fmt: skip
    """Same contract as :func:`knn_torch`, with an exact faiss flat index (``index``: one built
    by :func:`faiss_index` for this bank, distance and floor)."""
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        raise ImportError("knn_backend='faiss' needs faiss: pip install faiss-cpu (or use "
                          "knn_backend='torch')") from exc  # fmt: skip
    _check(queries, bank, k)
    q = prepare(queries, distance, norm_floor).detach().cpu().contiguous().numpy()
    if index is None:
        index = faiss_index(bank, distance, norm_floor)
    d2, idx = index.search(q, k)
    d = finish(torch.from_numpy(d2), distance)
    return d.to(queries.device), torch.from_numpy(idx).to(queries.device)


class Bf16Bank:
    """A bank prepared once for :func:`knn_bf16`: its rows for ``distance`` (float32), their mean,
    and in bf16 each centred row m with -|m|^2 / 2 appended, so that one matmul with [q, 1]
    gives q.m - |m|^2 / 2, the larger the nearer."""

    def __init__(self, bank: torch.Tensor, distance: str = "l2", norm_floor: float = 0.0):
        self.rows = prepare(bank, distance, norm_floor).contiguous()
        self.mean = self.rows.mean(0)
        centred = self.rows - self.mean  # centred: smaller products, smaller bf16 rounding
        half_sqn = (centred**2).sum(1, keepdim=True) / 2
        self.low = torch.cat([centred, -half_sqn], 1).to(torch.bfloat16)  # [M, D + 1]


def knn_bf16(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, distance: str = "l2",
             norm_floor: float = 0.0, memory_mb: int = 256, candidates: int = BF16_CANDIDATES,
             prepared: Bf16Bank | None = None) -> tuple:  # fmt: skip
    """Same contract as :func:`knn_torch`, for CPUs with native bf16 (AVX-512 BF16, AMX): each
    query's ``candidates`` nearest rows by one bf16 matmul of the centred vectors (the float32
    matmul's work at 2-2.5x its speed on such a CPU), then the exact float32 distances to those
    rows, of which the ``k`` smallest are returned. Every returned distance is the exact distance
    to the returned row: the search can only miss the nearest row, never report less than the
    true distance. On real MVTec patches 4 candidates always held the exact nearest row; 8 are
    taken (benchmarks/RESULTS.md). ``prepared``: :class:`Bf16Bank` of this bank, distance and
    floor (built here when None)."""
    _check(queries, bank, k)
    pb = prepared or Bf16Bank(bank, distance, norm_floor)
    q = prepare(queries, distance, norm_floor)
    m, d = pb.rows.shape
    c = min(candidates + k - 1, m)  # k + 7 by default: the k nearest and 7 to spare
    # a query block whose [block, M] bf16 products fit the budget and stay in cache (16 MB blocks:
    # 63-69 ms per 1,600 queries x 16,384 rows, 256 MB blocks: 77)
    step = max(1, min(q.shape[0], min(memory_mb, 16) * (1 << 20) // (2 * m)))
    best_d = torch.empty(q.shape[0], k, device=q.device)
    best_i = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)
    ones = torch.ones(min(step, q.shape[0]), 1, device=q.device)
    for s in range(0, q.shape[0], step):
        qq = q[s : s + step]
        lhs = torch.cat([qq - pb.mean, ones[: len(qq)]], 1).to(torch.bfloat16)
        cand = (lhs @ pb.low.T).topk(c, dim=1, sorted=False).indices  # largest q.m - |m|^2 / 2
        d2 = torch.empty(len(qq), c, device=q.device)
        part = max(1, (1 << 23) // (c * d))  # exact distances, 32 MB of differences at a time
        for r in range(0, len(qq), part):
            diff = pb.rows[cand[r : r + part]] - qq[r : r + part, None, :]
            d2[r : r + part] = diff.square_().sum(-1)
        vals, order = d2.topk(k, dim=1, largest=False)  # ascending
        best_d[s : s + step], best_i[s : s + step] = vals, cand.gather(1, order)
    return finish(best_d, distance), best_i


class PrunedBank:
    """A bank prepared once for :func:`knn_pruned`: its rows for ``distance`` (float32), their
    mean, the top-``dims`` principal axes of the centred rows, and each row's coordinates on them
    with the length of the rest (rho) appended: ``low`` [M, dims + 1] and its squared norms."""

    def __init__(self, bank: torch.Tensor, distance: str = "l2", norm_floor: float = 0.0,
                 dims: int = PRUNE_DIMS):  # fmt: skip
        self.rows = prepare(bank, distance, norm_floor).contiguous()
        self.mean = self.rows.mean(0)
        z = (self.rows - self.mean).double()
        axes = torch.linalg.eigh(z.T @ z)[1]  # ascending eigenvalues: the last are the top axes
        self.axes = axes[:, -min(dims, z.shape[1]) :].float().contiguous()
        low = self.low(self.rows)
        self.neg2_low_t, self.low_sqn = (-2.0 * low.T).contiguous(), (low * low).sum(1)
        self.sqn = (self.rows * self.rows).sum(1)
        self.scale = float(self.low_sqn.max())
        self._numpy = None

    def numpy_arrays(self) -> dict:
        """The CPU search's numpy views of these tensors (made once)."""
        if self._numpy is None:
            names = ("rows", "mean", "axes", "neg2_low_t", "low_sqn")
            self._numpy = {n: getattr(self, n).numpy() for n in names} | {"scale": self.scale}
        return self._numpy

    def subset(self, rows, taken: torch.Tensor | None = None) -> PrunedBank:
        """The same axes and mean (the bound holds for any), for the rows ``rows`` only
        (``taken``: ``self.rows[rows]``, when the caller has gathered it already)."""
        sub = copy.copy(self)
        sub.rows = self.rows[rows] if taken is None else taken
        sub.low_sqn, sub.sqn = self.low_sqn[rows], self.sqn[rows]
        sub.neg2_low_t = self.neg2_low_t[:, rows].contiguous()
        sub._numpy = None
        return sub

    def low(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared rows [N, D] -> [N, dims + 1]: (y, rho), y on the top axes, rho the length of the
        rest: |low(a) - low(b)|^2 <= |a - b|^2 (orthogonal split, reverse triangle on the rest)."""
        z = x - self.mean
        y = z @ self.axes
        return torch.cat([y, (z - y @ self.axes.T).norm(dim=1, keepdim=True)], 1)


def knn_pruned(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, distance: str = "l2",
               norm_floor: float = 0.0, memory_mb: int = 256,
               prepared: PrunedBank | None = None) -> tuple:  # fmt: skip
    """Same contract as :func:`knn_torch` for k = 1 (k > 1 goes to :func:`knn_torch`), the same
    nearest rows, with about a fifth of its multiply-adds: a lower bound of every distance from the
    rows' top principal coordinates (:class:`PrunedBank`, one small matrix product), the exact
    distance to the row with the smallest bound, then exact distances only to the rows whose bound
    is below that (plus a float32 rounding margin), a few dozen per query on MVTec patches. No row
    outside those can be nearer, so the result is exact; distances are summed differences.
    On the CPU the bounds are numpy's, one block of queries per thread (:func:`_candidates_cpu`)."""
    if k != 1:
        return knn_torch(queries, bank, k, distance=distance, memory_mb=memory_mb,
                         norm_floor=norm_floor)  # fmt: skip
    _check(queries, bank, k)
    pb = prepared or PrunedBank(bank, distance, norm_floor)
    q = prepare(queries, distance, norm_floor)
    m = pb.rows.shape[0]
    cpu = q.device.type == "cpu"
    # a [step, M] block of bounds stays in cache (on the CPU one per thread, sharing the L3)
    step = max(1, min(q.shape[0], min(memory_mb, 4 if cpu else 8) * (1 << 20) // (4 * m)))
    group = step * (CPU_GROUP_BLOCKS if cpu else 1)  # queries whose candidate pairs are held
    best_d = torch.empty(q.shape[0], 1, device=q.device)
    best_i = torch.empty(q.shape[0], 1, dtype=torch.long, device=q.device)
    for s in range(0, q.shape[0], group):
        qq, e = q[s : s + group], slice(s, s + group)
        first, qi, mi, heavy = (_candidates_cpu if cpu else _candidates_torch)(qq, pb, step)
        if heavy.any():  # a query the bound prunes badly (far from every row): all its distances
            rows_h = torch.nonzero(heavy).squeeze(1)
            _, i_h = knn_torch(qq[rows_h], pb.rows, 1, memory_mb=memory_mb, bank_sqn=pb.sqn)
            first[rows_h] = i_h[:, 0]
        d0 = (qq - pb.rows[first]).square_().sum(1)  # summed differences, as for every pair
        dist = torch.cat([d0, _row_distances(qq, pb.rows, qi, mi)])
        qi = torch.cat([torch.arange(len(qq), device=q.device), qi])
        mi = torch.cat([first, mi])
        near = torch.full((len(qq),), math.inf, device=q.device).scatter_reduce_(
            0, qi, dist, "amin"
        )
        hit = dist == near[qi]  # of equally near rows, the first (as the torch blocks report)
        idx = torch.full((len(qq),), m, device=q.device).scatter_reduce_(
            0, qi[hit], mi[hit], "amin"
        )
        best_d[e, 0], best_i[e, 0] = near, idx
    return finish(best_d, distance), best_i


def _candidates_torch(q: torch.Tensor, pb: PrunedBank, step: int) -> tuple:
    """(first [Q], qi, mi, heavy [Q]) for the queries ``q`` (one block; the GPU's path): ``first``
    the row with the smallest bound, (qi, mi) the pairs whose bound is below that row's exact
    distance, less the pairs of ``heavy`` queries (more than PRUNE_DENSE candidates: searched in
    full instead)."""
    low_q = pb.low(q)
    low_qn = (low_q * low_q).sum(1)
    bound = torch.addmm(pb.low_sqn[None], low_q, pb.neg2_low_t)  # bound - |low_q|^2
    first = bound.argmin(1)
    d0 = (q - pb.rows[first]).square_().sum(1)
    # float32 error of the bound |a|^2 + |b|^2 - 2 a.b (and of the projection) is far below
    limit = d0 + PRUNE_REL * (low_qn + pb.scale) - low_qn
    qi, mi = torch.nonzero(bound < limit[:, None], as_tuple=True)
    heavy = torch.bincount(qi, minlength=len(q)) > PRUNE_DENSE
    if heavy.any():
        keep = ~heavy[qi]
        qi, mi = qi[keep], mi[keep]
    return first, qi, mi, heavy


def _candidates_cpu(q: torch.Tensor, pb: PrunedBank, step: int) -> tuple:
    """:func:`_candidates_torch` for CPU queries, the same pairs up to float32 rounding (the
    margin covers it): numpy, blocks of ``step`` queries spread over ``torch.get_num_threads()``
    Python threads, each with a one-thread BLAS. Numpy lets go of the GIL in its products and
    reductions, so the threads run side by side; a multi-threaded BLAS here would leave its
    workers spinning against torch's OpenMP threads afterwards (RESULTS.md: 220 vs 87 ms/image)."""
    arrays = pb.numpy_arrays()
    qn = q.numpy()
    starts = range(0, len(qn), step)
    block = lambda s: _block_numpy(qn[s : s + step], arrays)
    with _one_blas_thread():
        n = min(torch.get_num_threads(), len(starts))
        parts = list(_pool(n).map(block, starts) if n > 1 else map(block, starts))
    first = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    qi = torch.from_numpy(np.concatenate([p[1] + s for p, s in zip(parts, starts)]))
    mi = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    heavy = torch.from_numpy(np.concatenate([p[3] for p in parts]))
    return first, qi, mi, heavy


def _block_numpy(qq: np.ndarray, a: dict) -> tuple:
    """One block of :func:`_candidates_cpu`: (first, qi, mi, heavy) in numpy."""
    z = qq - a["mean"]
    y = z @ a["axes"]
    rest = z - y @ a["axes"].T
    low_q = np.concatenate([y, np.sqrt(np.einsum("ij,ij->i", rest, rest))[:, None]], 1)
    low_qn = np.einsum("ij,ij->i", low_q, low_q)
    bound = low_q @ a["neg2_low_t"]
    bound += a["low_sqn"]  # bound - |low_q|^2
    first = bound.argmin(1)
    diff = qq - a["rows"][first]
    d0 = np.einsum("ij,ij->i", diff, diff)
    limit = d0 + PRUNE_REL * (low_qn + a["scale"]) - low_qn
    qi, mi = np.divmod(np.flatnonzero(bound < limit[:, None]), bound.shape[1])
    heavy = np.bincount(qi, minlength=len(qq)) > PRUNE_DENSE
    if heavy.any():
        keep = ~heavy[qi]
        qi, mi = qi[keep], mi[keep]
    return first, qi, mi, heavy


_POOLS: dict = {}
_BLAS = []


def _pool(n: int):
    """A lasting pool of ``n`` worker threads (one per CPU thread torch may use)."""
    if n not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[n] = ThreadPoolExecutor(n, thread_name_prefix="knn")
    return _POOLS[n]


def _one_blas_thread():
    """numpy's BLAS limited to one thread for the block (threadpoolctl, which scikit-learn
    installs; the controller that finds the BLAS libraries is made once)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _row_distances(q, rows, qi, mi, part: int = 4096) -> torch.Tensor:
    """|q[qi] - rows[mi]|^2 for each pair, ``part`` pairs at a time (index_select and an in-place
    difference: ~3x the speed of ``q[qi] - rows[mi]``, the same sums)."""
    out = torch.empty(len(qi), device=q.device)
    for s in range(0, len(qi), part):
        diff = torch.index_select(q, 0, qi[s : s + part])
        diff.sub_(torch.index_select(rows, 0, mi[s : s + part]))
        out[s : s + part] = diff.square_().sum(1)
    return out


def bf16_native() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"``, for queries on the CPU: bf16 candidates + exact re-rank where the CPU has native
    bf16, else the exact pruned search (on a 2-core AVX2 CPU, with eq. 7, 56 ms per 1,600-patch
    image on transistor against faiss's 131 and the torch blocks' 169, on tire 15 against 40 and
    37; 3x the torch blocks for 32 queries; benchmarks/RESULTS.md); GPU queries stay on torch."""
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    return "bf16" if bf16_native() else "pruned"
