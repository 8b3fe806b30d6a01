"""Widgets work with ipywidgets and fall back to static figures (saved with the run) without."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from helpers.lessons import widgets


class FakeRun:
    def __init__(self):
        self.shown = []

    def show(self, fig, name):
        self.shown.append((name, fig))


IMAGES = {"a": np.full((32, 32, 3), 90, np.uint8), "b": np.full((32, 32, 3), 140, np.uint8)}


def browser_args(n=3):
    maps = [np.random.default_rng(i).random((32, 32)).astype(np.float32) for i in range(n)]
    masks = [np.zeros((32, 32), bool)] + [m > 0.9 for m in maps[1:]]
    return dict(
        load_image=lambda i: IMAGES["a"],
        scores=np.array([0.2, 0.7, 0.9])[:n],
        labels=np.array([0, 1, 1])[:n],
        maps=maps,
        masks=masks,
        titles=[f"t{i}" for i in range(n)],
        threshold=0.5,
        vmin=0.0,
        vmax=1.0,
        pixel_threshold=0.8,
    )


@pytest.fixture
def no_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError


def test_fallback_when_ipywidgets_is_missing(no_ipywidgets, capsys):
    assert not widgets.available()
    run = FakeRun()
    assert widgets.clahe_explorer(IMAGES, interactive=True, run=run, name="01_x") is None
    assert [n for n, _ in run.shown] == ["01_x"]
    assert "ipywidgets is not installed" in capsys.readouterr().out
    assert (
        widgets.prediction_browser(**browser_args(), interactive=True, run=run, name="05_b") is None
    )
    assert [n for n, _ in run.shown] == ["01_x", "05_b"]
    assert len(run.shown[1][1].axes) >= 9  # three images x three panels (+ colour bar)


def test_interactive_false_draws_static_without_a_note(capsys):
    run = FakeRun()
    assert widgets.clahe_explorer(IMAGES, interactive=False, run=run, name="01_x") is None
    assert run.shown and "not installed" not in capsys.readouterr().out


def test_static_fallback_without_a_run_displays(no_ipywidgets, capsys):
    widgets.clahe_explorer(IMAGES, interactive=False)
    assert (
        "Figure" in capsys.readouterr().out
    )  # IPython's display() outside a kernel prints the repr


def test_widgets_when_available():
    pytest.importorskip("ipywidgets")
    box = widgets.clahe_explorer(IMAGES, 2.0, 8)
    picker, clip, tiles = box.children[0].children
    clip.value = 4.0  # re-draws through the observer without error
    picker.value = "b"
    assert tiles.value == 8
    box = widgets.prediction_browser(**browser_args())
    index, thr, pix = box.children[0].children
    assert index.max == 2 and thr.value == pytest.approx(0.5) and pix.value == pytest.approx(0.8)
    index.value = 2
    thr.value = 0.8
