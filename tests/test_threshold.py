"""The good-only threshold: the quantile rule on known scores, the held-out (leave-one-image-out)
scores against a bank truly built without each image, and the threshold saved with the bank."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers import PatchCore
from helpers.core.bank import bank_digest, good_only_threshold, held_out_scores


def test_quantile_rule_on_known_scores():
    scores = np.arange(1, 20, dtype=np.float32)[::-1]  # 19 held-out scores 1..19, any order
    t = good_only_threshold(scores, 0.1)
    # k = ceil(20 * 0.9) = 18: just above the 18th smallest (18), so only 19 is flagged
    assert t["rank"] == 18 and t["n_images"] == 19 and t["reachable"]
    assert 18 < t["value"] <= 18.00001 and t["held_out_flagged"] == 1
    assert t["expected_false_alarm_rate"] == pytest.approx(2 / 20)
    assert 19 < t["max_of_good"] <= 19.00001
    assert t["max_of_good_expected_false_alarm_rate"] == pytest.approx(1 / 20)
    flagged = scores >= t["value"]
    assert flagged.sum() == 1 and not (scores >= t["max_of_good"]).any()
    # NaN scores (unreadable images) are left out
    same = good_only_threshold(np.r_[scores, np.nan], 0.1)
    assert same["value"] == t["value"] and same["n_images"] == 19


def test_a_rate_too_small_for_the_images_falls_back_to_the_max_with_a_warning():
    with pytest.warns(UserWarning, match="at least 99 good images"):
        t = good_only_threshold(np.arange(10.0), 0.01)
    assert not t["reachable"] and t["value"] == t["max_of_good"] and t["rank"] == 10
    for bad in (0, 1, -0.5):
        with pytest.raises(ValueError, match="false_alarm_rate"):
            good_only_threshold(np.arange(10.0), bad)
    with pytest.raises(ValueError, match="at least one"):
        good_only_threshold([np.nan], 0.1)


def test_the_conformal_rate_holds_on_exchangeable_scores():
    """Over many draws, a new score from the same distribution is flagged at most at the rate
    asked for (and close to it)."""
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        draw = rng.normal(size=41)
        hits.append(draw[40] >= good_only_threshold(draw[:40], 0.1)["value"])
    assert np.mean(hits) == pytest.approx(4 / 41, abs=0.015)  # k = ceil(41 * 0.9) = 37


def _fit_keeping_features(config, images):
    model = PatchCore(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = model.extract(images)
    model.build_bank(feats)
    return model, feats


@pytest.fixture(scope="module")
def fit_with_features(small_config, samples):
    """A fit on 5 images (8 rotations each: the auto rule below 20) that keeps its features."""
    model, feats = _fit_keeping_features(small_config, samples[0][:5])
    yield model, feats
    feats.close()


def test_held_out_scores_equal_a_bank_built_without_each_image(fit_with_features, samples):
    model, feats = fit_with_features
    scores, info = held_out_scores(model, feats)
    assert info["n_images"] == 5 and info["views_per_image"] == 8
    # which image each bank row came from, from the fit's own indices (not from the rows)
    owner = (model.coreset_indices // (8 * feats.per_image)).cpu()
    full = model.predict(samples[0][:5], maps=False).scores
    for i in range(5):
        without = PatchCore(model.config)
        without.memory_bank = model.memory_bank[owner != i]
        without.tap_weights = model.tap_weights  # the fit's (balance_taps), part of the model
        expected = without.predict([samples[0][i]], maps=False).scores[0]
        assert scores[i] == pytest.approx(expected, rel=1e-5), i
    assert (scores > full).all()  # its own patches, kept in M, made each image look normal


def test_held_out_scores_without_reweighting_equal_each_image_left_out(fit_with_features, samples):
    """num_neighbors = 1 (s = s*, no eq. 7) through the same grouped searches."""
    model, feats = fit_with_features
    plain = PatchCore(model.config.replace(num_neighbors=1))
    plain.memory_bank, plain.tap_weights = model.memory_bank, model.tap_weights
    scores, _ = held_out_scores(plain, feats)
    owner = (model.coreset_indices // (8 * feats.per_image)).cpu()
    for i in range(5):
        without = PatchCore(plain.config)
        without.memory_bank, without.tap_weights = model.memory_bank[owner != i], model.tap_weights
        expected = without.predict([samples[0][i]], maps=False).scores[0]
        assert scores[i] == pytest.approx(expected, rel=1e-5), i


def test_held_out_scores_of_a_single_training_image_say_why_not(small_config, samples):
    model, feats = _fit_keeping_features(small_config, samples[0][:1])
    with pytest.raises(ValueError, match="rows from other images"):
        held_out_scores(model, feats)
    feats.close()


@pytest.mark.parametrize("head_rows", [4, 16, 64])
def test_held_out_scores_search_only_the_patches_that_can_give_s_star(fit_with_features, head_rows):
    """Bounding the patches by the bank's first rows and searching only those that may hold the
    largest distance gives every image the score of the full search (any head size)."""
    model, feats = fit_with_features
    full, _ = held_out_scores(model, feats, head_rows=0)
    pruned, _ = held_out_scores(model, feats, head_rows=head_rows)
    np.testing.assert_allclose(pruned, full, rtol=1e-6)
    from helpers.core.bank import could_give_s_star

    h, w = feats.grid
    first = feats.rows(torch.arange(h * w)).float()  # image 0's unrotated patches
    assert len(could_give_s_star(first, model.bank, head_rows)) < h * w  # some were not searched


def test_could_give_s_star_keeps_the_farthest_patch_and_drops_near_ones():
    from helpers.core.bank import MemoryBank, could_give_s_star

    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(torch.randn(4096, 16, generator=g))
    patches = bank.features[torch.randperm(4096, generator=g)[:400]] + 0.01  # all near the bank
    patches[123] += 5.0  # one far patch: s*
    kept = could_give_s_star(patches, bank)
    d = bank.nearest(patches, 1)[0][:, 0]
    assert 123 in kept.tolist() and int(d.argmax()) == 123
    assert len(kept) < 100  # the near patches' bounds fall below s*, so they are not searched
    assert torch.equal(kept, kept.sort().values)
    assert len(could_give_s_star(patches, MemoryBank(bank.features[:1000]))) == 400  # small bank


def test_held_out_scores_refuse_a_bank_not_built_from_these_features(fit_with_features):
    model, feats = fit_with_features
    other = PatchCore(model.config)
    other.memory_bank = model.memory_bank + 1e-3
    with pytest.raises(ValueError, match="copies of no training patch"):
        held_out_scores(other, feats)


def test_calibrate_saves_the_threshold_with_the_bank(fit_with_features, tmp_path):
    model, feats = fit_with_features
    t = model.calibrate(feats, false_alarm_rate=0.2)
    scores, _ = held_out_scores(model, feats)
    assert t["value"] == good_only_threshold(scores, 0.2)["value"]
    assert t["computed_on"] == "5 good training images, leave-one-image-out"
    assert t["config_hash"] == model.config.hash()
    assert t["bank_sha256"] == bank_digest(model.memory_bank)
    loaded = PatchCore.load(model.save(tmp_path / "bank.safetensors"), model.config)
    assert loaded.threshold == t
    # given scores: no scoring pass, the same rule
    again = PatchCore.load(tmp_path / "bank.safetensors")
    assert again.calibrate(None, 0.2, scores=scores)["value"] == t["value"]


def test_fit_with_threshold_uses_the_config_rate(small_config, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PatchCore(small_config.replace(false_alarm_rate=0.25)).fit(
            samples[0][:4], threshold=True
        )
    assert model.threshold["false_alarm_rate"] == 0.25 and model.threshold["n_images"] == 4
    assert torch.isfinite(torch.tensor(model.threshold["value"]))
