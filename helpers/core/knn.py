"""Exact nearest neighbours in the memory bank (notebook 04), in bounded memory: torch blocks of
at most ``memory_mb`` of distances, or faiss's flat index (``pip install faiss-cpu``). Distances:
``l2`` or ``1 - cos``; ``norm_floor`` (cosine) divides by ``|x| + norm_floor``, so weak vectors
(dark background, noisy direction) shrink towards the origin instead of looking far apart."""

from __future__ import annotations

import torch


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


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, n_queries: int | None = None) -> str:
    """``"auto"``: faiss for queries on the CPU when installed (1.4x faster than the torch blocks
    on real transistor, same metrics; benchmarks/RESULTS.md), else torch (GPU queries stay).
    Fewer than ``FAISS_MIN_QUERIES`` queries go to torch: faiss's path for them is 2-4x slower."""
    if backend != "auto":
        return backend
    few = n_queries is not None and n_queries < FAISS_MIN_QUERIES
    return "faiss" if device.type == "cpu" and not few and faiss_available() else "torch"


FAISS_MIN_QUERIES = 1024  # faiss 1.15, 16,384 x 288 rows: 150 queries 39 ms, torch 18 ms
