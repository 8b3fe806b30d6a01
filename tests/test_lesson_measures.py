"""What notebooks 01, 03 and 04 measure with helpers.lessons: a defect's contrast-to-noise ratio
before and after CLAHE (known answers on a drawn image), the bank-size sweep's premise (the
bank's first k rows are the greedy coreset of size k), the largest activation and the cache
sizes behind the CPU timing lesson, and the figures that show them."""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch

from helpers import Config, PatchCore
from helpers.core.coreset import greedy_coreset
from helpers.lessons import timing, viz


def _lightness(grey: int) -> float:
    return float(cv2.cvtColor(np.full((1, 1, 3), grey, np.uint8), cv2.COLOR_RGB2LAB)[0, 0, 0])


def _drawn_part(tmp_path, name: str, defect_grey: int):
    """A 128 px image: black background, a square part in a checkerboard of greys 140 and 160
    (the texture), and a 10 x 30 px defect of ``defect_grey``; saved with its mask."""
    img = np.zeros((128, 128, 3), np.uint8)
    yy, xx = np.mgrid[:128, :128]
    part = (yy >= 24) & (yy < 104) & (xx >= 24) & (xx < 104)
    img[part] = np.where(((yy + xx) % 2 == 0)[part], 140, 160)[:, None]
    mask = np.zeros((128, 128), np.uint8)
    mask[59:69, 49:79] = 255
    img[mask > 0] = defect_grey
    path, mask_path = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
    cv2.imwrite(str(path), img)
    cv2.imwrite(str(mask_path), mask)
    return types.SimpleNamespace(path=path, mask_path=mask_path, defect="scratch")


def test_contrast_texture_and_cnr_known_answers(tmp_path):
    dark = _drawn_part(tmp_path, "dark", 100)
    same = _drawn_part(tmp_path, "same", 150)
    no_mask = types.SimpleNamespace(path=dark.path, mask_path=None, defect="scratch")
    stats = viz.clahe_contrast([dark, no_mask, same], [0, 2.0], tile_grid=4)
    assert stats["names"] == ["scratch/dark.png", "scratch/same.png"]  # no mask: left out
    l100, l140, l150, l160 = (_lightness(g) for g in (100, 140, 150, 160))
    metal_mean, metal_std = (l140 + l160) / 2, (l160 - l140) / 2  # a checkerboard of two values
    contrast, texture, cnr = (stats[k][:, 0] for k in ("contrast", "texture", "cnr"))
    assert contrast[0] == pytest.approx(l100 - metal_mean, abs=0.3)
    assert texture[0] == pytest.approx(metal_std, rel=0.02)
    assert cnr[0] == pytest.approx(abs(l100 - metal_mean) / metal_std, rel=0.03)
    assert contrast[1] == pytest.approx(l150 - metal_mean, abs=0.6)  # lightness of the metal
    assert stats["cnr"].shape == (2, 2)
    assert stats["texture"][0, 1] > texture[0]  # CLAHE stretches the checkerboard too


def test_a_defect_with_no_metal_around_is_left_out(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[:8, :8] = 200  # some light, far from the defect
    mask = np.zeros((64, 64), np.uint8)
    mask[40:44, 40:44] = 255  # on the black background
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    cv2.imwrite(str(tmp_path / "bg_mask.png"), mask)
    s = types.SimpleNamespace(
        path=tmp_path / "bg.png", mask_path=tmp_path / "bg_mask.png", defect="x"
    )
    stats = viz.clahe_contrast([s], [0, 2.0])
    assert stats["names"] == [] and stats["cnr"].shape == (0, 2)


def test_clahe_cases_figure_shows_the_best_and_the_worst(tmp_path):
    stats = viz.clahe_contrast(
        [_drawn_part(tmp_path, "a", 100), _drawn_part(tmp_path, "b", 250)], [0, 2.0], 4
    )
    fig = viz.clahe_cases_figure(stats, 2.0, 4)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and titles[0].startswith("helps") and titles[3].startswith("hurts")
    assert all("CNR" in t for t in titles[1:3] + titles[4:6])


def test_the_banks_first_rows_are_the_smaller_coresets():
    """Notebook 03's sweep scores with bank[:k]: that is the greedy coreset of size k."""
    feats = torch.randn(600, 24, generator=torch.Generator().manual_seed(0))
    model = PatchCore(Config(backbone="mobilenet_v2", device="cpu", coreset_ratio=0.2))
    model.select_bank(feats)
    bank = model.memory_bank
    for k in (1, 7, 30, len(bank)):
        picks = greedy_coreset(
            feats,
            k,
            projection_dim=model.config.coreset_projection_dim,
            start_points=model.config.coreset_start_points,
            seed=model.config.seed,
        )
        assert torch.equal(bank[:k], feats[picks])


def test_largest_activation_known_answer():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    model = types.SimpleNamespace(extractor=conv, embed=lambda x: conv(x))
    # 8 channels x 16 x 16 float32 = 8 KiB for one image; the input is not a layer's output
    assert timing.largest_activation_mb(model, torch.zeros(1, 3, 16, 16)) == 8 * 16 * 16 * 4 / 2**20
    assert (
        timing.largest_activation_mb(model, torch.zeros(4, 3, 16, 16))
        == 4 * 8 * 16 * 16 * 4 / 2**20
    )
    assert not conv[0]._forward_hooks  # the hooks are removed


def test_cpu_caches_names_levels():
    caches = timing.cpu_caches()
    assert all(k[0] == "L" and k[1].isdigit() and isinstance(v, str) for k, v in caches.items())


def test_sweep_and_bank_size_figures():
    rows = [
        {"batch": b, "threads": t, "features_ms": 10.0 * b, "knn_ms": 2.0, "maps_ms": 1.0}
        for b, t in ((1, 2), (2, 2), (1, 1))
    ]
    fig = timing.sweep_figure(rows)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_ylabel() and len(ax.patches) == 3 * 3
    sweep = [
        {"rows": 10, "image_auroc": 0.8, "pixel_auroc": None, "ms_per_image": 1.0},
        {"rows": 100, "image_auroc": 0.9, "pixel_auroc": None, "ms_per_image": 3.0},
    ]
    fig = viz.bank_size_figure(sweep, chosen_rows=100)  # no pixel AUROC: one line only
    acc = fig.axes[0]
    assert [line.get_label() for line in acc.get_lines()][:1] == ["image AUROC"]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
