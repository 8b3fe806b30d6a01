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
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np
import torch

from .config import Config
from .coreset import Projection, greedy_coreset
from .data import Geometry, ImageReadError, Preprocessor, Sample, load_image
from .features import FeatureExtractor
from .io import load_tensors, save_tensors
from .knn import knn, pair_distance
from .maps import grids_to_maps
from .runtime import autocast, autocast_dtype, resolve_device, run_halving
from .runtime import progress as show_progress
from .spill import FeatureSpill

BANK_FORMAT = "patchcore-memory-bank"
BASE_RAM = 1 << 30   # the libraries, the backbone and the test-time working set (measured ~0.9 GiB)
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


class EmbeddedBatch(NamedTuple):
    """One batch of :meth:`PatchCore.embed_images`: embeddings of each view (image or rotated
    copy), how each view was made from its original, and the index of that original."""
    embeddings: torch.Tensor            # [B, h, w, D] float32, on the model's device
    geometries: list[Geometry]
    indices: list[int]


class TrainingFeatures:
    """Every training patch as the fit sees it: the coreset's projection in memory (float64,
    ``n_patches`` rows) and the full embeddings in ``spill`` (a file), in ``full`` (a tensor) or,
    when the projection is the identity, nowhere else. ``close()`` removes a temporary spill."""

    def __init__(self, projection: Projection, spill: FeatureSpill | None, grid: tuple[int, int],
                 n_images: int, n_views: int, seconds: float, full: torch.Tensor | None = None):
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
        self.coreset_indices: torch.Tensor | None = None   # rows of the fit's patches kept
        self.saved_versions: dict = {}                      # library versions of a loaded bank
        self._embed_cap: int | None = None   # micro-batch after a CUDA out-of-memory
        self._knn_mb = config.knn_memory_mb  # kNN block budget (halved on out-of-memory)

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

        cap = self._embed_cap  # set once an out-of-memory forced a smaller batch
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

    # ------------------------------------------------------------------ seams
    def embed_images(self, images, rotations: int = 1, progress: bool = False,
                     desc: str = "features") -> Iterator[EmbeddedBatch]:
        """Embed ``images`` batch by batch (read from disk as they are needed): each image, and
        with ``rotations`` > 1 its copies rotated by 360/rotations degrees, becomes one view.
        The one home of rotate -> preprocess -> embed (fit, predict and the notebooks use it)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) else len(_as_list(images))
        batches = self._batches(images, rotations=rotations)
        if progress:
            batches = show_progress(batches, total=math.ceil(n / self.config.batch_size),
                                    desc=desc, unit="batch")
        for x, geoms, idx in batches:
            yield EmbeddedBatch(self.embed(x), geoms, idx)

    def maps_from_grids(self, grids: torch.Tensor | np.ndarray,
                        geometries: list[Geometry | None]) -> list[np.ndarray | None]:
        """Patch-score grids [B, h, w] -> anomaly maps in each image's ORIGINAL pixels, with this
        model's ``input_size`` and ``sigma`` (see :func:`helpers.maps.grids_to_maps`)."""
        return grids_to_maps(grids, geometries, self.config.input_size, self.config.sigma,
                             self.device)

    # ------------------------------------------------------------------ fit
    def fit(self, images, progress: bool = False, spill_dir: str | Path | None = None
            ) -> "PatchCore":
        """Build the memory bank from good training images: :meth:`extract` (streaming) then
        :meth:`build_bank`. Memory grows with the coreset's projection (8 bytes x 128 per patch),
        not with the full embeddings, which wait in a temporary file in ``spill_dir`` (default:
        the system's temporary folder) and are read back only for the kept patches."""
        feats = self.extract(images, progress=progress, spill_dir=spill_dir)
        try:
            return self.build_bank(feats, progress=progress)
        finally:
            feats.close()

    def extract(self, images, progress: bool = False, spill_dir: str | Path | None = None
                ) -> "TrainingFeatures":
        """Embed the training images (and their ``train_rotations`` rotated copies) batch by batch,
        keeping each patch's coreset projection in memory and, when that projection is not the
        identity, the full embedding in a spill file. Checks the memory estimate first."""
        c = self.config
        items = images if isinstance(images, torch.Tensor) else _as_list(images)
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
                    proj = self._projection(n * rotations * emb.shape[1] * emb.shape[2],
                                            emb.shape[-1])
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
        return TrainingFeatures(proj, spill, self.grid, views // rotations, views,
                                time.perf_counter() - t0)

    def build_bank(self, feats: "TrainingFeatures", progress: bool = False) -> "PatchCore":
        """Greedy coreset on ``feats``' projection; the bank is the kept patches' full features."""
        c = self.config
        t0 = time.perf_counter()
        n_select = max(1, min(feats.n_patches, int(feats.n_patches * c.coreset_ratio)))
        idx = greedy_coreset(None, n_select, start_points=c.coreset_start_points, seed=c.seed,
                             progress=progress, projection=feats.projection)
        self.memory_bank = feats.rows(idx).to(self.device).contiguous()
        self.coreset_indices = idx
        self.grid = feats.grid
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        coreset_s = time.perf_counter() - t0
        self.info = {"n_train": feats.n_images, "n_views": feats.n_views,
                     "n_patches": feats.n_patches, "bank_size": int(self.memory_bank.shape[0]),
                     "features_s": feats.seconds, "coreset_s": coreset_s,
                     "fit_s": feats.seconds + coreset_s}
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
        self.build_bank(TrainingFeatures(proj, None, grid, 0, 0, 0.0, full=features), progress)
        return self.coreset_indices

    def fit_memory_estimate(self, n_images: int) -> dict[str, int]:
        """Bytes the streaming fit needs for ``n_images`` training images: ``ram`` (projection,
        the coreset's working arrays, the bank and one batch of activations, plus the libraries),
        ``disk`` (the temporary feature file) and, on CUDA, ``gpu``."""
        c = self.config
        side = -(-c.input_size // 8)  # every registered backbone's first tap has stride >= 8
        patches = n_images * c.rotations_for(n_images) * side * side
        dim = c.embed_dim
        p = dim if not 0 < c.coreset_projection_dim < dim else c.coreset_projection_dim
        work = patches * (p * 8 + 160)                # float64 projection + coreset arrays
        bank = int(patches * c.coreset_ratio) * dim * 4
        batch = c.batch_size * 3 * c.input_size ** 2 * 4 * 24   # activations, roughly
        est = {"disk": patches * dim * 4 if p < dim else 0}
        if self.device.type == "cuda":
            est.update(gpu=work + bank + batch, ram=BASE_RAM + bank)
        else:
            est.update(ram=BASE_RAM + work + bank + batch)
        return est

    def check_fit_memory(self, n_images: int) -> None:
        """Refuse, before any work, a fit whose estimated peak exceeds 90% of the free memory,
        in one line naming the estimate, the free memory and the knobs to change."""
        est = self.fit_memory_estimate(n_images)
        free = {"ram": available_ram()}
        if self.device.type == "cuda":
            free["gpu"] = torch.cuda.mem_get_info()[0]
        for kind in ("gpu", "ram"):
            if kind in est and free.get(kind) is not None and est[kind] > 0.9 * free[kind]:
                c = self.config
                raise MemoryError(
                    f"fitting {n_images} images needs about {est[kind] / 2**30:.1f} GiB of "
                    f"{'GPU memory' if kind == 'gpu' else 'RAM'} but {free[kind] / 2**30:.1f} GiB "
                    f"is free: lower train_rotations (now {c.rotations_for(n_images)}), input_size "
                    f"(now {c.input_size}) or coreset_projection_dim (now "
                    f"{c.coreset_projection_dim}), or fit on fewer images")

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

        out, self._knn_mb = run_halving(run, self._knn_mb, "nearest-neighbour search (memory_mb)")
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
        items = images if isinstance(images, torch.Tensor) else _as_list(images)
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
        if bank is None or bank.ndim != 2 or bank.shape[1] != cfg.embed_dim or bank.shape[0] < 1:
            raise BankMismatchError(f"{path}: memory_bank tensor missing or of shape "
                                    f"{None if bank is None else tuple(bank.shape)}, expected "
                                    f"[M, {cfg.embed_dim}]")
        if not torch.isfinite(bank).all():
            raise BankMismatchError(f"{path}: memory bank holds NaN or infinite values")
        model = cls(cfg)
        model.memory_bank = bank.float().to(model.device)
        grid = json.loads(meta.get("grid", "null"))
        model.grid = tuple(grid) if grid else None
        model.info = json.loads(meta.get("info", "{}"))
        model.saved_versions = json.loads(meta.get("versions", "{}"))
        return model


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; None if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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
