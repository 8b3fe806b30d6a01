"""A decision threshold chosen from good parts only (no defect, no test label needed).

Each good training image is scored against the memory bank *without the rows that came from
it* (leave-one-image-out): the score a new good part of the same kind would get. The threshold
is then a quantile of these held-out scores at a stated false-alarm rate ``alpha``:

    k = ceil((n + 1) (1 - alpha)),   threshold = just above the k-th smallest held-out score

so that a new good image, as far as it is exchangeable with the n held-out ones, is flagged
(score >= threshold) with probability (n + 1 - k) / (n + 1) <= alpha (the split-conformal
argument; the held-out images still shaped the coreset of the others' rows, so this holds
approximately, and is measured below). The stricter
"max of good" variant sits just above the largest held-out score (expected false alarms
1 / (n + 1)).

Why not refit the bank k times? The rows of M are copies of training patches, so the bank
"built without image i" is taken as M minus the rows that are exact copies of image i's patches:
one scoring pass over the training set instead of k coreset selections. On the real transistor
category (213 images, MobileNetV2 defaults, 2 CPU cores) it took 120 s against 587 s for a true
5-fold refit, its held-out scores were 0.4 % below the refit's on average (the refit's banks
miss a fifth of the images), and its 95 % quantile (2.866) was close to that of the 60 good
test images (2.886): ``benchmarks/RESULTS.md``, "A threshold from good parts only".
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from helpers.core.bank import MemoryBank
from helpers.core.training import TrainingFeatures

METHOD = "leave-one-image-out"


def _row_keys(rows: np.ndarray) -> list[bytes]:
    return [r.tobytes() for r in np.ascontiguousarray(rows, dtype=np.float32)]


def held_out_scores(
    model, feats: TrainingFeatures, progress: bool = False
) -> tuple[np.ndarray, dict]:
    """Each training image's score (its unrotated view) against the bank of ``model`` (a fitted
    :class:`~helpers.core.model.PatchCore`) minus the rows that are exact copies of any of that
    image's patches (any view). Returns (scores [n_images], info). Raises ValueError when some
    bank row is a copy of no training patch: the bank was not built from these features (refit,
    or recompute both)."""
    bank = model.bank
    if bank is None:
        raise RuntimeError("held-out scores need a fitted model (fit or load first)")
    features = bank.features
    keys = {k: j for j, k in enumerate(_row_keys(features.detach().cpu().numpy()))}
    h, w = feats.grid
    per_view = h * w
    views = max(1, feats.n_views // max(1, feats.n_images))  # rotations per image
    per_image = views * per_view
    n = feats.n_images
    scores = np.full(n, np.nan, dtype=np.float32)
    owned = np.zeros(len(bank), dtype=bool)
    group = max(1, 16384 // per_image)  # images read from the feature file at once
    starts = range(0, n, group)
    if progress:
        from helpers.core.runtime import progress as show_progress

        starts = show_progress(starts, total=math.ceil(n / group), desc="held-out", unit="group")
    for start in starts:
        stop = min(n, start + group)
        rows = feats.rows(torch.arange(start * per_image, stop * per_image)).float().cpu()
        for i in range(start, stop):
            block = rows[(i - start) * per_image : (i - start + 1) * per_image]
            own = sorted({keys[k] for k in _row_keys(block.numpy()) if k in keys})
            owned[own] = True
            if own:
                keep = torch.ones(len(bank), dtype=torch.bool, device=features.device)
                keep[own] = False
                sub = MemoryBank.for_config(features[keep], model.config)
            else:
                sub = bank
            emb = block[:per_view].reshape(1, h, w, -1).to(features.device)
            s, _ = model.score_embeddings(emb, bank=sub)
            scores[i] = float(s[0])
    if not owned.all():
        raise ValueError(
            f"{int((~owned).sum())} of {len(bank)} memory-bank rows are copies of no training "
            "patch: the bank was not built from these training features (they were recomputed "
            "after the fit?). Refit the bank on these features, then compute the threshold."
        )
    info = {"method": METHOD, "n_images": n, "views_per_image": views, "bank_rows": len(bank)}
    return scores, info


def _just_above(x: float) -> float:
    """The smallest float32 above ``x``: a threshold that passes an image scoring exactly ``x``
    (scores are float32; an image is flagged when score >= threshold)."""
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def good_only_threshold(scores, false_alarm_rate: float = 0.05) -> dict:
    """The threshold at ``false_alarm_rate`` (and the max-of-good one) from held-out good scores.

    Returns a dict: ``value`` (flag when score >= value), ``false_alarm_rate`` (asked for),
    ``expected_false_alarm_rate`` ((n + 1 - k) / (n + 1), at most the rate asked for when
    ``reachable``), ``rank`` k, ``n_images`` n, ``held_out_flagged`` (held-out images at or above
    ``value``: n - k), ``max_of_good`` (just above the largest held-out score) and its
    ``max_of_good_expected_false_alarm_rate`` 1 / (n + 1). With too few images for the rate
    (k > n) the threshold is the max-of-good one, ``reachable`` is False and a warning says so."""
    alpha = float(false_alarm_rate)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"false_alarm_rate={alpha} must be in (0, 1)")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    n = len(s)
    if n == 0:
        raise ValueError("a good-only threshold needs at least one held-out good score")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    reachable = k <= n
    if not reachable:
        warnings.warn(
            f"a false-alarm rate of {alpha:g} needs at least {math.ceil(1 / alpha) - 1} good "
            f"images; with {n} the threshold is the largest held-out score (expected false "
            f"alarms {1 / (n + 1):.3f})",
            stacklevel=2,
        )
        k = n
    value = _just_above(s[k - 1])
    return {
        "value": value,
        "false_alarm_rate": alpha,
        "expected_false_alarm_rate": (n + 1 - k) / (n + 1),
        "reachable": reachable,
        "rank": k,
        "n_images": n,
        "held_out_flagged": int((s >= value).sum()),
        "max_of_good": _just_above(s[-1]),
        "max_of_good_expected_false_alarm_rate": 1 / (n + 1),
        "method": METHOD,
    }


def bank_digest(features: torch.Tensor) -> str:
    """sha256 of the bank's float32 rows: ties a saved threshold to the bank it was made for."""
    import hashlib

    arr = np.ascontiguousarray(features.detach().float().cpu().numpy())
    return hashlib.sha256(arr.tobytes()).hexdigest()
