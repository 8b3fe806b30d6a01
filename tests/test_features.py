import pytest
import torch
import torch.nn.functional as F

from helpers.core.backbones import FeatureExtractor, local_patch_pool


def official_order(maps, patch_size, pre_dim, target_dim):
    """The official code's order: unfold every layer, upsample deeper layers' PATCHES to the
    first grid, then pool each layer's patch vector, then pool the concatenation."""
    h, w = maps[0].shape[-2:]
    per_layer = []
    for fmap in maps:
        b, c, hh, ww = fmap.shape
        cols = F.unfold(fmap, patch_size, padding=(patch_size - 1) // 2)  # [b, c*p*p, hh*ww]
        cols = cols.reshape(b, c * patch_size * patch_size, hh, ww)
        if (hh, ww) != (h, w):
            cols = F.interpolate(cols, size=(h, w), mode="bilinear", align_corners=False)
        vec = cols.permute(0, 2, 3, 1).reshape(-1, 1, cols.shape[1])
        per_layer.append(F.adaptive_avg_pool1d(vec, pre_dim).squeeze(1))
    stacked = torch.stack(per_layer, dim=1).reshape(-1, 1, pre_dim * len(maps))
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1)


def test_pool_then_upsample_equals_official_order():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 12, 8, 8, generator=g), torch.randn(2, 20, 4, 4, generator=g)]
    expected = official_order(maps, 3, 64, 48)
    pooled = [local_patch_pool(m, 3, 64) for m in maps]
    pooled[1] = F.interpolate(pooled[1], size=(8, 8), mode="bilinear", align_corners=False)
    ours = torch.cat(pooled, 1).permute(0, 2, 3, 1).reshape(-1, 1, 128)
    ours = F.adaptive_avg_pool1d(ours, 48).squeeze(1)
    assert torch.allclose(ours, expected, atol=1e-5)


def _unfold_then_pool(fmap, patch_size, out_dim):
    """The official recipe, literally: unfold, one row per position, adaptive_avg_pool1d."""
    b, c, h, w = fmap.shape
    cols = F.unfold(fmap, patch_size, padding=(patch_size - 1) // 2)
    rows = cols.transpose(1, 2).reshape(-1, 1, cols.shape[1])
    return F.adaptive_avg_pool1d(rows, out_dim).reshape(b, h, w, out_dim).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    "shape, patch_size, out_dim",
    [((2, 12, 9, 7), 3, 12), ((2, 12, 9, 7), 3, 40), ((1, 10, 6, 6), 3, 45), ((2, 8, 5, 5), 5, 8),
     ((1, 6, 4, 4), 1, 6), ((2, 512, 6, 6), 3, 1024)],
)  # fmt: skip
def test_local_patch_pool_is_bitwise_the_unfold_recipe(shape, patch_size, out_dim):
    """The average-pool path (out_dim = C) and the in-place pool give the very same numbers."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(out_dim))
    assert torch.equal(
        local_patch_pool(x, patch_size, out_dim), _unfold_then_pool(x, patch_size, out_dim)
    )


def test_local_patch_pool_batch_slicing_is_invisible():
    x = torch.randn(5, 6, 7, 7)
    assert torch.allclose(
        local_patch_pool(x, 3, 40), local_patch_pool(x, 3, 40, max_elements=300), atol=1e-6
    )


def test_patch_size_one_is_channel_pooling():
    x = torch.randn(1, 8, 3, 3)
    out = local_patch_pool(x, 1, 4)
    assert torch.allclose(out, x.reshape(1, 4, 2, 3, 3).mean(2), atol=1e-6)


@pytest.mark.parametrize("size", [96, 128])
def test_mobilenet_embedding_shapes(size):
    ext = FeatureExtractor(
        "mobilenet_v2",
        ["features.6", "features.13"],
        weights=None,
        pretrain_embed_dim=64,
        target_embed_dim=32,
    )
    out = ext(torch.randn(2, 3, size, size))
    assert out.shape == (2, size // 8, size // 8, 32)
    assert ext.grid_size(size) == size // 8
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())


def test_resnet_taps_give_stride_8_grid():
    ext = FeatureExtractor(
        "resnet18", ["layer2", "layer3"], weights=None, pretrain_embed_dim=128, target_embed_dim=64
    )
    assert ext(torch.randn(1, 3, 64, 64)).shape == (1, 8, 8, 64)


def test_balanced_tap_weights_give_every_tap_the_same_mean_squared_norm():
    from helpers.core.backbones import balanced_tap_weights

    g = torch.Generator().manual_seed(0)
    # three taps of 2, 3 and 4 columns whose values have standard deviations 1, 3 and 0.5
    emb = torch.cat(
        [
            torch.randn(5, 7, 7, 2, generator=g),
            3 * torch.randn(5, 7, 7, 3, generator=g),
            0.5 * torch.randn(5, 7, 7, 4, generator=g),
        ],
        dim=-1,
    )
    w = balanced_tap_weights(emb, [2, 3, 4])
    rows = emb.reshape(-1, 9).double()
    sq = [rows[:, lo:hi].pow(2).sum(1).mean().item() for lo, hi in ((0, 2), (2, 5), (5, 9))]
    scaled = [s * wi**2 for s, wi in zip(sq, w)]
    assert max(scaled) - min(scaled) < 1e-9 * max(scaled)
    assert sum(scaled) == pytest.approx(sum(sq))  # the total squared length is kept
    assert w[1] < 1 < w[0] < w[2]  # the loud tap is turned down, the quiet one up
