"""helpers.core.coreset_fast: the accelerated selections pick exactly what the plain greedy loop
(helpers.core.coreset.greedy_coreset_reference) picks, index for index."""

from __future__ import annotations

import pytest
import torch

from helpers.core.coreset import greedy_coreset, greedy_coreset_reference
from helpers.core.runtime import cpu_threads


def _clustered(n, d, seed, dup_every=0):
    """Features with structure (clusters, uneven scales) and optionally exact duplicate rows."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(2, n // 50), d, generator=g) * 3
    x = centres[torch.randint(0, centres.shape[0], (n,), generator=g)]
    x = x + torch.randn(n, d, generator=g) * torch.rand(d, generator=g)
    if dup_every:
        x[::dup_every] = x[1].clone()
    return x.float()


@pytest.mark.parametrize(
    "n, dim, proj, k, seed, dup",
    [
        (3000, 256, 64, 300, 0, 0),
        (2501, 96, 0, 250, 1, 7),  # no projection, odd size, many exact duplicates
        (4097, 160, 128, 300, 2, 0),
        (600, 64, 32, 60, 3, 0),
    ],
)
def test_fast_coreset_selects_exactly_what_the_reference_selects(n, dim, proj, k, seed, dup):
    feats = _clustered(n, dim, seed, dup)
    with cpu_threads(1):  # small sequential ops: one thread is faster on a busy 2-core machine
        ref = greedy_coreset_reference(feats, k, projection_dim=proj, seed=seed)
    for method in ("dense", "batched", "auto"):
        got = greedy_coreset(feats, k, projection_dim=proj, seed=seed, method=method, bound_dim=16)
        assert torch.equal(got, ref), method
    assert len(set(ref.tolist())) == k


@pytest.mark.parametrize(
    "top_k, max_batch, tile, max_pairs",
    [(1, 128, 4096, 1 << 22), (2, 3, 97, 1 << 22), (256, 1, 4096, 1 << 22),
     (4000, 500, 64, 1 << 22), (256, 128, 4096, 3000)],
)  # fmt: skip
def test_batched_coreset_branches_all_match_the_reference(
    monkeypatch, top_k, max_batch, tile, max_pairs
):
    """Force each branch of the batched loop: a frontier of one row (batches end at once), tiny
    batches and row tiles, one pick per batch, a frontier holding every row, and batches cut
    short by a small pair budget."""
    import functools

    import helpers.core.coreset_fast as cf

    kw = dict(top_k=top_k, max_batch=max_batch, tile=tile, max_pairs=max_pairs)
    batched = functools.partial(cf.batched, **kw)
    monkeypatch.setattr(cf, "batched", batched)
    feats = _clustered(2000, 128, 5, dup_every=11)
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 400, projection_dim=64, seed=5)
    got = greedy_coreset(feats, 400, projection_dim=64, seed=5, method="batched", bound_dim=16)
    assert torch.equal(got, ref)


def test_coreset_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        greedy_coreset(torch.randn(50, 8), 5, method="fast")


@pytest.mark.parametrize("bound_dim", [1, 4, 47, 200])
def test_batched_bound_dims_never_change_the_picks(bound_dim):
    """A bound from 1, a few, all but one or more than all axes (clipped to d - 1) keeps every
    row whose distance can drop, so the picks stay the reference's."""
    feats = _clustered(3000, 96, 7, dup_every=13)
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 500, projection_dim=48, seed=7)
    got = greedy_coreset(
        feats, 500, projection_dim=48, seed=7, method="batched", bound_dim=bound_dim
    )
    assert torch.equal(got, ref)


def test_coreset_with_every_row_tied_picks_the_first_rows():
    """Equal running distances everywhere: the reference takes the first row of equal maxima;
    so must a batch whose frontier is all ties (tau equals its largest value)."""
    feats = torch.zeros(300, 16)
    feats[:, 0] = torch.arange(300).float() % 3  # three distinct rows, 100 copies each
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 40, projection_dim=0, seed=0)
    for method in ("dense", "batched"):
        got = greedy_coreset(feats, 40, projection_dim=0, seed=0, method=method, bound_dim=4)
        assert torch.equal(got, ref), method


def test_auto_picks_the_batched_loop_on_a_large_cpu_input_with_a_progress_bar(monkeypatch):
    """>= 8,192 rows on the CPU: "auto" runs the batched loop (and counts its picks on the bar)."""
    import helpers.core.coreset_fast as cf

    calls = []
    batched = cf.batched
    monkeypatch.setattr(cf, "batched", lambda *a, **k: calls.append(a[5]) or batched(*a, **k))
    feats = _clustered(9000, 64, 11)
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 300, projection_dim=0, seed=11)
    got = greedy_coreset(feats, 300, projection_dim=0, seed=11, progress=True)
    assert calls == [63] and torch.equal(got, ref)  # bound_dim 64 clipped to d - 1
