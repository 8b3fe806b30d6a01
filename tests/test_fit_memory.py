"""helpers.core.training: the fit's memory estimate and the up-front refusal."""

import pytest
import torch

from helpers import PatchCore
from helpers.core.training import check_fit_memory, fit_memory_estimate


def test_training_set_too_large_for_memory_is_refused_up_front(small_config, monkeypatch):
    model = PatchCore(small_config)
    est = fit_memory_estimate(model.config, model.device, 10**6)
    patches = 10**6 * small_config.rotations_for(10**6) * 16 * 16
    # the RAM estimate grows with the projection (8 bytes x 128 per patch), not the full features
    assert est["ram"] >= patches * 128 * 8
    assert est["disk"] == patches * small_config.embed_dim * 4
    monkeypatch.setattr("helpers.core.training.available_ram", lambda: 8 << 30)
    with pytest.raises(MemoryError) as err:
        check_fit_memory(model.config, model.device, 10**6)
    msg = str(err.value)
    assert "GiB of RAM" in msg and "8.0 GiB is free" in msg and "train_rotations" in msg
    # a small set passes; the estimate checked comes back (the preflight prints it)
    assert check_fit_memory(model.config, model.device, 10) == fit_memory_estimate(
        model.config, model.device, 10
    )


def test_fit_memory_estimate_grows_linearly(small_config):
    model = PatchCore(small_config.replace(coreset_max_size=0))
    a, b, c = (fit_memory_estimate(model.config, model.device, n) for n in (1000, 2000, 3000))
    assert c["ram"] - b["ram"] == pytest.approx(b["ram"] - a["ram"], rel=1e-3)
    assert b["ram"] > a["ram"]
    # a capped bank: the same working arrays, a smaller bank
    capped = fit_memory_estimate(small_config.replace(coreset_max_size=1000), model.device, 2000)
    bank = (model.config.coreset_size(2000 * 16 * 16) - 1000) * small_config.embed_dim * 4
    assert b["ram"] - capped["ram"] == bank


def test_estimate_is_a_function_of_config_and_device(small_config):
    cpu = fit_memory_estimate(small_config, torch.device("cpu"), 50)
    assert cpu == fit_memory_estimate(small_config.replace(seed=7), torch.device("cpu"), 50)
    assert cpu["ram"] < fit_memory_estimate(small_config, torch.device("cpu"), 100)["ram"]


def test_estimate_counts_one_batch_of_embeddings_not_more_views_than_there_are(small_config):
    # below one batch, each extra training image adds its embedding rows to the batch term
    cfg = small_config.replace(coreset_max_size=0, train_rotations=1, batch_size=32)
    est = [fit_memory_estimate(cfg, torch.device("cpu"), n)["ram"] for n in (1, 2, 32, 33, 34)]
    per_patch_work = est[4] - est[3]  # past one batch: only the per-patch arrays grow
    assert est[1] - est[0] > per_patch_work
    # a bigger batch costs more memory once there are enough images to fill it
    big = fit_memory_estimate(cfg.replace(batch_size=64), torch.device("cpu"), 64)["ram"]
    assert big > fit_memory_estimate(cfg, torch.device("cpu"), 64)["ram"]
