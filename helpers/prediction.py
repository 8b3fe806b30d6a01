"""The one result type of scoring test images: :class:`Prediction`.

``PatchCore.predict`` fills the model's part (scores, maps, patch scores, geometries); a cached
run (``Run.predictions``) also fills what it knows about the test set and the timing (labels,
defect names, paths, seconds, batch size, device)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .data import Geometry


@dataclass
class Prediction:
    """Scores and anomaly maps of a set of images."""

    scores: np.ndarray  # [N] image anomaly scores (NaN for skipped images)
    maps: list[np.ndarray | None]  # per image, float32 [H, W] in ORIGINAL pixels
    patch_scores: np.ndarray  # [N, h, w] nearest-neighbour distance per patch
    geometries: list[Geometry | None] = field(default_factory=list)
    # what a run knows about the test set (empty / None for a plain predict):
    labels: np.ndarray | None = None  # [N] 0 good, 1 defective
    defects: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seconds: float = math.nan  # wall time of predict + maps when computed
    batch_size: int | None = None
    device: str = ""

    def __len__(self) -> int:
        return len(self.scores)
