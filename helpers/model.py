"""The PatchCore object: ``fit`` a memory bank on good images, ``predict`` image scores and
anomaly maps in original image pixels, ``save`` / ``load`` the bank without pickle. Scoring
against the bank (kNN, eq. 7) is :class:`helpers.scoring.BankScoring`, which it inherits."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from . import fit_memory
from .bank_file import BankMismatchError, read_bank, save_bank, versions
from .config import Config
from .coreset import greedy_coreset
from .data import Geometry, Preprocessor
from .features import FeatureExtractor
from .fit_memory import available_ram
from .images import as_list, image_batches, rotate_image
from .maps import grids_to_maps
from .prediction import Prediction
from .projection import Projection
from .runtime import CPU_MICRO_BATCH, autocast, autocast_dtype, resolve_device, run_halving
from .runtime import progress as show_progress
from .scoring import BankScoring
from .spill import FeatureSpill
from .training import EmbeddedBatch, TrainingFeatures

# re-exported: where they lived before the split
__all__ = [
    "BankMismatchError",
    "EmbeddedBatch",
    "PatchCore",
    "Prediction",
    "TrainingFeatures",
    "available_ram",
    "rotate_image",
    "versions",
]


class PatchCore(BankScoring):
    """``PatchCore(Config(...)).fit(train_images)``; ``.predict(test_images)``.

    Images may be file paths, :class:`~helpers.data.Sample` objects, RGB uint8 arrays [H, W, 3]
    (or a list of them), or an already normalised float tensor [N, 3, S, S] with S = input_size.
    """

    def __init__(self, config: Config | None = None, **overrides):
        if config is None:
            config = Config(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, Config):
            raise TypeError(f"config must be a helpers.Config, got {type(config).__name__}")
        self.config = config
        self.device = resolve_device(config.device)
        self.preprocess = Preprocessor.from_config(config)
        self._extractor: FeatureExtractor | None = None
        self.memory_bank = None  # with what is derived from it (helpers.scoring)
        self.grid: tuple[int, int] | None = None
        self.info: dict = {}
        self.coreset_indices: torch.Tensor | None = None  # rows of the fit's patches kept
        self.saved_versions: dict = {}  # library versions of a loaded bank
        self._embed_cap: int | None = None  # micro-batch after a CUDA out-of-memory
        self._knn_mb = config.knn_memory_mb  # kNN block budget (halved on out-of-memory)

    # ------------------------------------------------------------------ features
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            c = self.config
            ext = FeatureExtractor(
                c.backbone,
                c.layers,
                weights=c.weights,
                patch_size=c.patch_size,
                pretrain_embed_dim=c.pretrain_embed_dim,
                target_embed_dim=c.target_embed_dim,
            ).to(self.device)
            if self.device.type == "cuda":
                ext = ext.to(memory_format=torch.channels_last)
            self._extractor = ext
        return self._extractor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> patch embeddings [B, h, w, D] (float32, on device).
        Halves the micro-batch on CUDA out-of-memory."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected images as a tensor [B, 3, H, W], got shape {tuple(x.shape)}"
            )
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(self.device, self.config.precision)

        def run(step: int) -> torch.Tensor:
            parts = []
            for i in range(0, x.shape[0], step):
                with torch.inference_mode(), autocast(self.device, dtype):
                    parts.append(self.extractor(x[i : i + step]).float())
            return torch.cat(parts)

        cap = self._embed_cap  # set once an out-of-memory forced a smaller batch
        if cap is None and self.device.type == "cpu":
            cap = CPU_MICRO_BATCH
        want = x.shape[0] if cap is None else min(cap, x.shape[0])
        out, used = run_halving(run, want, "feature extraction (batch)")
        if used < want:
            self._embed_cap = used
        return out

    # ------------------------------------------------------------------ seams
    def embed_images(
        self, images, rotations: int = 1, progress: bool = False, desc: str = "features"
    ) -> Iterator[EmbeddedBatch]:
        """Embed ``images`` batch by batch (read from disk as they are needed): each image, and
        with ``rotations`` > 1 its copies rotated by 360/rotations degrees, becomes one view.
        The one home of rotate -> preprocess -> embed (fit, predict and the notebooks use it)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) else len(as_list(images))
        batches = image_batches(images, self.config, self.preprocess, rotations)
        if progress:
            batches = show_progress(
                batches, total=math.ceil(n / self.config.batch_size), desc=desc, unit="batch"
            )
        for x, geoms, idx in batches:
            yield EmbeddedBatch(self.embed(x), geoms, idx)

    def maps_from_grids(
        self, grids: torch.Tensor | np.ndarray, geometries: list[Geometry | None]
    ) -> list[np.ndarray | None]:
        """Patch-score grids [B, h, w] -> anomaly maps in each image's ORIGINAL pixels, with this
        model's ``input_size`` and ``sigma`` (see :func:`helpers.maps.grids_to_maps`)."""
        return grids_to_maps(
            grids,
            geometries,
            input_size=self.config.input_size,
            sigma=self.config.sigma,
            device=self.device,
        )

    # ------------------------------------------------------------------ fit
    def fit(self, images, progress: bool = False, spill_dir: str | Path | None = None) -> PatchCore:
        """Build the memory bank from good training images: :meth:`extract` (streaming) then
        :meth:`build_bank`. Memory grows with the coreset's projection (8 bytes x 128 per patch),
        not with the full embeddings, which wait in a temporary file in ``spill_dir`` (default:
        the system's temporary folder) and are read back only for the kept patches."""
        feats = self.extract(images, progress=progress, spill_dir=spill_dir)
        try:
            return self.build_bank(feats, progress=progress)
        finally:
            feats.close()

    def extract(
        self, images, progress: bool = False, spill_dir: str | Path | None = None
    ) -> TrainingFeatures:
        """Embed the training images (and their ``train_rotations`` rotated copies) batch by batch,
        keeping each patch's coreset projection in memory and, when that projection is not the
        identity, the full embedding in a spill file. Checks the memory estimate first."""
        c = self.config
        items = images if isinstance(images, torch.Tensor) else as_list(images)
        n = items.shape[0] if isinstance(items, torch.Tensor) else len(items)
        if not isinstance(items, torch.Tensor):
            self.check_fit_memory(n)
        t0 = time.perf_counter()
        views, proj, spill = 0, None, None
        rotations = c.rotations_for(n)
        try:
            for batch in self.embed_images(items, rotations, progress):
                emb = batch.embeddings
                if proj is None:
                    self.grid = tuple(emb.shape[1:3])
                    proj = self._projection(
                        n * rotations * emb.shape[1] * emb.shape[2], emb.shape[-1]
                    )
                    if proj.matrix is not None:
                        spill = FeatureSpill(emb.shape[-1], spill_dir)
                for view in emb:
                    proj.add(view.reshape(-1, emb.shape[-1]))
                if spill is not None:
                    spill.append(emb.reshape(-1, emb.shape[-1]))
                views += emb.shape[0]
        except BaseException:
            if spill is not None:
                spill.close()
            raise
        if proj is None:
            raise ValueError("no training image could be read")
        return TrainingFeatures(
            proj,
            spill,
            grid=self.grid,
            n_images=views // rotations,
            n_views=views,
            seconds=time.perf_counter() - t0,
        )

    def build_bank(self, feats: TrainingFeatures, progress: bool = False) -> PatchCore:
        """Greedy coreset on ``feats``' projection; the bank is the kept patches' full features."""
        c = self.config
        t0 = time.perf_counter()
        n_select = c.coreset_size(feats.n_patches)
        idx = greedy_coreset(
            None,
            n_select,
            start_points=c.coreset_start_points,
            seed=c.seed,
            progress=progress,
            projection=feats.projection,
        )
        self.memory_bank = feats.rows(idx).to(self.device).contiguous()
        self.coreset_indices = idx
        self.grid = feats.grid
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        coreset_s = time.perf_counter() - t0
        self.info = {
            "n_train": feats.n_images,
            "n_views": feats.n_views,
            "n_patches": feats.n_patches,
            "bank_size": int(self.memory_bank.shape[0]),
            "features_s": feats.seconds,
            "coreset_s": coreset_s,
            "fit_s": feats.seconds + coreset_s,
        }
        return self

    def _projection(self, capacity: int, dim: int) -> Projection:
        c = self.config
        return Projection(dim, c.coreset_projection_dim, c.seed, capacity, self.device)

    def select_bank(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Keep the greedy coreset of ``features`` [N, D] (all patches in memory, ``grid`` rows per
        view, in order) as the memory bank: the same rows :meth:`fit` keeps. Returns the kept
        indices (also in ``coreset_indices``)."""
        per_view = self.grid[0] * self.grid[1] if self.grid else features.shape[0]
        proj = self._projection(features.shape[0], features.shape[1])
        proj.add(features, block_rows=per_view)
        grid = self.grid or (1, features.shape[0])
        feats = TrainingFeatures(
            proj, None, grid=grid, n_images=0, n_views=0, seconds=0.0, full=features
        )
        self.build_bank(feats, progress)
        return self.coreset_indices

    def fit_memory_estimate(self, n_images: int) -> dict[str, int]:
        """Bytes a fit of ``n_images`` needs (:func:`helpers.fit_memory.fit_memory_estimate`)."""
        return fit_memory.fit_memory_estimate(self.config, self.device, n_images)

    def check_fit_memory(self, n_images: int) -> dict[str, int]:
        """Refuse a fit larger than the free memory (see :mod:`helpers.fit_memory`); returns the
        estimate checked."""
        return fit_memory.check_fit_memory(self.config, self.device, n_images)

    # ------------------------------------------------------------------ predict
    def predict(self, images, maps: bool = True, progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (original pixels) for ``images``."""
        self._check_fitted()
        items = images if isinstance(images, torch.Tensor) else as_list(images)
        n = items.shape[0] if isinstance(items, torch.Tensor) and items.ndim == 4 else len(items)
        scores = np.full(n, np.nan, dtype=np.float32)
        out_maps: list[np.ndarray | None] = [None] * n
        geoms: list[Geometry | None] = [None] * n
        grids = None
        for emb, g, idx in self.embed_images(items, progress=progress, desc="predict"):
            s, grid = self.score_embeddings(emb)
            if grids is None:
                grids = np.full((n, *grid.shape[1:]), np.nan, dtype=np.float32)
            scores[idx] = s.cpu().numpy()
            grids[idx] = grid.cpu().numpy()
            if maps:
                for i, amap in zip(idx, self.maps_from_grids(grid, g)):
                    out_maps[i] = amap
            for j, i in enumerate(idx):
                geoms[i] = g[j]
        if grids is None:
            grids = np.zeros((n, 0, 0), dtype=np.float32)
        return Prediction(scores, out_maps, grids, geoms)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the memory bank, config and versions to one .safetensors file, atomically."""
        self._check_fitted()
        return save_bank(path, self.memory_bank, self.config, self.grid, self.info)

    @classmethod
    def load(cls, path: str | Path, config: Config | None = None, **overrides) -> PatchCore:
        """Load a bank written by :meth:`save`. With ``config``, refuse a bank built with other
        artifact settings (backbone, layers, sizes...) and list the differences. Runtime fields
        (device, batch_size, ...) may be overridden."""
        cfg, bank, meta = read_bank(path, config, **overrides)
        model = cls(cfg)
        model.memory_bank = bank.float().to(model.device)
        grid = json.loads(meta.get("grid", "null"))
        model.grid = tuple(grid) if grid else None
        model.info = json.loads(meta.get("info", "{}"))
        model.saved_versions = json.loads(meta.get("versions", "{}"))
        return model
