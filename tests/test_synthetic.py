import hashlib

import cv2
import numpy as np

from helpers.data.synthetic import (
    DEFECTS,
    _radius_profile,
    draw_bend,
    generate_dataset,
    make_sample,
    render_part,
)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_and_complete(tmp_path):
    a = generate_dataset(tmp_path / "a", size=64, n_train=3, n_test_good=2, n_per_defect=2, seed=4)
    b = generate_dataset(tmp_path / "b", size=64, n_train=3, n_test_good=2, n_per_defect=2, seed=4)
    assert _digest(a) == _digest(b)
    cat = a / "metal_nut"
    assert len(list((cat / "train/good").glob("*.png"))) == 3
    for d in DEFECTS:
        assert len(list((cat / "test" / d).glob("*.png"))) == 2
        assert len(list((cat / "ground_truth" / d).glob("*_mask.png"))) == 2
    c = generate_dataset(tmp_path / "c", size=64, n_train=3, n_test_good=2, n_per_defect=2, seed=5)
    assert _digest(c) != _digest(a)


def test_part_is_chiral():
    # no rotation maps the lobe profile onto its mirror image
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    normal = _radius_profile(theta, False, None)
    mirrored = _radius_profile(theta, True, None)
    best = min(np.abs(np.roll(normal, s) - mirrored).mean() for s in range(720))
    assert best > 0.02
    assert min(np.abs(np.roll(normal, s) - normal).mean() for s in (180, 360, 540)) < 1e-9


def test_defect_masks_are_local_except_flip():
    for defect in ("scratch", "color", "bent"):
        img, mask = make_sample(defect, 128, np.random.default_rng(1))
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert 0 < mask.sum() < 0.1 * mask.size, defect
    _, flip_mask = make_sample("flip", 128, np.random.default_rng(1))
    assert flip_mask.sum() > 0.2 * flip_mask.size
    good, none = make_sample("good", 128, np.random.default_rng(1))
    assert none is None


def test_bent_mask_is_the_one_region_where_the_outline_moved():
    for size, seeds in ((128, range(12)), (256, range(12))):
        for seed in seeds:
            img, mask = make_sample("bent", size, np.random.default_rng(seed))
            n, _ = cv2.connectedComponents(mask.astype(np.uint8))
            assert n - 1 == 1, (size, seed, n - 1)  # no lone pixels far from the bend
            # and the region holds (nearly) every pixel where the outline moved
            rng = np.random.default_rng(seed)
            _, bent = render_part(size, rng, bend=draw_bend(rng))
            rng = np.random.default_rng(seed)
            draw_bend(rng)
            _, plain = render_part(size, rng)
            moved = bent ^ plain
            assert (moved & mask).sum() >= 0.9 * moved.sum(), (size, seed)


def test_levels_differ_and_unknown_level_is_refused(tmp_path):
    import pytest

    rng = np.random.default_rng
    hard, _ = make_sample("good", 64, rng(3))
    easy, _ = make_sample("good", 64, rng(3), difficulty="easy")
    assert not np.array_equal(hard, easy)
    with pytest.raises(ValueError, match="difficulty"):
        generate_dataset(tmp_path, size=32, n_train=1, difficulty="medium")
