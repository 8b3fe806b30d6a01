import warnings

import numpy as np
import pytest

from helpers.evaluation import metrics


def test_image_auroc_known_answers():
    assert metrics.image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.image_auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.image_auroc([0, 1], [0.5, 0.5]) == 0.5
    # pairs (neg, pos): (0.1,0.35) ok, (0.1,0.8) ok, (0.4,0.35) wrong, (0.4,0.8) ok -> 3/4
    assert metrics.image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_image_auroc_one_class_is_null_with_warning():
    with pytest.warns(UserWarning, match="good and defective"):
        assert metrics.image_auroc([1, 1, 1], [0.1, 0.2, 0.3]) is None


def brute_force_aupro(masks, maps, max_fpr=0.3, steps=4000):
    from scipy import ndimage

    regions, normal = [], []
    for m, a in zip(masks, maps):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [a[lab == i] for i in range(1, n + 1)]
        normal.append(a[~m])
    normal = np.concatenate(normal)
    thresholds = np.linspace(
        max(a.max() for a in maps) + 1e-6, min(a.min() for a in maps) - 1e-6, steps
    )
    fpr = np.array([(normal >= t).mean() for t in thresholds])
    pro = np.array([np.mean([(r >= t).mean() for r in regions]) for t in thresholds])
    keep = fpr <= max_fpr
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[pro[keep], np.interp(max_fpr, fpr, pro)]
    return np.trapezoid(y, x) / max_fpr


def hand_made():
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for k in range(3):
        m = np.zeros((32, 32), bool)
        if k > 0:
            m[4:10, 4:12] = True  # region 1
            m[20:30, 18 + k : 22 + k] = True  # region 2
        a = rng.random((32, 32)) * 0.6 + m * rng.random((32, 32)) * 0.8
        masks.append(m)
        maps.append(a.astype(np.float32))
    return masks, maps


def test_aupro_matches_threshold_sweep():
    masks, maps = hand_made()
    assert metrics.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=2e-3)


def test_aupro_perfect_and_inverted_maps():
    masks, _ = hand_made()
    perfect = [m.astype(np.float32) for m in masks]
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    inverted = [1 - p for p in perfect]
    assert metrics.aupro(masks, inverted) == pytest.approx(0.0)


def test_pro_weights_regions_equally():
    # one tiny region fully found, one big region missed -> PRO 0.5 at low FPR
    m = np.zeros((40, 40), bool)
    m[0:2, 0:2] = True
    m[10:40, 10:40] = True
    a = np.zeros((40, 40), np.float32)
    a[0:2, 0:2] = 1.0
    fpr, pro = metrics.pro_curve([m], [a])
    assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0


def test_pixel_auroc_and_nulls():
    masks, maps = hand_made()
    v = metrics.pixel_auroc(masks, maps)
    assert 0.5 < v < 1.0
    with pytest.warns(UserWarning):
        assert metrics.pixel_auroc([None, None], [np.zeros((2, 2))] * 2) is None
    with pytest.warns(UserWarning):
        assert metrics.aupro([np.zeros((4, 4), bool)], [np.random.rand(4, 4)]) is None
    with pytest.raises(ValueError, match="shape"):
        metrics.pixel_auroc([np.zeros((4, 4), bool)], [np.zeros((5, 4))])


def test_f1_threshold_known_answer():
    thr, f1 = metrics.f1_threshold([0, 0, 1, 1, 1], [0.1, 0.3, 0.2, 0.6, 0.9])
    # threshold 0.2 -> predicts 3 of 3 positives + 1 false positive: F1 = 6/7 (the best)
    assert thr == pytest.approx(0.2) and f1 == pytest.approx(6 / 7)


def test_per_defect_auroc():
    out = metrics.per_defect_auroc(["good", "good", "a", "a", "b"], [0.1, 0.2, 0.9, 0.8, 0.15])
    assert out == {"a": 1.0, "b": 0.5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert metrics.per_defect_auroc(["a", "b"], [1, 2]) == {"a": None, "b": None}


def test_evaluate_without_masks_reports_nulls():
    from pathlib import Path

    from helpers.core.model import Prediction
    from helpers.data.mvtec import Sample
    from helpers.evaluation.report import evaluate

    samples = [
        Sample(Path("a.png"), "test", "good", None),
        Sample(Path("b.png"), "test", "x", None),
    ]
    pred = Prediction(np.array([0.1, 0.9]), [np.zeros((4, 4))] * 2, np.zeros((2, 1, 1)))
    with pytest.warns(UserWarning, match="no ground-truth masks"):
        r = evaluate(samples, pred, quiet=False)
    assert r["image_auroc"] == 1.0 and r["pixel_auroc"] is None and r["aupro"] is None
    assert r["pixel_f1_threshold"] is None and r["per_defect"] == {"x": 1.0}


def test_binned_pixel_metrics_match_the_exact_ones_on_continuous_maps():
    """The histogram metrics (bounded memory) against sklearn's exact AUROC and the exact PRO
    curve integrated the same way."""
    from sklearn.metrics import roc_auc_score

    masks, maps = hand_made()
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-5)
    fpr, pro = metrics.pro_curve(masks, maps)
    assert metrics.aupro(masks, maps) == pytest.approx(metrics._area(fpr, pro, 0.3), abs=1e-4)


def test_pixel_auroc_counts_ties_as_one_half():
    masks = [np.array([[True, False], [False, False]])]
    maps = [np.array([[0.5, 0.5], [0.0, 1.0]], np.float32)]
    # defect 0.5 vs normals 0.5 (tie: 1/2), 0.0 (win), 1.0 (loss) -> 1.5 / 3
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(0.5)


def test_per_defect_pixel_metrics_use_that_type_with_the_good_images():
    masks, maps = hand_made()
    perfect = [m.astype(np.float32) for m in masks]
    out = metrics.pixel_metrics(["good", "a", "b"], masks, [maps[0], perfect[1], maps[2]])
    assert out["per_defect_pixel"]["a"]["pixel_auroc"] == pytest.approx(1.0)
    alone_b = metrics.pixel_auroc([masks[0], masks[2]], [maps[0], maps[2]])
    assert out["per_defect_pixel"]["b"]["pixel_auroc"] == pytest.approx(alone_b)
    assert out["per_defect_pixel"]["b"]["pixel_auroc"] < 0.99


def test_region_overlaps_and_pro_at_known_answers():
    # two regions: a 2x2 square fully above 0.5, a 1x4 bar with one pixel above it
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True
    m[4, 1:5] = True
    a = np.zeros((6, 6), np.float32)
    a[0:2, 0:2] = 1.0
    a[4, 1] = 0.9
    a[2, 5] = 0.7  # one normal pixel above 0.5
    np.testing.assert_allclose(metrics.region_overlaps([m], [a], 0.5), [1.0, 0.25])
    good = np.zeros((6, 6), bool)
    pro, fpr = metrics.pro_at([m, good], [a, np.zeros((6, 6))], 0.5)
    assert pro == pytest.approx(0.625) and fpr == pytest.approx(1 / (28 + 36))  # 8 defect pixels
    assert metrics.pro_at([good], [a], 0.5) is None  # no defect region
    assert metrics.region_overlaps([None], [a], 0.5).size == 0


def test_pro_at_is_a_point_of_the_exact_pro_curve():
    masks, maps = hand_made()
    fpr, pro = metrics.pro_curve(masks, maps)
    levels = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]  # descending
    for k in (1, 7, 100, 900, len(levels)):
        p, f = metrics.pro_at(masks, maps, float(levels[k - 1]))
        assert p == pytest.approx(pro[k]) and f == pytest.approx(fpr[k])


def test_aupro_is_the_area_under_pro_at():
    """The binned AUPRO against the trapezoid area of exact pro_at points on a dense sweep."""
    masks, maps = hand_made()
    sweep = np.linspace(max(a.max() for a in maps) + 1e-6, min(a.min() for a in maps), 3000)
    f, p = np.array([metrics.pro_at(masks, maps, t)[::-1] for t in sweep]).T
    assert metrics.aupro(masks, maps) == pytest.approx(metrics._area(f, p, 0.3), abs=2e-3)


def test_per_defect_pixel_known_answers_counts_and_nulls():
    masks, maps = hand_made()
    perfect = [m.astype(np.float32) for m in masks]
    inverted = [1 - p for p in perfect]
    out = metrics.pixel_metrics(
        ["good", "a", "b", "c"],
        [*masks, None],
        [maps[0], perfect[1], inverted[2], maps[0]],
    )["per_defect_pixel"]
    assert out["a"]["pixel_auroc"] == pytest.approx(1.0) and out["a"]["aupro"] == pytest.approx(1.0)
    assert out["b"]["pixel_auroc"] < 0.5 and out["b"]["aupro"] == pytest.approx(0.0)
    assert out["a"]["regions"] == 2 and out["a"]["defect_pixels"] == int(masks[1].sum())
    # a type without masks: its metrics are null, never made up
    assert out["c"] == {"pixel_auroc": None, "aupro": None, "regions": 0, "defect_pixels": 0}
    # no good image with a mask and a maskless type: still null, no crash
    only = metrics.pixel_metrics(["a", "c"], [masks[1], None], [maps[1], maps[0]])
    assert only["per_defect_pixel"]["c"]["pixel_auroc"] is None


def test_pixel_metrics_fpr_limit():
    masks, maps = hand_made()
    for limit in (0.05, 0.3):
        out = metrics.pixel_metrics(["good", "a", "a"], masks, maps, max_fpr=limit)
        assert out["aupro"] == pytest.approx(metrics.aupro(masks, maps, max_fpr=limit))
        assert out["per_defect_pixel"]["a"]["aupro"] == pytest.approx(out["aupro"])
    assert metrics.aupro(masks, maps, max_fpr=0.05) < metrics.aupro(masks, maps, max_fpr=0.3)
