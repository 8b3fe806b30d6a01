"""Figures carry titles, axis labels and colour bars; tables render as text and HTML; the case
selection and confusion counts are right."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from helpers.core.images import load_image
from helpers.lessons import viz


def titled(fig: Figure) -> bool:
    return bool(fig._suptitle and fig._suptitle.get_text()) or any(
        ax.get_title() for ax in fig.axes
    )


def labelled_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]


def colorbars(fig: Figure) -> int:
    return sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>")


def test_table_text_and_html():
    t = viz.Table([("a", 0.12345, None), ("b<", 2, float("nan"))], ["name", "value", "other"], "T")
    text = str(t)
    assert text.splitlines()[0] == "T" and "0.123" in text and "n/a" in text
    html = t._repr_html_()
    assert "<caption>T</caption>" in html and "b&lt;" in html


def test_dataset_figures(samples):
    train, test = samples
    assert "train" in str(viz.counts_table(train, test))
    for fig in (viz.counts_figure(train, test), viz.sample_grid(test, per_defect=2)):
        assert isinstance(fig, Figure) and titled(fig)
    table, fig = viz.image_statistics(test)
    assert len(table.rows) == 5 and len(labelled_axes(fig)) == 2
    assert [s.defect for s in viz.examples(test)] == ["good", "bent", "color", "flip", "scratch"]


def test_clahe_figures(samples):
    img = load_image(samples[1][-1].path)
    fig = viz.clahe_figure(img, 2.0, 8)
    assert titled(fig) and labelled_axes(fig)
    grid = viz.clahe_grid(img, (1.0, 3.0), (4, 8))
    assert len(grid.axes) == 2 * 3


def test_pca_rgb_in_unit_range_and_shaped_like_the_grid():
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(500, 16))
    emb = rng.normal(size=(2, 5, 6, 16))
    rgb = viz.pca_rgb(fit, emb)
    assert len(rgb) == 2 and rgb[0].shape == (5, 6, 3) and 0 <= rgb[0].min() and rgb[0].max() <= 1
    fig = viz.pca_figure([np.zeros((20, 20, 3), np.uint8)] * 2, rgb, ["a", "b"])
    assert titled(fig)


def test_coreset_figures():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    cov = {
        "ratios": np.array([0.1, 1.0]),
        "greedy_radius": np.array([3.0, 0.0]),
        "random_radius": np.array([4.0, 0.0]),
        "n_patches": 300,
    }
    fig = viz.coverage_figure(cov, 32, full_patches=10000, chosen=0.1)
    assert len(labelled_axes(fig)) == 2
    assert viz.bank_megabytes(1000, 1024, 0.1) == pytest.approx(100 * 1024 * 4 / 2**20)
    assert titled(viz.coreset_scatter(x, np.arange(30)))
    assert labelled_axes(viz.projection_figure(x, x[:, :8]))


def test_map_figures_have_colour_bars():
    img = np.zeros((40, 50, 3), np.uint8)
    amap = np.linspace(0, 1, 2000, dtype=np.float32).reshape(40, 50)
    fig = viz.maps_preview([img, img], [amap, amap], ["a", "b"], vmin=0, vmax=1)
    assert colorbars(fig) == 1
    grid = np.ones((4, 4), np.float32)
    fig = viz.map_steps(
        np.zeros((32, 32, 3), np.uint8),
        grid,
        upsampled=np.ones((32, 32)),
        blurred=np.ones((32, 32)),
        image=img,
        original_map=amap,
        sigma=4,
    )
    assert colorbars(fig) == 1 and titled(fig)
    mask = amap > 0.8
    fig = viz.gallery(
        [img, img],
        [amap, amap],
        [mask, None],
        scores=np.array([2.0, 0.5]),
        labels=np.array([1, 0]),
        titles=["x", "y"],
        vmin=0,
        vmax=1,
        threshold=1.0,
        pixel_threshold=0.9,
        title="Best cases",
    )
    assert colorbars(fig) == 1 and "Best cases" in fig._suptitle.get_text()
    assert titled(
        viz.gallery(
            [img],
            [amap],
            [None],
            scores=np.array([1.0]),
            labels=np.array([0]),
            titles=["z"],
            vmin=0,
            vmax=1,
        )
    )


def test_map_range_uses_percentiles():
    lo, hi = viz.map_range([np.arange(100, dtype=float).reshape(10, 10), None])
    assert 0 <= lo < hi <= 99


def test_gallery_legend_names_the_colour_of_the_predicted_pixels():
    """Issue 12: the title said cyan where the fill was magenta. Fill, outline and title agree."""
    from matplotlib.colors import to_rgba

    from helpers.lessons.viz_scores import PIXEL_REGION_COLOUR

    img = np.zeros((20, 20, 3), np.uint8)
    amap = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    fig = viz.gallery(
        [img],
        [amap],
        [amap > 0.9],
        scores=np.array([1.0]),
        labels=np.array([1]),
        titles=["x"],
        vmin=0,
        vmax=1,
        threshold=0.5,
        pixel_threshold=0.7,
    )
    ax = fig.axes[2]
    assert f"({PIXEL_REGION_COLOUR})" in ax.get_title()
    fill = ax.images[1]
    assert fill.cmap(1.0)[:3] == to_rgba(PIXEL_REGION_COLOUR)[:3]
    outline_colours = {
        tuple(np.round(c[:3], 3)) for coll in ax.collections for c in coll.get_edgecolor()
    }
    assert tuple(np.round(to_rgba(PIXEL_REGION_COLOUR)[:3], 3)) in outline_colours


def test_evaluation_figures():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    masks = [np.zeros((8, 8), bool)] * 2 + [np.pad(np.ones((2, 2), bool), 3)] * 2
    maps = [np.random.default_rng(i).random((8, 8)) for i in range(4)]
    fig = viz.roc_figure(labels, scores, masks, maps)
    assert len(labelled_axes(fig)) == 3
    assert viz.roc_figure(labels, scores)  # no masks: still draws, says so
    assert titled(viz.score_histogram(scores, ["good", "good", "bent", "bent"], 0.3))
    assert titled(viz.confusion_figure(labels, scores, 0.3))


def test_score_histogram_draws_held_out_good_scores_as_one_more_good_row():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    fig = viz.score_histogram(scores, ["good", "good", "bent", "bent"], 0.5, held_out=[0.2, 0.6])
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["good (training,\nheld out)", "good", "bent"]
    filled = [c for c in ax.collections if len(c.get_facecolor())]  # the dots
    rings = [c for c in ax.collections if not len(c.get_facecolor())]  # rings round the wrong
    dots = np.concatenate([c.get_offsets()[:, 0] for c in filled])
    assert sorted(dots.tolist()) == sorted([0.2, 0.6, 0.1, 0.4, 0.35, 0.8])
    # ringed: the held-out score 0.6 >= 0.5 (a false alarm) and the bent 0.35 < 0.5 (a miss)
    ringed = np.concatenate([c.get_offsets()[:, 0] for c in rings if len(c.get_offsets())])
    assert sorted(ringed.tolist()) == [0.35, 0.6]


def test_confusion_counts_and_verdicts():
    cm = viz.confusion_counts([0, 0, 1, 1, 1], [0.1, 0.9, 0.8, 0.2, np.nan], 0.5)
    assert cm.tolist() == [[1, 1], [1, 1]]
    assert viz.verdict(0.9, 1, 0.5) == "flagged: caught"
    assert viz.verdict(0.1, 1, 0.5) == "passed: MISSED"
    assert viz.verdict(0.9, 0, 0.5) == "flagged: FALSE ALARM"
    assert viz.verdict(0.9, 0, None) == ""


def test_select_cases():
    scores = np.array([0.9, 0.1, 0.5, 0.3, np.nan, 0.7])
    labels = np.array([1, 1, 1, 0, 1, 0])
    cases = viz.select_cases(scores, labels, n=2)
    assert cases["best"] == [0, 2, 3] and cases["worst"] == [1, 2, 5]
