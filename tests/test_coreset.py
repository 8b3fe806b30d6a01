import itertools

import numpy as np
import pytest
import torch

from helpers.core.coreset import (
    covering_radius,
    greedy_coreset,
    greedy_coreset_reference,
    random_projection,
)


def brute_force_greedy(x: np.ndarray, n_select: int, n_start_idx: np.ndarray) -> list[int]:
    """The same approximate greedy algorithm written with a full distance matrix."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    cur = d[:, n_start_idx].mean(axis=1)
    picked = []
    for _ in range(n_select):
        i = int(np.argmax(cur))
        picked.append(i)
        cur = np.minimum(cur, d[:, i])
    return picked


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matches_full_matrix_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(300, 16, generator=g, dtype=torch.float64).float()
    picked = greedy_coreset(feats, 30, projection_dim=0, start_points=5, seed=seed)
    start = torch.randperm(300, generator=torch.Generator().manual_seed(seed + 1))[:5].numpy()
    expected = brute_force_greedy(feats.double().numpy(), 30, start)
    assert picked.tolist() == expected


def test_fast_loop_equals_straightforward_reference():
    feats = torch.randn(2000, 64, generator=torch.Generator().manual_seed(3))
    a = greedy_coreset(feats, 200, projection_dim=32, seed=5)
    b = greedy_coreset_reference(feats, 200, projection_dim=32, seed=5)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) == 200  # no point picked twice


def test_covering_radius_within_twice_optimal_on_small_sets():
    # k-center: farthest-first is a 2-approximation of the optimal covering radius. The official
    # mean-distance start (10 start points) is an approximation of that; check it keeps the bound.
    for seed in range(20):
        pts = torch.rand(12, 2, generator=torch.Generator().manual_seed(seed))
        k = 3
        picked = greedy_coreset(pts, k, projection_dim=0, start_points=10, seed=seed)
        got = covering_radius(pts, picked)
        d = torch.cdist(pts, pts)
        best = min(
            float(d[:, list(c)].min(1).values.max()) for c in itertools.combinations(range(12), k)
        )
        assert got <= 2 * best + 1e-6


def test_covering_radius_against_brute_force():
    pts = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    sel = torch.tensor([3, 50, 400])
    expected = float(torch.cdist(pts, pts[sel]).min(1).values.max())
    assert covering_radius(pts, sel, chunk=64) == pytest.approx(expected, rel=1e-6)


def test_radius_shrinks_as_the_bank_grows():
    feats = torch.randn(1500, 32, generator=torch.Generator().manual_seed(1))
    radii = [
        covering_radius(feats, greedy_coreset(feats, n, projection_dim=0)) for n in (15, 150, 750)
    ]
    assert radii[0] > radii[1] > radii[2]
    assert covering_radius(feats, greedy_coreset(feats, 1500)) == 0.0


def test_seeded_and_projection_reduces_dims():
    feats = torch.randn(400, 256)
    assert torch.equal(greedy_coreset(feats, 40, seed=2), greedy_coreset(feats, 40, seed=2))
    assert random_projection(feats, 128, seed=0).shape == (400, 128)
    assert torch.equal(random_projection(feats, 128, 0), random_projection(feats, 128, 0))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(torch.randn(10, 4), 11)
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(torch.randn(10, 4), 0)
