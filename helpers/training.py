"""What a fit works on: the training patches of :meth:`PatchCore.extract` (the coreset's
projection in memory, the full embeddings in a spill file or a tensor), and one embedded batch."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .data import Geometry
from .projection import Projection
from .spill import FeatureSpill


class EmbeddedBatch(NamedTuple):
    """One batch of :meth:`PatchCore.embed_images`: embeddings of each view (image or rotated
    copy), how each view was made from its original, and the index of that original."""

    embeddings: torch.Tensor  # [B, h, w, D] float32, on the model's device
    geometries: list[Geometry]
    indices: list[int]


class TrainingFeatures:
    """Every training patch as the fit sees it: the coreset's projection in memory (float64,
    ``n_patches`` rows) and the full embeddings in ``spill`` (a file), in ``full`` (a tensor) or,
    when the projection is the identity, nowhere else. ``close()`` removes a temporary spill."""

    def __init__(
        self,
        projection: Projection,
        spill: FeatureSpill | None,
        *,
        grid: tuple[int, int],
        n_images: int,
        n_views: int,
        seconds: float,
        full: torch.Tensor | None = None,
    ):
        self.projection, self.spill, self.full = projection, spill, full
        self.grid, self.n_images, self.n_views, self.seconds = grid, n_images, n_views, seconds

    @property
    def n_patches(self) -> int:
        return self.projection.n

    @property
    def per_image(self) -> int:
        """Patches per view (one image or one rotated copy)."""
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        if self.full is not None:
            return self.full.shape[1]
        return self.spill.dim if self.spill is not None else self.projection.dim

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Full float32 features of patches ``idx`` (CPU for a spill, else where they live)."""
        if self.full is not None:
            return self.full[idx.to(self.full.device)].float()
        if self.spill is not None:
            return self.spill.gather(idx)
        return self.projection.result()[0][idx].float()

    def sample(self, k: int) -> torch.Tensor:
        """``k`` evenly spaced patches' full features (all when there are fewer), CPU float32."""
        idx = torch.linspace(0, self.n_patches - 1, min(k, self.n_patches)).round().long()
        return self.rows(idx).cpu()

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()
