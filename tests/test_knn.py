import pytest
import torch

from helpers.core.knn import knn_torch, pair_distance


def brute(q, b, k, distance):
    if distance == "cosine":
        d = 1 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    else:
        d = torch.cdist(q.double(), b.double()).float()
    return torch.topk(d, k, dim=1, largest=False)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("memory_mb", [1, 256])
def test_chunked_knn_equals_brute_force(distance, k, memory_mb):
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(700, 48, generator=g), torch.randn(3000, 48, generator=g)
    d, i = knn_torch(q, b, k, distance=distance, memory_mb=memory_mb)
    bd, bi = brute(q, b, k, distance)
    assert torch.allclose(d, bd, atol=1e-4)
    # indices agree except where two bank rows are (numerically) equally near
    same = (i == bi) | torch.isclose(d, bd, atol=1e-4)
    assert same.all()


def test_tiny_budget_forces_many_blocks_and_still_agrees():
    q, b = torch.randn(50, 8), torch.randn(1000, 8)
    d, i = knn_torch(q, b, 3, memory_mb=1)
    bd, _ = brute(q, b, 3, "l2")
    assert torch.allclose(d, bd, atol=1e-5)


def test_exact_match_has_zero_distance():
    b = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    d, i = knn_torch(b[[5, 17]], b)
    # |q|^2 - 2 q.b + |b|^2 in float32 cancels to ~eps*|q|^2, i.e. a distance of ~sqrt(eps)*|q|
    assert torch.allclose(d[:, 0], torch.zeros(2), atol=1e-2)
    assert i[:, 0].tolist() == [5, 17]


def test_bad_inputs():
    with pytest.raises(ValueError, match="same feature dimension"):
        knn_torch(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="k=9"):
        knn_torch(torch.randn(3, 4), torch.randn(5, 4), k=9)


def _floor_brute(q, b, k, floor):
    """Cosine with a norm floor, written out in float64: |p(q) - p(b)|^2 / 2,
    p(x) = x / (|x| + floor)."""
    pq = q.double() / (q.double().norm(dim=1, keepdim=True) + floor)
    pb = b.double() / (b.double().norm(dim=1, keepdim=True) + floor)
    d = torch.cdist(pq, pb) ** 2 / 2
    return torch.topk(d.float(), k, dim=1, largest=False)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("memory_mb", [1, 256])
def test_cosine_with_norm_floor_equals_brute_force(k, memory_mb):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(400, 32, generator=g) * torch.rand(400, 1, generator=g) * 3
    b = torch.randn(2000, 32, generator=g) * torch.rand(2000, 1, generator=g) * 3
    d, i = knn_torch(q, b, k, distance="cosine", memory_mb=memory_mb, norm_floor=2.0)
    bd, bi = _floor_brute(q, b, k, 2.0)
    assert torch.allclose(d, bd, atol=1e-4)
    assert ((i == bi) | torch.isclose(d, bd, atol=1e-4)).all()


def test_norm_floor_zero_is_plain_cosine_and_pair_distance_agrees():
    g = torch.Generator().manual_seed(2)
    q, b = torch.randn(60, 16, generator=g), torch.randn(300, 16, generator=g)
    d0, i0 = knn_torch(q, b, 3, distance="cosine")
    d1, i1 = knn_torch(q, b, 3, distance="cosine", norm_floor=0.0)
    assert torch.equal(d0, d1) and torch.equal(i0, i1)
    cos = 1 - torch.nn.functional.cosine_similarity(q[:, None], b[i0], dim=-1)
    assert torch.allclose(pair_distance(q[:, None], b[i0], "cosine"), cos, atol=1e-5)
    assert torch.allclose(pair_distance(q[:, None], b[i0], "cosine"), d0, atol=1e-4)
    d2, i2 = knn_torch(q, b, 2, distance="cosine", norm_floor=0.5)
    assert torch.allclose(pair_distance(q[:, None], b[i2], "cosine", 0.5), d2, atol=1e-4)
    assert torch.allclose(
        pair_distance(q[:, None], b[i2[:, :1]], "l2")[:, 0],
        torch.cdist(q, b[i2[:, 0]]).diagonal(),
        atol=1e-4,
    )


def test_norm_floor_damps_weak_vectors_but_keeps_strong_ones_cosine_like():
    g = torch.Generator().manual_seed(3)
    weak_a, weak_b = 1e-3 * torch.randn(1, 64, generator=g), 1e-3 * torch.randn(1, 64, generator=g)
    # two weak vectors in unrelated directions: far apart for cosine, close with a floor
    assert float(pair_distance(weak_a, weak_b, "cosine")) > 0.5
    # ... with a floor they are compared almost as L2 scaled by 1 / floor: |a - b|^2 / 2
    expected = float(((weak_a - weak_b) ** 2).sum()) / 2
    assert expected < 1e-4
    assert float(pair_distance(weak_a, weak_b, "cosine", norm_floor=1.0)) == pytest.approx(
        expected, rel=0.05
    )
    strong_a, strong_b = (
        1e3 * torch.randn(1, 64, generator=g),
        1e3 * torch.randn(1, 64, generator=g),
    )
    plain = float(pair_distance(strong_a, strong_b, "cosine"))
    assert float(pair_distance(strong_a, strong_b, "cosine", norm_floor=1.0)) == pytest.approx(
        plain, rel=1e-2
    )
    # scaling queries, bank and floor together changes nothing
    q, b = torch.randn(20, 8, generator=g), torch.randn(50, 8, generator=g)
    d, i = knn_torch(q, b, 2, distance="cosine", norm_floor=0.7)
    d5, i5 = knn_torch(5 * q, 5 * b, 2, distance="cosine", norm_floor=3.5)
    assert torch.allclose(d, d5, atol=1e-5) and torch.equal(i, i5)


def test_faiss_matches_torch_with_a_norm_floor():
    pytest.importorskip("faiss")
    from helpers.core.knn import knn_faiss

    g = torch.Generator().manual_seed(4)
    q, b = torch.randn(100, 24, generator=g), torch.randn(500, 24, generator=g)
    d, i = knn_torch(q, b, 3, distance="cosine", norm_floor=1.5)
    fd, fi = knn_faiss(q, b, 3, distance="cosine", norm_floor=1.5)
    assert torch.allclose(d, fd, atol=1e-4)
    assert ((i == fi) | torch.isclose(d, fd, atol=1e-4)).all()


def test_auto_backend_is_the_pruned_search_on_a_cpu_without_native_bf16(monkeypatch):
    from helpers.core import knn as knn_module
    from helpers.core.bank import MemoryBank

    monkeypatch.setattr(knn_module, "bf16_native", lambda: False)  # a CPU without native bf16
    q, b = _clustered(n_bank=1500, n_query=300, dim=32, seed=1)
    assert knn_module.resolve_backend("auto", q.device) == "pruned"
    assert knn_module.resolve_backend("torch", q.device) == "torch"
    assert knn_module.resolve_backend("faiss", q.device) == "faiss"  # asked for: kept
    assert knn_module.resolve_backend("auto", torch.device("cuda")) == "torch"
    d_auto, i_auto = MemoryBank(b, backend="auto").nearest(q, 1)
    d_torch, i_torch = MemoryBank(b, backend="torch").nearest(q, 1)
    assert torch.equal(i_auto, i_torch)
    torch.testing.assert_close(d_auto, d_torch, rtol=1e-4, atol=1e-4)  # the torch blocks' rounding
    torch.testing.assert_close(d_auto[:, 0], _exact(q, b)[0], rtol=1e-5, atol=1e-6)  # summed diffs


def test_faiss_and_torch_give_the_same_neighbours_and_distances():
    pytest.importorskip("faiss")
    from helpers.core.knn import knn_faiss

    torch.manual_seed(0)
    q, b = torch.randn(400, 64).abs(), torch.randn(3000, 64).abs()
    for distance in ("l2", "cosine"):
        td, ti = knn_torch(q, b, 1, distance=distance)
        fd, fi = knn_faiss(q, b, 1, distance=distance)
        assert (ti == fi).float().mean() > 0.999  # ties aside, the same row
        torch.testing.assert_close(fd, td, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bf16 candidates, exact re-rank
def _clustered(n_bank=4000, n_query=600, dim=64, seed=0):
    """Bank rows around 200 centres and queries near bank rows: like patch features, every query
    has a clear nearest row, far above bf16's rounding."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(200, dim, generator=g) * 3
    which = torch.randint(0, 200, (n_bank,), generator=g)
    bank = centres[which] + torch.randn(n_bank, dim, generator=g)
    near = bank[torch.randint(0, n_bank, (n_query,), generator=g)]
    return near + 0.3 * torch.randn(n_query, dim, generator=g), bank


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("memory_mb", [1, 256])
def test_bf16_candidates_give_the_exact_neighbours_of_clustered_rows(distance, k, memory_mb):
    from helpers.core.knn import knn_bf16

    q, b = _clustered()
    d, i = knn_bf16(q, b, k, distance=distance, memory_mb=memory_mb)
    bd, bi = brute(q, b, k, distance)
    torch.testing.assert_close(d, bd, rtol=1e-4, atol=1e-5)  # float32 rounding, not bf16's
    assert ((i == bi) | torch.isclose(d, bd, atol=1e-5)).all()


def test_bf16_reports_exact_distances_to_the_rows_it_returns_and_never_less_than_the_nearest():
    """Gaussian rows are the hard case (every row almost equally far): the candidates may miss the
    nearest row, but each reported distance is the true distance to the reported row, >= the
    nearest distance; with as many candidates as rows the search is exact."""
    from helpers.core.knn import knn_bf16

    g = torch.Generator().manual_seed(1)
    q, b = torch.randn(300, 96, generator=g), torch.randn(2000, 96, generator=g)
    d, i = knn_bf16(q, b, 2, candidates=4)
    true = pair_distance(q[:, None], b[i])  # [300, 2], in float32
    torch.testing.assert_close(d, true, rtol=1e-5, atol=1e-5)
    bd, _ = brute(q, b, 2, "l2")
    assert (d >= bd - 1e-4).all() and (d[:, 1] >= d[:, 0]).all()
    d_all, i_all = knn_bf16(q, b, 2, candidates=len(b))
    torch.testing.assert_close(d_all, bd, rtol=1e-4, atol=1e-5)


def test_bf16_bad_inputs_are_the_same_errors():
    from helpers.core.knn import knn_bf16

    with pytest.raises(ValueError, match="same feature dimension"):
        knn_bf16(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="k=9"):
        knn_bf16(torch.randn(3, 4), torch.randn(5, 4), k=9)


def test_auto_backend_is_bf16_where_the_cpu_has_it(monkeypatch):
    from helpers.core import knn as knn_module
    from helpers.core.bank import MemoryBank

    cpu = torch.device("cpu")
    monkeypatch.setattr(knn_module, "bf16_native", lambda: True)
    assert knn_module.resolve_backend("auto", cpu) == "bf16"
    assert knn_module.resolve_backend("auto", torch.device("cuda")) == "torch"
    assert knn_module.resolve_backend("faiss", cpu) == "faiss"  # asked for: kept
    monkeypatch.setattr(knn_module, "bf16_native", lambda: False)
    assert knn_module.resolve_backend("auto", cpu) == "pruned"
    q, b = _clustered(n_query=1024)
    bank = MemoryBank(b, backend="bf16")
    d, i = bank.nearest(q, 3)
    td, ti = MemoryBank(b, backend="torch").nearest(q, 3)
    torch.testing.assert_close(d, td, rtol=1e-4, atol=1e-4)
    head = bank.head(100)  # its own prepared rows, not the whole bank's
    hd, hi = head.nearest(q, 1)
    assert hi.max() < 100
    torch.testing.assert_close(hd, brute(q, b[:100], 1, "l2")[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ pruned: bounds, then exact
def _exact(q, b, distance="l2"):
    """Nearest row by every difference written out in float64 (ties: the first row)."""
    if distance == "cosine":
        q, b = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(b, dim=1)
    d2 = torch.cdist(q.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    v, i = d2.min(dim=1)
    return (v.sqrt() if distance == "l2" else v / 2).float(), i


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("memory_mb, dims", [(1, 8), (256, 64), (256, 200)])
def test_pruned_search_finds_the_exact_nearest_row(distance, memory_mb, dims):
    """Clustered rows (a bound that prunes) and uniform ones (a bound that keeps many rows), few
    and many principal axes, small and large blocks: always the brute-force nearest row."""
    from helpers.core.knn import PrunedBank, knn_pruned

    for q, b in (
        _clustered(n_bank=3000, n_query=500, dim=96),
        (torch.randn(300, 96), torch.randn(2000, 96)),
    ):
        pb = PrunedBank(b, distance, dims=dims)
        d, i = knn_pruned(q, b, 1, distance=distance, memory_mb=memory_mb, prepared=pb)
        ed, ei = _exact(q, b, distance)
        assert torch.equal(i[:, 0], ei)
        torch.testing.assert_close(d[:, 0], ed, rtol=1e-5, atol=1e-6)


def test_pruned_search_on_the_cpu_threads_is_the_single_block_torch_search(monkeypatch):
    """The CPU's numpy blocks (one per worker thread, many blocks per group, many groups; a query
    that keeps too many rows searched in full) give the same rows and the same distances, bit for
    bit, as the torch path, as one thread and as one block, and leave numpy's BLAS threads as they
    were."""
    from threadpoolctl import threadpool_info

    from helpers.core import knn

    g = torch.Generator().manual_seed(5)
    q, b = _clustered(n_bank=3000, n_query=700, dim=64, seed=4)
    q[:40], b[:1000] = 3 * torch.randn(40, 64, generator=g), 3 * torch.randn(1000, 64, generator=g)
    pb = knn.PrunedBank(b, dims=8)  # a loose bound: 76 queries keep more than PRUNE_DENSE rows
    assert knn._candidates_cpu(q, pb, 87)[3].sum() > 0
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    def torch_blocks(queries, bank, step):  # the GPU's path, run on the CPU
        return knn._candidates_torch(queries, bank, step)

    whole = knn.knn_pruned(q, b, 1, prepared=pb)  # one block, one group
    monkeypatch.setattr(knn, "CPU_GROUP_BLOCKS", 3)  # 1 MB blocks of 87 rows: groups of 261
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        d2, i2 = knn.knn_pruned(q, b, 1, memory_mb=1, prepared=pb)
        torch.set_num_threads(1)
        d1, i1 = knn.knn_pruned(q, b, 1, memory_mb=1, prepared=pb)
        monkeypatch.setattr(knn, "_candidates_cpu", torch_blocks)
        dt, it = knn.knn_pruned(q, b, 1, memory_mb=1, prepared=pb)
    finally:
        torch.set_num_threads(threads)
    assert (
        torch.equal(i2, it) and torch.equal(d2, dt) and torch.equal(i1, it) and torch.equal(d1, dt)
    )
    assert torch.equal(whole[1], it) and torch.equal(whole[0], dt)
    summed = (q - b[it[:, 0]]).square().sum(1).sqrt()  # every distance, the heavy ones' too
    assert torch.equal(dt[:, 0], summed)
    assert torch.equal(it[:, 0], _exact(q, b)[1])
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == blas


def test_pruned_search_reports_the_first_of_equally_near_rows_and_exact_zeros():
    from helpers.core.knn import knn_pruned

    g = torch.Generator().manual_seed(3)
    b = torch.randn(500, 32, generator=g)
    b[[40, 90, 300]] = b[7].clone()  # four copies of one row
    d, i = knn_pruned(b[[7, 300, 11]], b, 1)
    assert i[:, 0].tolist() == [7, 7, 11]  # the first copy, as the torch blocks report
    assert d[:, 0].tolist() == [0.0, 0.0, 0.0]  # summed differences: exactly zero


def test_pruned_search_hands_k_above_1_to_the_torch_blocks_and_keeps_the_errors():
    from helpers.core.knn import knn_pruned

    q, b = _clustered(n_bank=800, n_query=50, dim=32)
    d, i = knn_pruned(q, b, 3)
    td, ti = knn_torch(q, b, 3)
    assert torch.equal(i, ti) and torch.equal(d, td)
    with pytest.raises(ValueError, match="same feature dimension"):
        knn_pruned(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="k=9"):
        knn_pruned(torch.randn(3, 4), torch.randn(5, 4), k=9)


def test_a_bank_subset_reuses_the_prepared_search_and_searches_only_its_rows():
    from helpers.core.bank import MemoryBank

    q, b = _clustered(n_bank=2000, n_query=300, dim=48, seed=2)
    bank = MemoryBank(b, backend="pruned")
    keep = torch.ones(len(b), dtype=torch.bool)
    nearest = bank.nearest(q, 1)[1][:, 0]
    keep[nearest[:100]] = False  # drop the nearest rows of 100 queries
    sub = bank.subset(keep)
    assert sub.pruned().axes is bank.pruned().axes  # the same axes, not a new eigendecomposition
    assert sub.pruned().rows is sub.features  # l2 rows gathered once, not twice
    d, i = sub.nearest(q, 1)
    ed, ei = _exact(q, b[keep])
    assert torch.equal(i[:, 0], ei)
    torch.testing.assert_close(d[:, 0], ed, rtol=1e-5, atol=1e-6)
    hd, hi = bank.head(100).nearest(q, 1)
    assert torch.equal(hi[:, 0], _exact(q, b[:100])[1])
