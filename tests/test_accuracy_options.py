"""Per-backbone defaults for ``distance``, ``cosine_floor``, ``sigma`` and ``train_rotations``
(issue 2), and the behaviour they switch on: cosine scoring with a norm floor and rotated
training copies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import Config, ConfigError, PatchCore
from helpers.core.backbones import BACKBONES
from helpers.core.config import FALLBACK_DEFAULTS


def test_mobilenet_defaults_come_from_its_registry_entry():
    c = Config(backbone="mobilenet_v2")
    spec = BACKBONES["mobilenet_v2"].defaults
    for name in (
        "input_size",
        "resize",
        "distance",
        "cosine_floor",
        "sigma",
        "train_rotations",
        "coreset_ratio",
        "pretrain_embed_dim",
        "target_embed_dim",
    ):
        assert getattr(c, name) == spec[name], name
    # the values chosen on real photos with masks (benchmarks/RESULTS.md, issue 10)
    assert (
        c.input_size,
        c.resize,
        c.distance,
        c.cosine_floor,
        c.sigma,
        c.train_rotations,
        c.coreset_ratio,
    ) == (320, 320, "l2", 0.0, 8.0, 0, 0.05)
    assert c.layers == ["features.6", "features.13", "features.16"]
    assert c.embed_dim == 32 + 96 + 160  # each tap keeps its channels


def test_auto_rotations_depend_on_the_number_of_training_images():
    c = Config(backbone="mobilenet_v2")
    assert c.train_rotations == 0
    assert [c.rotations_for(n) for n in (1, 5, 19, 20, 213)] == [8, 8, 8, 1, 1]
    assert c.replace(train_rotations=3).rotations_for(213) == 3
    assert Config().rotations_for(5) == 1  # WRN50: the paper's setting, no rotations


def test_backbones_without_these_defaults_get_the_fallbacks():
    c = Config()
    assert c.backbone == "wide_resnet50_2"
    assert (c.distance, c.train_rotations, c.cosine_floor, c.sigma) == ("l2", 1, 0.0, 4.0)
    assert (c.distance, c.train_rotations, c.cosine_floor, c.sigma) == tuple(
        FALLBACK_DEFAULTS[k] for k in ("distance", "train_rotations", "cosine_floor", "sigma")
    )
    assert Config(backbone="resnet18").distance == "l2"


def test_explicit_values_win_over_backbone_defaults():
    c = Config(backbone="mobilenet_v2", distance="l2", train_rotations=1, sigma=4, cosine_floor=0)
    assert (c.distance, c.train_rotations, c.sigma, c.cosine_floor) == ("l2", 1, 4, 0)
    assert Config(distance="cosine", train_rotations=4).train_rotations == 4


@pytest.mark.parametrize(
    "field,value",
    [
        ("distance", "manhattan"),
        ("distance", 3),
        ("train_rotations", -1),
        ("train_rotations", 2.5),
        ("train_rotations", True),
        ("cosine_floor", -0.1),
        ("cosine_floor", "0.3"),
        ("cosine_floor", True),
        ("sigma", -1),
        ("sigma", True),
    ],
)
def test_bad_values_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        Config(backbone="mobilenet_v2", **{field: value})


def test_filled_defaults_survive_serialisation():
    c = Config(backbone="mobilenet_v2")
    assert Config.from_dict(c.to_dict()) == c
    assert Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.replace(distance="l2").distance == "l2"
    # rotations change the memory bank, so they change the artifact hash; scoring fields do not
    assert c.hash() != c.replace(train_rotations=1).hash()
    assert c.hash() == c.replace(cosine_floor=0.0, sigma=4.0, distance="l2").hash()


def _tiny(**kw) -> Config:
    return Config(
        backbone="mobilenet_v2",
        input_size=64,
        resize=64,
        device="cpu",
        batch_size=8,
        layers=["features.6", "features.13"],
        **kw,
    )


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.kron(img, np.ones((8, 8, 1), dtype=np.uint8))  # 64x64, blocky: not rotation invariant


def test_train_rotations_multiply_the_patches_and_cover_rotated_copies():
    img = _image()
    plain = PatchCore(_tiny(train_rotations=1, coreset_ratio=1.0)).fit([img])
    rot = PatchCore(_tiny(train_rotations=4, coreset_ratio=1.0)).fit([img])
    assert rot.info["n_patches"] == 4 * plain.info["n_patches"]
    turned = np.ascontiguousarray(np.rot90(img))
    # a 90-degree turn is exact on a square image: with 4 rotations it is already in the bank
    # (up to float rounding in the rotation), without them it is far from every bank row
    seen = float(rot.predict([turned], maps=False).patch_scores.max())
    unseen = float(plain.predict([turned], maps=False).patch_scores.max())
    assert seen < unseen / 100


def test_cosine_scores_ignore_the_scale_of_the_features():
    model = PatchCore(
        _tiny(train_rotations=1, distance="cosine", cosine_floor=0.0, coreset_ratio=0.5)
    ).fit([_image(0), _image(1)])
    emb = model.embed(model.preprocess(_image(2))[0][None])
    s1, g1 = model.score_embeddings(emb)
    s2, g2 = model.score_embeddings(3.0 * emb)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-4)
    l2 = PatchCore(model.config.replace(distance="l2"))
    l2.memory_bank = model.memory_bank
    assert not torch.allclose(l2.score_embeddings(emb)[1], l2.score_embeddings(3.0 * emb)[1])


def test_norm_floor_is_relative_to_the_bank_so_a_common_scale_changes_nothing():
    model = PatchCore(
        _tiny(train_rotations=1, distance="cosine", cosine_floor=0.3, coreset_ratio=0.5)
    ).fit([_image(0), _image(1)])
    median = float(model.memory_bank.norm(dim=1).median())
    assert model.bank.norm_floor == pytest.approx(0.3 * median)
    emb = model.embed(model.preprocess(_image(2))[0][None])
    s1, g1 = model.score_embeddings(emb)
    scaled = PatchCore(model.config)
    scaled.memory_bank = 3.0 * model.memory_bank  # a new MemoryBank: its own floor
    assert scaled.bank.norm_floor == pytest.approx(0.9 * median)
    s2, g2 = scaled.score_embeddings(3.0 * emb)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-4)
    # the floor matters: the same bank without it scores differently, and L2 has no floor
    plain = PatchCore(model.config.replace(cosine_floor=0.0))
    plain.memory_bank = model.memory_bank
    assert plain.bank.norm_floor == 0.0
    assert not torch.allclose(plain.score_embeddings(emb)[1], g1, atol=1e-3)
    l2 = PatchCore(model.config.replace(distance="l2"))
    l2.memory_bank = model.memory_bank
    assert l2.bank.norm_floor == 0.0


def _part_on(background: int, seed: int, size: int = 192, defect: bool = False) -> np.ndarray:
    """The same textured part in the middle third of a uniform background, with faint sensor
    noise (sigma 2 grey levels); ``defect`` paints a 16 px square of the opposite brightness."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), background, np.float32) + rng.normal(0, 2, (size, size, 3))
    q = size // 3
    pattern = np.random.default_rng(0).integers(60, 200, (q // 8, q // 8, 3))
    img[q : 2 * q, q : 2 * q] = np.kron(pattern, np.ones((8, 8, 1))) + rng.normal(0, 2, (q, q, 3))
    if defect:
        img[q + 16 : q + 32, q + 16 : q + 32] = 255 - background
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("background", [235, 20])
def test_uniform_background_scores_low_at_the_defaults(background):
    """Issue 10: a plain background, bright or dark, must score well below a small defect on the
    part. Plain cosine failed this (weak background features are ranked by their direction: on the
    dark background the far background scored as high as the defect)."""
    cfg = Config(backbone="mobilenet_v2", input_size=192, resize=192, device="cpu", batch_size=8)
    model = PatchCore(cfg).fit([_part_on(background, i) for i in range(12)])
    grid = model.predict([_part_on(background, 100, defect=True)], maps=False).patch_scores[0]
    side = grid.shape[0]
    third = side // 3
    yy, xx = np.mgrid[:side, :side]
    far = (np.minimum(yy, xx) < third - 2) | (np.maximum(yy, xx) >= 2 * third + 2)
    defect = grid[third + 2 : third + 4, third + 2 : third + 4].max()  # patches over the square
    assert grid.max() == defect
    assert grid[far].max() < defect / 1.4, (grid[far].max(), defect)
