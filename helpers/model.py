"""The PatchCore object: ``fit`` a memory bank on good images, ``predict`` image scores and
anomaly maps in original image pixels, ``save`` / ``load`` the bank without pickle."""
from __future__ import annotations

import json
import math
import platform
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from .config import Config
from .coreset import greedy_coreset
from .data import Geometry, ImageReadError, Preprocessor, Sample, load_image
from .features import FeatureExtractor
from .io import load_tensors, save_tensors
from .knn import knn, pair_distance
from .maps import patch_scores_to_maps
from .runtime import autocast, autocast_dtype, resolve_device, run_halving

BANK_FORMAT = "patchcore-memory-bank"
BANK_FORMAT_VERSION = "1"


class BankMismatchError(ValueError):
    """A saved memory bank does not match the configuration it is loaded for."""


@dataclass
class Prediction:
    scores: np.ndarray                  # [N] image anomaly scores (NaN for skipped images)
    maps: list[np.ndarray | None]       # per image, float32 [H, W] in ORIGINAL pixels
    patch_scores: np.ndarray            # [N, h, w] nearest-neighbour distance per patch
    geometries: list[Geometry | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)


def versions() -> dict[str, str]:
    import sklearn
    import torchvision
    from . import __version__
    return {"helpers": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "opencv": cv2.__version__, "scikit-learn": sklearn.__version__,
            "python": platform.python_version()}


def rotate_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, border replicated (for train_rotations)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class PatchCore:
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
        self.memory_bank = None
        self.grid: tuple[int, int] | None = None
        self.info: dict = {}

    # ------------------------------------------------------------------ features
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            c = self.config
            ext = FeatureExtractor(c.backbone, c.layers, c.weights, c.patch_size,
                                   c.pretrain_embed_dim, c.target_embed_dim).to(self.device)
            if self.device.type == "cuda":
                ext = ext.to(memory_format=torch.channels_last)
            self._extractor = ext
        return self._extractor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> patch embeddings [B, h, w, D] (float32, on device).
        Halves the micro-batch on CUDA out-of-memory."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images as a tensor [B, 3, H, W], got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(self.device, self.config.precision)

        def run(step: int) -> torch.Tensor:
            parts = []
            for i in range(0, x.shape[0], step):
                with torch.inference_mode(), autocast(self.device, dtype):
                    parts.append(self.extractor(x[i:i + step]).float())
            return torch.cat(parts)

        cap = getattr(self, "_embed_cap", None)  # set once an out-of-memory forced a smaller batch
        want = x.shape[0] if cap is None else min(cap, x.shape[0])
        out, used = run_halving(run, want, "feature extraction (batch)")
        if used < want:
            self._embed_cap = used
        return out

    # ------------------------------------------------------------------ inputs
    def _batches(self, images, rotations: int = 1
                 ) -> Iterator[tuple[torch.Tensor, list[Geometry | None], list[int]]]:
        """Yield (tensor batch, geometries, indices into the input) streaming from disk."""
        c = self.config
        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images.unsqueeze(0)
            if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(f"a tensor input must be float [N, 3, {c.input_size}, {c.input_size}] "
                                 f"ImageNet-normalised; got {images.dtype} {tuple(images.shape)}")
            if tuple(images.shape[2:]) != (c.input_size, c.input_size):
                raise ValueError(f"tensor images are {tuple(images.shape[2:])} but input_size="
                                 f"{c.input_size}; pass file paths or uint8 arrays to have them resized")
            g = Geometry(c.input_size, c.input_size, c.input_size, c.input_size, 0, 0, c.input_size)
            for i in range(0, images.shape[0], c.batch_size):
                part = images[i:i + c.batch_size]
                yield part, [g] * part.shape[0], list(range(i, i + part.shape[0]))
            return
        items = _as_list(images)
        if not items:
            raise ValueError("no images given (an empty list or folder?)")
        pool = ThreadPoolExecutor(max(1, c.num_workers)) if c.num_workers > 0 else None
        try:
            for start in range(0, len(items), c.batch_size):
                chunk = list(enumerate(items[start:start + c.batch_size], start))
                loaded = (pool.map(self._load_one, [it for _, it in chunk]) if pool
                          else map(self._load_one, [it for _, it in chunk]))
                tensors, geoms, idx = [], [], []
                for (i, _), img in zip(chunk, loaded):
                    if img is None:
                        continue
                    for r in range(rotations):
                        view = img if r == 0 else rotate_image(img, 360.0 * r / rotations)
                        t, g = self.preprocess(view)
                        tensors.append(t)
                        geoms.append(g)
                        idx.append(i)
                if tensors:
                    yield torch.stack(tensors), geoms, idx
        finally:
            if pool:
                pool.shutdown()

    def _load_one(self, item) -> np.ndarray | None:
        if isinstance(item, Sample):
            item = item.path
        if isinstance(item, (str, Path)):
            try:
                return load_image(item)
            except ImageReadError as exc:
                if self.config.skip_bad_images:
                    warnings.warn(f"skipped: {exc}", stacklevel=3)
                    return None
                raise
        if isinstance(item, np.ndarray):
            if item.ndim == 2:
                item = np.repeat(item[..., None], 3, axis=2)
            if item.ndim != 3 or item.shape[2] not in (3, 4):
                raise ValueError(f"image arrays must be [H, W, 3] RGB (or [H, W] gray), got {item.shape}")
            if item.dtype != np.uint8:
                raise ValueError(f"image arrays must be uint8 0-255, got {item.dtype}; "
                                 "convert with (x * 255).clip(0, 255).astype(np.uint8)")
            return np.ascontiguousarray(item[..., :3])
        raise TypeError(f"cannot use {type(item).__name__} as an image: pass a file path, a Sample, "
                        "an RGB uint8 array or a normalised float tensor")

    # ------------------------------------------------------------------ fit
    def fit(self, images, progress: bool = False) -> "PatchCore":
        """Extract patch features of the good training images and keep a coreset of them."""
        c = self.config
        if not isinstance(images, torch.Tensor):
            images = _as_list(images)
            self.check_fit_memory(len(images))
        t0 = time.perf_counter()
        feats, n_images = [], 0
        batches = self._batches(images, rotations=c.train_rotations)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="features", leave=False)
        for x, _, idx in batches:
            emb = self.embed(x)
            self.grid = tuple(emb.shape[1:3])
            feats.append(emb.reshape(-1, emb.shape[-1]))
            n_images += len(set(idx))
        if not feats:
            raise ValueError("no training image could be read")
        features = _concat_releasing(feats)
        t1 = time.perf_counter()
        self.select_bank(features, progress=progress)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        self.info = {"n_train": n_images, "n_patches": int(features.shape[0]),
                     "bank_size": int(self.memory_bank.shape[0]),
                     "features_s": t1 - t0, "coreset_s": t2 - t1, "fit_s": t2 - t0}
        return self

    def select_bank(self, features: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Keep the greedy coreset of ``features`` [N, D] (``coreset_ratio`` of them, at least
        one) as the memory bank; returns and stores the kept indices (``coreset_indices``)."""
        c = self.config
        n_select = max(1, min(features.shape[0], int(features.shape[0] * c.coreset_ratio)))
        idx = greedy_coreset(features, n_select, c.coreset_projection_dim,
                             c.coreset_start_points, c.seed, progress=progress)
        self.memory_bank = features[idx].contiguous()
        self.coreset_indices = idx
        return idx

    def fit_memory_bytes(self, n_images: int) -> int:
        """Bytes of patch features that fit() holds before the coreset (the run's peak)."""
        c = self.config
        side = -(-c.input_size // 8)  # every registered backbone's first tap has stride >= 8
        return n_images * c.train_rotations * side * side * c.target_embed_dim * 4

    def check_fit_memory(self, n_images: int) -> None:
        """Refuse, before any work, a training set whose features cannot fit in memory."""
        need = self.fit_memory_bytes(n_images)
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info()[0]
        else:
            try:
                import os
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return
        if need > 0.8 * free:
            raise MemoryError(
                f"fitting {n_images} images needs about {need / 2**30:.1f} GiB for patch features "
                f"({self.config.target_embed_dim}-d, input {self.config.input_size} px, "
                f"x{self.config.train_rotations} rotations) but only {free / 2**30:.1f} GiB is free "
                f"on {self.device}. Fit on fewer images, lower input_size or target_embed_dim.")

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if self.memory_bank is None:
            raise RuntimeError("this PatchCore has no memory bank: call fit(train_images) or "
                               "PatchCore.load(path) first")

    @property
    def memory_bank(self) -> torch.Tensor | None:
        """The kept training patch features [M, D]; setting it resets what is derived from it."""
        return self._memory_bank

    @memory_bank.setter
    def memory_bank(self, bank: torch.Tensor | None) -> None:
        self._memory_bank = bank
        self._bank_sqn = None
        self._bank_norm = None

    @property
    def bank_sqn(self) -> torch.Tensor:
        if self._bank_sqn is None:
            self._bank_sqn = (self.memory_bank.float() ** 2).sum(1)
        return self._bank_sqn

    @property
    def norm_floor(self) -> float:
        """The absolute norm floor of ``distance="cosine"``: ``cosine_floor`` times the median
        norm of the memory bank's features (0 for L2 or plain cosine)."""
        c = self.config
        if c.distance != "cosine" or not c.cosine_floor:
            return 0.0
        if self._bank_norm is None:
            self._bank_norm = float(self.memory_bank.float().norm(dim=1).median())
        return c.cosine_floor * self._bank_norm

    def _knn(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """kNN against the bank; halves the distance-block budget on out-of-memory."""
        c = self.config

        def run(memory_mb: int):
            return knn(queries, self.memory_bank, k, c.distance, c.knn_backend, memory_mb,
                       self.bank_sqn, self.norm_floor)

        out, self._knn_mb = run_halving(run, getattr(self, "_knn_mb", c.knn_memory_mb),
                                        "nearest-neighbour search (memory_mb)")
        return out

    def score_embeddings(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings [B, h, w, D] -> (image scores [B], patch-score grid [B, h, w])."""
        self._check_fitted()
        c = self.config
        b, h, w, d = emb.shape
        if d != self.memory_bank.shape[1]:
            raise ValueError(f"embeddings have dimension {d}, the memory bank {self.memory_bank.shape[1]}")
        flat = emb.reshape(b, h * w, d)
        dist, idx = self._knn(flat.reshape(-1, d), 1)
        dist, idx = dist.view(b, h * w), idx.view(b, h * w)
        s_star, pos = dist.max(dim=1)
        scores = s_star
        k = min(c.num_neighbors, self.memory_bank.shape[0])
        if k > 1:  # eq. 7: down-weight when m* sits in a dense region of the bank
            rows = torch.arange(b, device=dist.device)
            m_test = flat[rows, pos]                                  # [B, D]
            m_star = idx[rows, pos]                                   # [B]
            _, support = self._knn(self.memory_bank[m_star], k)
            support[:, 0] = m_star  # the nearest neighbour of m* is m* (or an exact duplicate)
            near = self.memory_bank[support].float()                 # [B, k, D]
            dd = pair_distance(m_test[:, None], near, c.distance, self.norm_floor)
            weight = 1 - torch.softmax(dd.double(), dim=1)[:, 0].float()
            scores = weight * s_star
        return scores, dist.view(b, h, w)

    def predict(self, images, maps: bool = True, progress: bool = False) -> Prediction:
        """Image scores and anomaly maps (original pixels) for ``images``."""
        self._check_fitted()
        c = self.config
        items = images if isinstance(images, torch.Tensor) else _as_list(images)
        n = items.shape[0] if isinstance(items, torch.Tensor) and items.ndim == 4 else len(items)
        scores = np.full(n, np.nan, dtype=np.float32)
        out_maps: list[np.ndarray | None] = [None] * n
        geoms: list[Geometry | None] = [None] * n
        grids = None
        batches = self._batches(items)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, total=math.ceil(n / c.batch_size), desc="predict", leave=False)
        for x, g, idx in batches:
            emb = self.embed(x)
            s, grid = self.score_embeddings(emb)
            if grids is None:
                grids = np.full((n, *grid.shape[1:]), np.nan, dtype=np.float32)
            scores[idx] = s.cpu().numpy()
            grids[idx] = grid.cpu().numpy()
            if maps:
                amaps = patch_scores_to_maps(grid, c.input_size, c.sigma).cpu().numpy()
                for j, i in enumerate(idx):
                    out_maps[i] = g[j].to_original(amaps[j])
            for j, i in enumerate(idx):
                geoms[i] = g[j]
        if grids is None:
            grids = np.zeros((n, 0, 0), dtype=np.float32)
        return Prediction(scores, out_maps, grids, geoms)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the memory bank, config and versions to one .safetensors file, atomically."""
        self._check_fitted()
        meta = {"format": BANK_FORMAT, "format_version": BANK_FORMAT_VERSION,
                "config": json.dumps(self.config.to_dict(), sort_keys=True),
                "config_hash": self.config.hash(), "versions": json.dumps(versions()),
                "grid": json.dumps(list(self.grid) if self.grid else None),
                "info": json.dumps(self.info)}
        return save_tensors(path, {"memory_bank": self.memory_bank.float()}, meta)

    @classmethod
    def load(cls, path: str | Path, config: Config | None = None, **overrides) -> "PatchCore":
        """Load a bank written by :meth:`save`. With ``config``, refuse a bank built with other
        artifact settings (backbone, layers, sizes...) and list the differences. Runtime fields
        (device, batch_size, ...) may be overridden."""
        path = Path(path)
        tensors, meta = load_tensors(path)
        if meta.get("format") != BANK_FORMAT:
            raise BankMismatchError(f"{path} is not a PatchCore memory bank (format="
                                    f"{meta.get('format')!r}); rebuild it with PatchCore.fit(...).save(...)")
        if meta.get("format_version") != BANK_FORMAT_VERSION:
            raise BankMismatchError(f"{path} has bank format {meta.get('format_version')!r}; this "
                                    f"version reads {BANK_FORMAT_VERSION!r}. Refit and save again.")
        try:
            saved = json.loads(meta["config"])
            saved_cfg = Config.from_dict(saved)
        except (KeyError, ValueError, TypeError) as exc:
            raise BankMismatchError(f"{path}: its stored config is unreadable ({exc})") from exc
        if config is not None:
            diff = config.differences(saved)
            if diff:
                lines = "\n".join(f"  {k}: bank has {b!r}, config asks {a!r}" for k, (a, b) in diff.items())
                raise BankMismatchError(f"memory bank {path} was built with other settings:\n{lines}\n"
                                        "Refit with the current config, or load without a config.")
            cfg = config.replace(**overrides) if overrides else config
        else:
            cfg = saved_cfg.replace(**overrides) if overrides else saved_cfg
        bank = tensors.get("memory_bank")
        if bank is None or bank.ndim != 2 or bank.shape[1] != cfg.target_embed_dim or bank.shape[0] < 1:
            raise BankMismatchError(f"{path}: memory_bank tensor missing or of shape "
                                    f"{None if bank is None else tuple(bank.shape)}, expected [M, {cfg.target_embed_dim}]")
        if not torch.isfinite(bank).all():
            raise BankMismatchError(f"{path}: memory bank holds NaN or infinite values")
        model = cls(cfg)
        model.memory_bank = bank.float().to(model.device)
        grid = json.loads(meta.get("grid", "null"))
        model.grid = tuple(grid) if grid else None
        model.info = json.loads(meta.get("info", "{}"))
        model.saved_versions = json.loads(meta.get("versions", "{}"))
        return model


def _concat_releasing(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(parts) that frees each part once copied (emptying the list), so the peak is one
    copy of the features plus one part instead of two copies (fit's memory peak)."""
    out = parts[0].new_empty(sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    pos = 0
    parts.reverse()
    while parts:
        p = parts.pop()
        out[pos:pos + p.shape[0]] = p
        pos += p.shape[0]
        del p
    return out


def _as_list(images) -> list:
    if isinstance(images, (str, Path, Sample)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"cannot use {type(images).__name__} as images: pass a list of file paths, "
                    "Samples or RGB uint8 arrays, or a normalised tensor [N, 3, S, S]")
