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
    for method in ("dense", "filtered", "auto"):
        got = greedy_coreset(feats, k, projection_dim=proj, seed=seed, method=method, filter_dim=16)
        assert torch.equal(got, ref), method
    assert len(set(ref.tolist())) == k


@pytest.mark.parametrize("full_pass_fraction, refresh_every", [(0.0, 7), (2.0, 0), (0.25, 1)])
def test_filtered_coreset_branches_all_match_the_reference(
    monkeypatch, full_pass_fraction, refresh_every
):
    """Force each branch of the filtered loop: cluster test + gathered bound on every pick,
    the full-pass bound on every pick, and a cluster-radius refresh on every pick."""
    import functools

    import helpers.core.coreset_fast as cf

    monkeypatch.setattr(
        cf,
        "filtered",
        functools.partial(
            cf.filtered, full_pass_fraction=full_pass_fraction, refresh_every=refresh_every
        ),
    )
    feats = _clustered(2000, 128, 5, dup_every=11)
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 400, projection_dim=64, seed=5)
    got = greedy_coreset(feats, 400, projection_dim=64, seed=5, method="filtered", filter_dim=16)
    assert torch.equal(got, ref)


def test_coreset_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        greedy_coreset(torch.randn(50, 8), 5, method="fast")


@pytest.mark.parametrize("q", [1, 4, 16])
def test_filtered_cascade_split_never_changes_the_picks(monkeypatch, q):
    """The full pass tests the top-q split first (q = 16 = p: no cascade); every split keeps
    every row whose distance can drop, so the picks stay the reference's."""
    import functools

    import helpers.core.coreset_fast as cf

    monkeypatch.setattr(cf, "filtered", functools.partial(cf.filtered, q=q))
    feats = _clustered(3000, 96, 7, dup_every=13)
    with cpu_threads(1):
        ref = greedy_coreset_reference(feats, 500, projection_dim=48, seed=7)
    got = greedy_coreset(feats, 500, projection_dim=48, seed=7, method="filtered", filter_dim=16)
    assert torch.equal(got, ref)
