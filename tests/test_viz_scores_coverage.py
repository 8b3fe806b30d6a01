"""The figures of notebooks 03 and 04 say what their prose says: the anomaly-map preview can show
the lowest-scoring good part, its colour-bar caption fits beside the bar, the map steps give each
step's peak, and the coverage figure's bank-size lines carry the caller's legend."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from helpers.lessons import viz


def rendered(fig):
    """Draw ``fig`` as the notebooks save it (PNG, 100 dpi) and return its renderer."""
    canvas = FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png", dpi=100)
    return canvas.get_renderer()


def test_select_cases_can_ask_for_one_good_part():
    scores = np.array([0.9, 0.1, 0.5, 0.3, np.nan, 0.7, 0.2])
    labels = np.array([1, 1, 1, 0, 1, 0, 0])
    assert viz.select_cases(scores, labels, n=2)["best"] == [0, 2, 6]  # default: max(1, n // 2)
    cases = viz.select_cases(scores, labels, n=3, n_good=1)
    assert cases["best"] == [0, 2, 1, 6] and cases["worst"] == [1, 2, 0, 5]
    assert viz.select_cases(scores, labels, n=1, n_good=2)["best"] == [0, 6, 3]


def test_maps_preview_colour_bar_caption_fits_beside_the_bar():
    img = np.zeros((256, 256, 3), np.uint8)
    amap = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    for n in (1, 2, 4, 6):
        fig = viz.maps_preview([img] * n, [amap] * n, ["color: score 6.03"] * n, vmin=0, vmax=1)
        r = rendered(fig)
        cax = fig.axes[-1]
        assert cax.get_label() == "<colorbar>"
        caption = cax.yaxis.label.get_window_extent(r)
        bar = cax.get_window_extent(r)
        width, height = fig.bbox.width, fig.bbox.height
        assert 0 <= caption.x0 and caption.x1 <= width - 2, (n, caption, width)
        # no longer than the bar: the one-line caption overhung it and ran into the figure edge
        assert bar.y0 <= caption.y0 and caption.y1 <= bar.y1, (n, caption, bar)
        assert 0 <= caption.y0 and caption.y1 <= height


def test_map_steps_titles_give_each_steps_peak():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4)
    fig = viz.map_steps(
        np.zeros((32, 32, 3), np.uint8),
        grid,
        upsampled=np.full((32, 32), 12.0),
        blurred=np.full((32, 32), 7.5),
        image=np.zeros((40, 50, 3), np.uint8),
        original_map=np.zeros((40, 50), np.float32),
        sigma=8,
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert any("patch distances 4x4" in t and "max 15.00" in t for t in titles)
    assert any("upsampling" in t and "max 12.00" in t for t in titles)
    assert any("sigma=8 px" in t and "max 7.50" in t for t in titles)


def _coverage() -> dict:
    """A two-ratio coverage result, the shape ``viz.coverage_figure`` draws."""
    return {
        "ratios": np.array([0.1, 1.0]),
        "greedy_radius": np.array([3.0, 0.0]),
        "random_radius": np.array([4.0, 0.0]),
        "n_patches": 300,
    }


def test_coverage_figure_legend_says_how_the_counts_arise():
    cov = _coverage()
    fig = viz.coverage_figure(
        cov,
        32,
        full_patches=220 * 8 * 1024,
        run_patches=8 * 8 * 256,
        run_label="this run: 8 images x 8 rotations x 256 patches",
        full_label="full metal_nut: 220 images x 8 rotations x 1024 patches",
    )
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "this run: 8 images x 8 rotations x 256 patches" in texts
    assert "full metal_nut: 220 images x 8 rotations x 1024 patches" in texts
    default = viz.coverage_figure(cov, 32, full_patches=1000)
    texts = [t.get_text() for t in default.axes[1].get_legend().get_texts()]
    assert "full metal_nut train set (1000 patches)" in texts


def test_coverage_figure_draws_the_bank_cap_at_its_size():
    cov = _coverage()
    fig = viz.coverage_figure(cov, 32, max_rows=5000)
    ax = fig.axes[1]
    assert "cap: coreset_max_size = 5000 rows" in [
        t.get_text() for t in ax.get_legend().get_texts()
    ]
    cap = [line for line in ax.get_lines() if line.get_linestyle() == "-."]
    assert len(cap) == 1 and cap[0].get_ydata()[0] == 5000 * 32 * 4 / 2**20
    assert not [
        line
        for line in viz.coverage_figure(cov, 32).axes[1].get_lines()
        if line.get_linestyle() == "-."
    ]


def test_gallery_draws_large_images_at_display_size_with_the_maps_own_values():
    from helpers.lessons.viz_data import DISPLAY_PX, for_display

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (700, 1030, 3), dtype=np.uint8)
    amap = rng.random((700, 1030)).astype(np.float32)
    mask = np.zeros((700, 1030), bool)
    mask[300:400, 500:700] = True
    small, smap, smask = for_display(img, amap, mask)
    assert small.shape == (233, 343, 3) and smap.shape == smask.shape == (233, 343)
    assert max(small.shape[:2]) <= DISPLAY_PX
    assert np.isin(smap, amap).all()  # nearest neighbour: values the map has, none averaged
    assert smask.dtype == bool and 0.02 < smask.mean() < 0.04  # the 100 x 200 region, 2.8 %
    same = for_display(img[:400, :500], amap[:400, :500], None)  # small enough: untouched
    assert same[0] is not None and same[0].shape == (400, 500, 3) and same[2] is None
    kw = dict(vmin=0.0, vmax=1.0, threshold=0.5, pixel_threshold=0.9)
    fig = viz.gallery([img], [amap], [mask], scores=np.array([1.0]), labels=np.array([1]),
                      titles=["x"], **kw)  # fmt: skip
    FigureCanvasAgg(fig).draw()
