import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers.core.maps import gaussian_blur, patch_scores_to_maps


@pytest.mark.parametrize(
    "shape,sigma", [((64, 64), 4.0), ((20, 31), 4.0), ((224, 224), 4.0), ((9, 9), 1.5)]
)
def test_blur_matches_scipy_gaussian_filter(shape, sigma):
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    ref = np.stack(
        [
            ndimage.gaussian_filter(m.astype(np.float64), sigma, mode="reflect", truncate=4.0)
            for m in x
        ]
    )
    assert np.allclose(ours, ref, atol=1e-5)


def test_zero_sigma_is_identity_and_blur_preserves_mass():
    x = torch.rand(1, 32, 32)
    assert torch.equal(gaussian_blur(x, 0), x)
    assert float(gaussian_blur(x, 2.0).sum()) == pytest.approx(float(x.sum()), rel=1e-4)


def test_upsampled_map_peaks_under_the_hot_patch():
    grid = torch.zeros(1, 28, 28)
    grid[0, 5, 20] = 10.0
    amap = patch_scores_to_maps(grid, 224, 4.0)[0]
    y, x = divmod(int(amap.argmax()), 224)
    # patch (5, 20) covers input pixels [40, 48) x [160, 168)
    assert 40 <= y < 48 and 160 <= x < 168


def test_blur_in_chunks_equals_one_batch_and_scipy_per_map():
    """The blur runs a few maps at a time (bounded memory); a batch of 11 in chunks of 3 gives
    the same maps as all at once, each as scipy blurs it alone."""
    maps = torch.rand(11, 37, 29, generator=torch.Generator().manual_seed(3))
    chunked, whole = gaussian_blur(maps, 2.5, chunk=3), gaussian_blur(maps, 2.5, chunk=64)
    assert torch.equal(chunked, whole)
    for m, got in zip(maps.numpy(), chunked.numpy()):
        want = ndimage.gaussian_filter(m.astype(np.float64), 2.5, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(got, want, atol=1e-5)
