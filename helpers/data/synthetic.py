"""A deterministic synthetic "metal nut" set in MVTec AD layout (notebook 01's data offline): a
brushed-metal ring, rotated at random, with four saw-tooth lobes (so a mirrored ``flip`` cannot be
turned back); defects ``scratch``, ``color``, ``bent``, ``flip``. ``"hard"`` (the lessons'): parts
vary in position, size and light, defects from clear to faint; ``"easy"``: all clear (tests)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("bent", "color", "flip", "scratch")
_VERSION = 5

# Per level: how good parts vary besides their angle (``jitter``: centre offset and radius as
# fractions, light direction in radians, brightness gain) and the defects' severity ranges.
LEVELS = {
    "hard": dict(jitter=dict(offset=0.02, scale=0.03, light_angle=0.3, gain=0.08),
                 bend=(0.06, 0.18), scratch_opacity=(0.06, 1.0), scratch_length=(0.06, 0.2),
                 stain_opacity=(0.1, 0.75)),
    "easy": dict(jitter=dict(offset=0.01, scale=0.0, light_angle=0.0, gain=0.0),
                 bend=(0.12, 0.18), scratch_opacity=(1.0, 1.0), scratch_length=(0.12, 0.22),
                 stain_opacity=(0.75, 0.75)),
}  # fmt: skip


def _level(difficulty: str) -> dict:
    if difficulty not in LEVELS:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {sorted(LEVELS)}")
    return LEVELS[difficulty]


def _radius_profile(theta: np.ndarray, mirrored: bool, bend: tuple | None) -> np.ndarray:
    """Outer radius (as a fraction of the part radius) at angle theta."""
    t = -theta if mirrored else theta
    phase = (t * 4 / (2 * np.pi)) % 1.0  # four lobes
    saw = np.where(phase < 0.8, phase / 0.8, (1.0 - phase) / 0.2)  # slow rise, sharp drop
    r = 0.80 + 0.20 * saw
    if bend is not None:
        angle, amount = bend
        d = np.angle(np.exp(1j * (theta - angle)))
        r = r + amount * np.exp(-0.5 * (d / 0.22) ** 2)
    return r


def render_part(size: int, rng: np.random.Generator, mirrored: bool = False,
                bend: tuple | None = None, difficulty: str = "hard") -> tuple:  # fmt: skip
    """RGB uint8 image [size, size, 3] and the part's boolean mask. Every part lies at its own
    angle and, within its level's ``jitter``, its own position, size and lighting."""
    # render at 2x, then area-downsample for smooth edges (above 512 px edges are smooth enough
    # at 1x, and 2x would cost 4x the time of a 1024-px set)
    ss = 2 * size if size <= 512 else size
    j = _level(difficulty)["jitter"]
    rot = rng.uniform(0, 2 * np.pi)
    cx, cy = ss / 2 + np.clip(rng.normal(0, j["offset"], 2), -2 * j["offset"], 2 * j["offset"]) * ss
    radius = ss * 0.36 * rng.uniform(1 - j["scale"], 1 + j["scale"])
    light_dir = 0.8 + rng.normal(0, j["light_angle"])
    gain = rng.uniform(1 - j["gain"], 1 + j["gain"])
    yy, xx = np.mgrid[0:ss, 0:ss].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    rr = np.hypot(dx, dy) / radius
    theta = np.arctan2(dy, dx) - rot
    outer = _radius_profile(theta, mirrored, bend)
    part = (rr < outer) & (rr > 0.32)
    # brushed metal: concentric grain + fine noise + directional light
    grain = 0.06 * np.sin(rr * 90 + rng.uniform(0, 6.28)) + 0.04 * rng.standard_normal((ss, ss))
    grain = cv2.GaussianBlur(grain.astype(np.float32), (0, 0), 1.2)
    light = gain * (0.55 + 0.25 * np.cos(np.arctan2(dy, dx) - light_dir) * np.clip(rr, 0, 1))
    bevel = np.clip((outer - rr) * 6, 0, 1) * np.clip((rr - 0.32) * 8, 0, 1)
    base = light * (0.6 + 0.4 * bevel) + grain
    # a darker inner ring (the nut's collar)
    base = np.where((rr > 0.32) & (rr < 0.45), base * 0.75, base)
    tint = np.array([0.93, 0.95, 1.0], dtype=np.float32)
    img = np.clip(base[..., None] * tint, 0, 1)
    background = 0.08 + 0.02 * rng.standard_normal((ss, ss, 1)).astype(np.float32)
    img = np.where(part[..., None], img, background)
    down = lambda a: cv2.resize(a.astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    return down(np.clip(img, 0, 1) * 255), down(part * 255) > 127


def _point_on_part(mask: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[int, int]:
    inner = cv2.erode(mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    ys, xs = np.nonzero(inner if inner.any() else mask)
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def draw_bend(rng: np.random.Generator, difficulty: str = "hard") -> tuple[float, float]:
    """Where a ``bent`` part's lobe is pushed out (angle) and how far (in part radii)."""
    return rng.uniform(0, 2 * np.pi), rng.uniform(*_level(difficulty)["bend"])


def make_sample(defect: str, size: int, rng: np.random.Generator, difficulty="hard") -> tuple:
    """One image and its defect mask (None for good)."""
    level = _level(difficulty)
    if defect == "good":
        return render_part(size, rng, difficulty=difficulty)[0], None
    if defect == "flip":  # the whole part is the defect
        return render_part(size, rng, mirrored=True, difficulty=difficulty)
    if defect == "bent":
        state = rng.bit_generator.state
        bend = draw_bend(rng, difficulty)
        img, part = render_part(size, rng, bend=bend, difficulty=difficulty)
        rng.bit_generator.state = state  # same part without the bend, for the mask
        draw_bend(rng, difficulty)
        _, plain = render_part(size, rng, difficulty=difficulty)
        diff = (part ^ plain).astype(np.uint8)
        mask = cv2.dilate(diff, np.ones((5, 5), np.uint8))
        # the bump's far tails move the outline by a fraction of a pixel, which flips lone edge
        # pixels up to 50 degrees from the bend: the defect is the one large region
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
        if n > 2:
            mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        return img, mask > 0
    img, part = render_part(size, rng, difficulty=difficulty)
    mask = np.zeros(part.shape, np.uint8)
    if defect == "scratch":
        x0, y0 = _point_on_part(part, rng, size // 16)
        ang, length = rng.uniform(0, np.pi), rng.uniform(*level["scratch_length"]) * size
        x1, y1 = int(x0 + length * np.cos(ang)), int(y0 + length * np.sin(ang))
        shade = np.array((235, 235, 240) if rng.random() < 0.5 else (25, 25, 30), np.float32)
        opacity = rng.uniform(*level["scratch_opacity"])
        width = max(1, size // 128)
        line = np.zeros(part.shape, np.uint8)
        cv2.line(line, (x0, y0), (x1, y1), 255, width, cv2.LINE_AA)
        cv2.line(mask, (x0, y0), (x1, y1), 255, width + 2)
        m = (mask > 0) & part
        alpha = (line.astype(np.float32) / 255 * opacity * part)[..., None]
        img = (img * (1 - alpha) + shade * alpha).round().astype(np.uint8)
    elif defect == "color":
        x0, y0 = _point_on_part(part, rng, size // 12)
        axes = (int(rng.uniform(0.04, 0.08) * size), int(rng.uniform(0.03, 0.06) * size))
        cv2.ellipse(mask, (x0, y0), axes, rng.uniform(0, 180), 0, 360, 255, -1)
        m = (mask > 0) & part
        colour = np.array(
            [(190, 60, 40), (60, 90, 200), (200, 160, 40)][rng.integers(3)], np.float32
        )
        opacity = rng.uniform(*level["stain_opacity"])
        alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.5)[..., None] * opacity
        img = (img * (1 - alpha) + colour * alpha).astype(np.uint8)
    else:
        raise ValueError(f"unknown defect {defect!r}; choose one of {DEFECTS}")
    return img, m


def generate_dataset(root: str | Path, category: str = "metal_nut", *, size: int = 256,
                     n_train: int = 24, n_test_good: int = 8, n_per_defect: int = 6,
                     seed: int = 0, defects: tuple[str, ...] = DEFECTS,
                     difficulty: str = "hard") -> Path:  # fmt: skip
    """Write the set under ``root/category`` (skipped when an identical set is already there).
    ``difficulty``: a key of :data:`LEVELS`. Returns ``root``."""
    _level(difficulty)
    root = Path(root)
    cat, stamp = root / category, root / category / "synthetic.json"
    params = dict(version=_VERSION, size=size, n_train=n_train, n_test_good=n_test_good,
                  n_per_defect=n_per_defect, seed=seed, defects=list(defects),
                  difficulty=difficulty)  # fmt: skip
    if stamp.is_file():
        try:
            old = json.loads(stamp.read_text())
        except ValueError:
            old = None
        if old == params:
            return root
        # another synthetic set was generated here: remove its images and masks first, so that
        # a smaller set does not keep the old set's extra files
        for sub in ("train", "test", "ground_truth"):
            for f in (cat / sub).glob("*/*.png"):
                f.unlink()
        stamp.unlink()
    plan = [("train", "good", n_train), ("test", "good", n_test_good)]
    plan += [("test", d, n_per_defect) for d in defects]
    jobs = []
    for split, defect, count in plan:
        (cat / split / defect).mkdir(parents=True, exist_ok=True)
        if defect != "good":
            (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        kind = (["train", "test"].index(split), ("good", *defects).index(defect))
        jobs += [(split, defect, i, (seed, *kind, i)) for i in range(count)]

    def write(job) -> None:
        split, defect, i, key = job
        img, mask = make_sample(defect, size, np.random.default_rng(key), difficulty)
        cv2.imwrite(
            str(cat / split / defect / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        )
        if mask is not None:
            name = cat / "ground_truth" / defect / f"{i:03d}_mask.png"
            cv2.imwrite(str(name), mask.astype(np.uint8) * 255)

    # each image has its own seeded generator, so the set is the same in any order; numpy and
    # OpenCV release the GIL on whole-image work, so threads use every core
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(write, jobs))
    stamp.write_text(json.dumps(params))
    return root
