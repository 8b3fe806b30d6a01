"""The helpers behind notebooks 01 and 02's lessons: the brightness-only baseline and the rotation
test of the patch features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers.core.images import load_image
from helpers.lessons import viz
from helpers.lessons.viz_data import _brightness_reading


def test_brightness_baseline_is_the_auroc_of_the_mean_grey_level(samples):
    train, test = samples
    table = viz.brightness_baseline(train + test)  # training images are left out
    by_name = {row[0]: row for row in table.rows}
    assert list(by_name) == ["bent", "color", "flip", "scratch", "all defects"]
    mean = {s.path: load_image(s.path).mean() for s in test}
    good = [mean[s.path] for s in test if s.defect == "good"]
    bent = [mean[s.path] for s in test if s.defect == "bent"]
    expected = roc_auc_score([0] * len(good) + [1] * len(bent), good + bent)
    assert by_name["bent"][1] == len(bent)
    assert by_name["bent"][3] == pytest.approx(expected)
    assert by_name["all defects"][1] == len(test) - len(good)
    assert f"{len(good)} good test images" in table.title
    assert "AUROC" in str(table)


def test_brightness_reading_is_symmetric():
    assert _brightness_reading(1.0) == "separates: defective brighter"
    assert _brightness_reading(0.05) == "separates: defective darker"
    assert _brightness_reading(0.8).startswith("partly: defective mostly brighter")
    assert _brightness_reading(0.5) == "little or no signal"
    assert _brightness_reading(None).startswith("n/a")


@pytest.fixture(scope="module")
def model(small_config):
    from helpers import PatchCore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PatchCore(small_config)


def test_turned_view_compares_the_same_spots(model, samples):
    image = load_image(samples[0][0].path)
    same = viz.turned_view(model, image, quarter_turns=0)  # not turned: identical grids
    np.testing.assert_allclose(same.features_back, same.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same.cosine, 1.0, atol=1e-5)
    view = viz.turned_view(model, image)
    h, w, d = view.features.shape
    assert view.features_back.shape == (h, w, d) and view.cosine.shape == (h, w)
    assert view.crop.shape == view.crop_turned.shape
    np.testing.assert_array_equal(view.crop_turned, np.rot90(view.crop))
    assert -1 - 1e-6 <= view.cosine.min() and view.cosine.max() <= 1 + 1e-6
    # turned back the right way: start from the turned image and turn it 3 more quarters (back to
    # the original image); its grid, turned back, is the original grid turned once
    other = viz.turned_view(model, np.ascontiguousarray(np.rot90(image)), quarter_turns=3)
    np.testing.assert_allclose(
        other.features_back, np.rot90(view.features, axes=(0, 1)), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(other.cosine, np.rot90(view.cosine), rtol=1e-4, atol=1e-4)


def test_rotation_figure(model, samples):
    view = viz.turned_view(model, load_image(samples[0][0].path))
    rgb = viz.pca_rgb(
        view.features.reshape(-1, view.features.shape[-1]),
        np.stack([view.features, view.features_back]),
    )
    fig = viz.rotation_figure(view, rgb)
    assert "rotation-invariant" in fig._suptitle.get_text()
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 1
    assert f"median {np.median(view.cosine):.2f}" in fig.axes[4].get_title()
