import numpy as np
import pytest
import torch

from helpers.core.training import FeatureSpill


def test_gather_returns_the_rows_in_the_order_asked(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(1000, 24, generator=g)
    with FeatureSpill(24, tmp_path, chunk_rows=64) as spill:
        for i in range(0, 1000, 137):  # uneven appends
            spill.append(rows[i : i + 137])
        assert spill.rows == 1000
        idx = torch.tensor([999, 0, 500, 63, 64, 500, 128])
        assert torch.equal(spill.gather(idx), rows[idx])
        assert spill.path.stat().st_size == 1000 * 24 * 4  # gather flushed: float32 rows only
        perm = torch.randperm(1000, generator=g)[:300]
        assert torch.equal(spill.gather(perm), rows[perm])
        spill.append(rows[:5])  # appending after a gather still works
        assert torch.equal(spill.gather(np.array([1003])), rows[3:4])
        path = spill.path
        assert path.is_file()
    assert not path.exists()


def test_bad_rows_and_indices_are_refused(tmp_path):
    with FeatureSpill(8, tmp_path) as spill:
        spill.append(torch.zeros(4, 8))
        with pytest.raises(ValueError, match=r"\[n, 8\]"):
            spill.append(torch.zeros(4, 7))
        with pytest.raises(IndexError, match="out of range"):
            spill.gather(torch.tensor([4]))


def test_persisted_file_outlives_close_and_reopens(tmp_path):
    rows = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    spill = FeatureSpill(6, tmp_path)
    spill.append(rows)
    final = spill.persist(tmp_path / "features.f32")
    spill.close()
    assert final.is_file() and [p.name for p in tmp_path.iterdir()] == ["features.f32"]
    with FeatureSpill.open(final, 6) as again:
        assert again.rows == 10
        assert torch.equal(again.gather(torch.tensor([9, 2])), rows[[9, 2]])
    assert final.is_file()
    with pytest.raises(ValueError, match="truncated"):
        FeatureSpill.open(final, 7)
