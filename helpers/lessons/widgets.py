"""Interactive explorers of notebooks 01 and 05 (ipywidgets), each with a static fallback: without
ipywidgets, or with ``interactive=False`` (papermill, CI), the same information is drawn as
ordinary figures, saved with the run's other figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from helpers.lessons import viz


def available() -> bool:
    """True when ipywidgets can be imported."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _static(fig, interactive: bool, run=None, name: str = "") -> None:
    """Show ``fig`` in place of an explorer (saved as the run's figure ``name`` when given)."""
    if interactive:
        print(
            "ipywidgets is not installed: showing static figures instead (pip install ipywidgets)"
        )
    if run is not None and name:
        run.show(fig, name)
    else:
        from IPython.display import display

        display(fig)


def _explorer(controls: list, draw: Callable):
    """The controls in a row above the figure ``draw(*their values)``, redrawn on every change."""
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()

    def update(*_):
        with out:
            out.clear_output(wait=True)
            display(draw(*(c.value for c in controls)))

    for control in controls:
        control.observe(update, names="value")
    update()
    return w.VBox([w.HBox(controls), out])


def clahe_explorer(images: dict[str, np.ndarray], clip_limit: float = 2.0, tile_grid: int = 8,
                   *, interactive: bool = True, run=None, name: str = "",
                   clip_limits: Sequence[float] = (1.0, 2.0, 4.0),
                   tile_grids: Sequence[int] = (4, 8, 16)):  # fmt: skip
    """Notebook 01: pick an image, a clip limit and a tile grid, and see CLAHE before / after with
    histograms. Returns the widget, or None after drawing the static grid of settings."""
    if not (interactive and available()):
        first = next(iter(images))
        title = f"CLAHE settings on {first}: clip limit (columns) x tile grid (rows)"
        fig = viz.clahe_grid(images[first], clip_limits, tile_grids, title)
        return _static(fig, interactive, run, name)
    import ipywidgets as w

    return _explorer(
        [
            w.Dropdown(options=list(images), description="image"),
            w.FloatSlider(value=clip_limit, min=0.5, max=8.0, step=0.5, description="clip limit"),
            w.IntSlider(value=tile_grid, min=1, max=32, step=1, description="tile grid"),
        ],
        lambda image, clip, tiles: viz.clahe_figure(images[image], clip, tiles, image),
    )


def prediction_browser(load_image: Callable[[int], np.ndarray], scores, labels, *, maps, masks,
                       titles: Sequence[str], threshold: float, vmin: float, vmax: float,
                       pixel_threshold: float | None = None, interactive: bool = True, run=None,
                       name: str = "", static_max: int = 5,
                       defects: Sequence[str] | None = None):  # fmt: skip
    """Notebook 05: every test image with its anomaly map; sliders move the image threshold (the
    verdict follows) and the pixel threshold (the region follows). Static fallback: the first
    image of each of ``defects`` (else the first images), at most ``static_max``."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)

    def panel(indices, thr, pix):
        pick = lambda seq: [seq[i] for i in indices]
        return viz.gallery([load_image(i) for i in indices], pick(maps), pick(masks),
                           scores=scores[indices], labels=np.asarray(labels)[indices],
                           titles=pick(titles), vmin=vmin, vmax=vmax, threshold=thr,
                           pixel_threshold=pix, title="Test image browser")  # fmt: skip

    if not (interactive and available()):
        firsts = {d: i for i, d in reversed(list(enumerate(defects or [])))}  # first of each
        shown = (list(range(n)) if defects is None else sorted(firsts.values()))[:static_max]
        return _static(panel(shown, threshold, pixel_threshold), interactive, run, name)
    import ipywidgets as w

    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    slider = lambda value, lo, hi, name: w.FloatSlider(
        value=float(value), min=lo, max=hi, step=(hi - lo) / 200 or 0.01, description=name,
        readout_format=".3g",
    )  # fmt: skip
    pix = vmax if pixel_threshold is None else pixel_threshold
    return _explorer(
        [
            w.IntSlider(value=0, min=0, max=max(n - 1, 0), description="image"),
            slider(threshold, lo, max(hi, lo + 1e-6), "image thr."),
            slider(pix, vmin, vmax, "pixel thr."),
        ],
        lambda index, thr, pix: panel([index], thr, pix),
    )
