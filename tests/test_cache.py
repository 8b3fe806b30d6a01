"""helpers.run.cache: the artifact cache on its own (no Run, no model)."""

import pytest
import torch

from helpers.run.cache import ArtifactCache


def test_computes_once_then_loads_and_recomputes_when_meta_differs(tmp_path):
    cache = ArtifactCache(tmp_path / "artifacts", verbose=False)
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3)}, {"n": 3}

    t, info = cache.cached("features", "k1", {"data_id": "a"}, compute)
    t2, info2 = cache.cached("features", "k1", {"data_id": "a"}, compute)
    assert len(calls) == 1 and torch.equal(t["x"], t2["x"]) and info2 == {"n": 3}
    cache.cached("features", "k1", {"data_id": "b"}, compute)
    assert len(calls) == 2
    assert [e["action"] for e in cache.events] == ["computed", "loaded", "computed"]
    assert (tmp_path / "artifacts" / "events.jsonl").read_text().count("\n") == 3
    assert cache.info(cache.path("features", "k1")) == {"n": 3}


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown artifact"):
        ArtifactCache(tmp_path).path("weights", "k")
