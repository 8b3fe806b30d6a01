import pytest
import torch

from helpers.knn import knn, knn_torch


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
    d, i = knn_torch(q, b, k, distance, memory_mb=memory_mb)
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
    d, i = knn(b[[5, 17]], b)
    # |q|^2 - 2 q.b + |b|^2 in float32 cancels to ~eps*|q|^2, i.e. a distance of ~sqrt(eps)*|q|
    assert torch.allclose(d[:, 0], torch.zeros(2), atol=1e-2)
    assert i[:, 0].tolist() == [5, 17]


def test_bad_inputs():
    with pytest.raises(ValueError, match="same feature dimension"):
        knn_torch(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="k=9"):
        knn_torch(torch.randn(3, 4), torch.randn(5, 4), k=9)
