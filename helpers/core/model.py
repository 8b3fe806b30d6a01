"""PatchCore (Roth et al., CVPR 2022) in one class, read top to bottom as the lessons teach it:
``embed`` (an image -> a grid of patch features; notebook 02), ``fit`` (every good training
patch -> the memory bank M, a greedy coreset of them; notebook 03), ``predict`` (each test
patch's nearest neighbour in M, the image score s* re-weighted by eq. 7, the anomaly map in the
ORIGINAL image's pixels; notebook 04), ``save`` / ``load`` (one .safetensors file, no pickle) and
``calibrate`` (a threshold from good images alone, :mod:`helpers.core.bank`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from helpers.core import process, runtime
from helpers.core.backbones import FeatureExtractor
from helpers.core.bank import (
    BankMismatchError,
    MemoryBank,
    bank_digest,
    good_only_threshold,
    header_field,
    held_out_scores,
    read_bank,
    save_bank,
)
from helpers.core.config import Config
from helpers.core.coreset import greedy_coreset
from helpers.core.images import Geometry, Preprocessor, as_list, image_batches
from helpers.core.maps import grids_to_maps
from helpers.core.training import NOT_FINITE, TrainingFeatures, extract, projection_for

__all__ = ["BankMismatchError", "EmbeddedBatch", "PatchCore", "Prediction"]


@dataclass
class Prediction:
    """What :meth:`PatchCore.predict` returns for N images."""

    scores: np.ndarray  # [N] image anomaly scores (NaN for skipped images)
    maps: list[np.ndarray | None]  # per image, float32 [H, W] in ORIGINAL pixels
    patch_scores: np.ndarray  # [N, h, w] nearest-neighbour distance per patch
    geometries: list[Geometry | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


class EmbeddedBatch(NamedTuple):
    """One batch of :meth:`PatchCore.embed_images`: the embeddings of each view (an image or a
    rotated copy), how each view was made from its original, and the index of that original."""

    embeddings: torch.Tensor  # [B, h, w, D] float32, on the model's device
    geometries: list[Geometry]
    indices: list[int]


class PatchCore:
    """``PatchCore(Config(...)).fit(train_images)``; ``.predict(test_images)``. Images: file
    paths, samples (anything with a ``path``), RGB uint8 arrays, or a normalised float tensor
    [N, 3, S, S] with S = input_size."""

    def __init__(self, config: Config | None = None, **overrides):
        if config is None:
            config = Config(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, Config):
            raise TypeError(f"config must be a helpers.Config, got {type(config).__name__}")
        self.config = config
        process.keep_freed_memory()  # once per process: no page faults for every batch's buffers
        self.device = runtime.resolve_device(config.device)
        self.preprocess = Preprocessor.from_config(config)
        self._extractor: FeatureExtractor | None = None
        self.bank: MemoryBank | None = None  # M, set by fit or load
        self.grid: tuple[int, int] | None = None  # patches per image (h, w)
        self.info: dict = {}  # what the fit measured (sizes, seconds)
        self.coreset_indices: torch.Tensor | None = None  # rows of the fit's patches kept
        self.saved_versions: dict = {}  # library versions of a loaded bank
        self.threshold: dict | None = None  # the good-only threshold (calibrate), saved with M
        self.tap_weights: list[float] | None = None  # balance_taps: set by fit, saved with M
        self._embed_cap: int | None = None  # micro-batch after a CUDA out-of-memory

    @property
    def memory_bank(self) -> torch.Tensor | None:
        """The bank's features [M, D]; assigning a tensor makes a new :class:`MemoryBank`."""
        return None if self.bank is None else self.bank.features

    @memory_bank.setter
    def memory_bank(self, features: torch.Tensor | None) -> None:
        self.bank = None if features is None else MemoryBank.for_config(features, self.config)

    # ------------------------------------------------------------------ 1. embed (notebook 02)
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:  # channels-last: faster on GPUs and CPUs (oneDNN), same values
            ext = FeatureExtractor.for_config(self.config).to(self.device)
            self._extractor = ext.to(memory_format=torch.channels_last)
        return self._extractor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> patch embeddings [B, h, w, D] (float32, on device).
        Halves the micro-batch on CUDA out-of-memory."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images as a tensor [B, 3, H, W], got {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        dtype = runtime.autocast_dtype(self.device, self.config.precision)

        def run(step: int) -> torch.Tensor:
            parts = []
            for i in range(0, x.shape[0], step):
                with torch.inference_mode(), runtime.autocast(self.device, dtype):
                    parts.append(self.extractor(x[i : i + step]).float())
            return torch.cat(parts)

        cap = self._embed_cap or (runtime.CPU_MICRO_BATCH if self.device.type == "cpu" else None)
        want = x.shape[0] if cap is None else min(cap, x.shape[0])
        out, used = runtime.run_halving(run, want, "feature extraction (batch)")
        if used < want:
            self._embed_cap = used
        return out if self.tap_weights is None else out * self.tap_scale()

    def tap_scale(self) -> torch.Tensor:
        """:attr:`tap_weights` as one factor per column [D] (each tap's weight over its block)."""
        w = torch.tensor(self.tap_weights, dtype=torch.float32, device=self.device)
        return w.repeat_interleave(torch.tensor(self.config.tap_dims, device=self.device))

    def embed_images(self, images, rotations: int = 1, progress: bool = False,
                     desc: str = "features") -> Iterator[EmbeddedBatch]:  # fmt: skip
        """Embed ``images`` batch by batch (read from disk as they are needed): each image, and
        with ``rotations`` > 1 its copies rotated by 360/rotations degrees, becomes one view.
        The one home of rotate -> preprocess -> embed (fit, predict and the notebooks use it)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) else len(as_list(images))
        batches = image_batches(images, self.config, self.preprocess, rotations)
        if progress:
            total = math.ceil(n / self.config.batch_size)
            batches = runtime.progress(batches, total=total, desc=desc, unit="batch")
        for x, geoms, idx in batches:
            yield EmbeddedBatch(self.embed(x), geoms, idx)

    # ------------------------------------------------------------------ 2. fit (notebook 03)
    def fit(self, images, progress: bool = False, spill_dir=None, threshold=False) -> PatchCore:
        """Build the memory bank from good training images: :meth:`extract` then
        :meth:`build_bank`. The full embeddings wait in a temporary file in ``spill_dir`` (memory
        holds only their 128-d projections); ``threshold``: also :meth:`calibrate` on them."""
        feats = self.extract(images, progress=progress, spill_dir=spill_dir)
        try:
            self.build_bank(feats, progress=progress)
            if threshold:
                self.calibrate(feats, progress=progress)
            return self
        finally:
            feats.close()

    def extract(self, images, progress: bool = False, spill_dir=None) -> TrainingFeatures:
        """Every training patch (:func:`helpers.core.training.extract`, after the memory check):
        its coreset projection in memory, its full embedding in a spill file in ``spill_dir``."""
        feats = extract(self, images, progress, spill_dir)
        self.grid = feats.grid
        return feats

    def build_bank(self, feats: TrainingFeatures, progress: bool = False) -> PatchCore:
        """M = the full features of the greedy coreset of ``feats``' projected patches."""
        c = self.config
        t0 = time.perf_counter()
        n, kw = c.coreset_size(feats.n_patches), dict(seed=c.seed, progress=progress)
        idx = greedy_coreset(feats.projection, n, start_points=c.coreset_start_points, **kw)
        bank = feats.rows(idx).to(self.device).contiguous()
        if not torch.isfinite(bank).all():
            raise ValueError(NOT_FINITE.format(precision=c.precision))
        self.memory_bank, self.coreset_indices, self.grid = bank, idx, feats.grid
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        coreset_s = time.perf_counter() - t0
        self.info = dict(n_train=feats.n_images, n_views=feats.n_views, n_patches=feats.n_patches,
                         bank_size=len(self.bank), features_s=feats.seconds, coreset_s=coreset_s,
                         fit_s=feats.seconds + coreset_s)  # fmt: skip
        process.release_freed_memory()
        return self

    def calibrate(self, feats, false_alarm_rate=None, progress=False, scores=None) -> dict:
        """Set and return :attr:`threshold` from the good training images alone: their held-out
        scores (or ``scores`` computed before), the threshold at ``false_alarm_rate`` (default
        ``config.false_alarm_rate``) and the max of good (:mod:`helpers.core.bank`)."""
        self._check_fitted()
        rate = self.config.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
        info = {"method": "given", "n_images": None if scores is None else len(scores)}
        if scores is None:
            scores, info = held_out_scores(self, feats, progress=progress)
        on = f"{info['n_images']} good training images, {info['method']}"
        self.threshold = {**good_only_threshold(scores, rate), "computed_on": on,
                          "config_hash": self.config.hash(),
                          "bank_sha256": bank_digest(self.bank.features)}  # fmt: skip
        return self.threshold

    def select_bank(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Keep the greedy coreset of ``features`` [N, D] (in memory, one ``grid`` of patches
        after another) as the bank: the rows :meth:`fit` keeps. Returns the kept indices."""
        self.grid = self.grid or (1, features.shape[0])
        proj = projection_for(self.config, features.shape[0], features.shape[1], self.device)
        proj.add(features, block_rows=self.grid[0] * self.grid[1])
        self.build_bank(TrainingFeatures.in_memory(proj, features, self.grid), progress)
        return self.coreset_indices

    # ------------------------------------------------------------------ 3. predict (notebook 04)
    def predict(self, images, maps: bool = True, progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (original pixels) for ``images``."""
        self._check_fitted()
        items = images if isinstance(images, torch.Tensor) else as_list(images)
        n = items.shape[0] if isinstance(items, torch.Tensor) and items.ndim == 4 else len(items)
        scores = np.full(n, np.nan, dtype=np.float32)
        out_maps: list[np.ndarray | None] = [None] * n
        geoms: list[Geometry | None] = [None] * n  # None: an unreadable image (skip_bad_images)
        grids = None
        for emb, g, idx in self.embed_images(items, progress=progress, desc="predict"):
            s, grid = self.score_embeddings(emb)
            if grids is None:
                grids = np.full((n, *grid.shape[1:]), np.nan, dtype=np.float32)
            scores[idx] = s.cpu().numpy()
            grids[idx] = grid.cpu().numpy()
            amaps = self.maps_from_grids(grid, g) if maps else [None] * len(idx)
            for i, geometry, amap in zip(idx, g, amaps):
                geoms[i], out_maps[i] = geometry, amap
        if grids is None:
            grids = np.zeros((n, 0, 0), dtype=np.float32)
        process.release_freed_memory()  # the batches' buffers, kept for reuse until now
        return Prediction(scores, out_maps, grids, geoms)

    def score_embeddings(self, emb: torch.Tensor, bank: MemoryBank | None = None) -> tuple:
        """Patch embeddings [B, h, w, D] -> (image scores s [B], patch-score grid [B, h, w]),
        against this model's bank (or ``bank``: the held-out scores use M without some rows)."""
        self._check_fitted()
        bank, c = (self.bank if bank is None else bank), self.config
        b, h, w, d = emb.shape
        if d != bank.dim:
            raise ValueError(f"embeddings have dimension {d}, the memory bank {bank.dim}")
        patches = emb.reshape(b, h * w, d)  # P(x_test): the test image's patch features
        dist, nn = bank.nearest(patches.reshape(-1, d), 1)  # each patch's nearest m in M
        dist, nn = dist.view(b, h * w), nn.view(b, h * w)
        s_star, pos = dist.max(dim=1)  # s* = max over patches of min over M (eq. 6)
        rows = torch.arange(b, device=dist.device)
        m_test = patches[rows, pos]  # m^test,*: the patch that gives s*
        m_star = nn[rows, pos]  # m*: its nearest neighbour in M (a row index)
        k = min(c.num_neighbors, len(bank))
        if k == 1:  # no re-weighting asked for: s = s*
            return s_star, dist.view(b, h, w)
        _, n_b = bank.nearest(bank.features[m_star], k)  # N_b(m*): m*'s k nearest in M
        n_b[:, 0] = m_star  # m*'s nearest neighbour is m* itself (or an exact duplicate)
        d_n = bank.distance_to(m_test[:, None], n_b)  # ||m^test,* - m|| for m in N_b(m*)
        weight = 1 - torch.softmax(d_n.double(), dim=1)[:, 0].float()  # eq. 7
        return weight * s_star, dist.view(b, h, w)  # s = w * s*

    def maps_from_grids(self, grids, geometries: list) -> list[np.ndarray | None]:
        """Patch-score grids [B, h, w] -> anomaly maps in each image's ORIGINAL pixels, with this
        model's ``input_size`` and ``sigma`` (:func:`helpers.core.maps.grids_to_maps`)."""
        c, dev = self.config, self.device
        return grids_to_maps(grids, geometries, input_size=c.input_size, sigma=c.sigma, device=dev)

    def _check_fitted(self) -> None:
        if self.bank is None:
            raise RuntimeError("this PatchCore has no memory bank: fit(train_images) or load(path)")

    # ------------------------------------------------------------------ 4. save / load
    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write the bank, config, versions and :attr:`threshold` to one .safetensors file,
        atomically; ``metadata`` adds string entries to its header (a run's cache keys)."""
        self._check_fitted()
        meta = dict(metadata or {})
        if self.threshold is not None:
            meta.setdefault("threshold", json.dumps(self.threshold, sort_keys=True))
        meta["tap_weights"] = json.dumps(self.tap_weights)
        return save_bank(path, self.memory_bank, self.config, self.grid, self.info, meta)

    @classmethod
    def load(cls, path: str | Path, config: Config | None = None, **overrides) -> PatchCore:
        """Load a bank written by :meth:`save`; with ``config``, refuse one built with other
        artifact settings (listing them). Runtime fields (device, batch_size) may be overridden."""
        cfg, bank, meta = read_bank(path, config, **overrides)
        model = cls(cfg)
        model.memory_bank = bank.float().to(model.device)
        field = lambda name, default="null": header_field(path, meta, name, default)
        grid = field("grid")
        model.grid = tuple(grid) if grid else None
        model.info, model.saved_versions = field("info", "{}"), field("versions", "{}")
        model.threshold, model.tap_weights = field("threshold"), field("tap_weights")
        if cfg.balance_taps != (model.tap_weights is not None):
            raise BankMismatchError(f"{path}: balance_taps={cfg.balance_taps} but its header "
                                    f"{'lacks' if cfg.balance_taps else 'holds'} tap_weights; "
                                    "refit and save again")  # fmt: skip
        return model
