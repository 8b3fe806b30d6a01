"""The run folder and its artifact cache: load what an earlier notebook saved when its config hash
matches, otherwise compute it and save it atomically.

Layout of a run folder (``run_dir``)::

    run_dir/
      run.json                      written by helpers.pipeline: parameters and notebook status
      metrics.json                  written by notebook 05
      timing.json                   latency / throughput table of notebook 04
      figures/NN_name.png           every figure the notebooks show
      notebooks/NN_*.ipynb (.html)  executed notebooks (helpers.pipeline)
      data/metal_nut/...            the synthetic set, when no dataset_path is given
      artifacts/
        features-<hash>.safetensors     patch features of the good training images (notebook 02)
        bank-<hash>.safetensors         the coreset memory bank, a PatchCore.save file (notebook 03)
        coverage-<hash>.safetensors     coverage radius vs coreset ratio (notebook 03)
        predictions-<hash>.safetensors  scores, patch scores, anomaly maps (notebook 04)
        events.jsonl                    one line per artifact loaded or computed

``<hash>`` is :meth:`Config.hash` (the settings that change an artifact; for features, with the
coreset settings left out, since they do not change features). Each file also stores
the data it was made from and, for predictions, the scoring settings (``num_neighbors``,
``distance``, ``cosine_floor``, ``sigma``); a file whose stored values differ from the current ones is recomputed
and replaced, never silently reused.

In a notebook::

    run = Run.from_params(globals())   # the parameters cell's variables
    model = run.model()                 # loads bank-<hash>.safetensors or builds it
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import Config
from .data import Geometry, Sample, list_samples, load_image, load_mask
from .io import atomic_write_bytes, atomic_write_json, load_tensors, save_tensors
from .prediction import Prediction

CONFIG_FIELDS = tuple(f.name for f in fields(Config))
SYNTHETIC_DEFAULTS = dict(size=256, n_train=24, n_test_good=8, n_per_defect=6)
SCORING_FIELDS = ("num_neighbors", "distance", "cosine_floor", "sigma")
FEATURE_FREE_FIELDS = ("coreset_ratio", "coreset_projection_dim", "coreset_start_points")
STAGES = ("features", "bank", "coverage", "predictions")
# Results of notebook 05 that metrics.json must always hold (null when unavailable).
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_threshold", "per_defect", "n_train",
               "n_test", "timings", "config", "versions")


def repo_root() -> Path:
    """The folder holding ``helpers/`` (the repository root of a clone)."""
    return Path(__file__).resolve().parent.parent


def config_from_params(params: dict[str, Any]) -> Config:
    """A :class:`Config` from a notebook's parameter variables (``globals()``): every Config field
    found there is used, the rest keep their defaults. Empty strings mean None for
    ``dataset_path``, ``weights`` and the backbone-dependent sizes."""
    kw = {k: params[k] for k in CONFIG_FIELDS if k in params}
    for name in ("dataset_path", "weights", "layers", "input_size", "resize",
                 "pretrain_embed_dim", "target_embed_dim"):
        if name in kw and (kw[name] == "" or kw[name] == "None"):
            kw[name] = None
    return Config(**kw)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """Relative run folders are taken from the repository root, so a notebook opened from
    ``notebooks/`` and the pipeline agree on where ``runs/...`` is."""
    path = Path(run_dir).expanduser()
    return path if path.is_absolute() else repo_root() / path


class Run:
    """One run folder: its config, its data and its cached artifacts."""

    def __init__(self, run_dir: str | Path, config: Config, synthetic: dict | None = None,
                 download: bool = False, download_url: str = "", download_sha256: str = "",
                 verbose: bool = True):
        from .colab import mount_drive_for
        # in Colab, a run folder, data folder or archive on /content/drive mounts Drive first
        mount_drive_for(run_dir=str(run_dir), dataset_path=config.dataset_path,
                        download_url=download_url)
        self.root = resolve_run_dir(run_dir)
        self.config = config
        self.synthetic = {**SYNTHETIC_DEFAULTS, **(synthetic or {})}
        self.download, self.download_url, self.download_sha256 = download, download_url, download_sha256
        self.verbose = verbose
        self.events: list[dict] = []
        self._depth = 0          # > 0 while a stage computes the stages it needs
        self._data_root: Path | None = None
        self._train: list[Sample] | None = None
        self._test: list[Sample] | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], verbose: bool = True) -> "Run":
        """Build from a notebook's parameter variables: Config fields, ``run_dir``,
        ``synthetic_size`` / ``synthetic_n_train`` / ``synthetic_n_test_good`` /
        ``synthetic_n_per_defect`` and ``download`` / ``download_url`` / ``download_sha256``."""
        synthetic = {k: params[f"synthetic_{k}"] for k in SYNTHETIC_DEFAULTS if f"synthetic_{k}" in params}
        return cls(params.get("run_dir", "runs/notebooks"), config_from_params(params), synthetic,
                   bool(params.get("download", False)), params.get("download_url", "") or "",
                   params.get("download_sha256", "") or "", verbose)

    # ------------------------------------------------------------------ paths
    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    def stage_hash(self, stage: str) -> str:
        """:meth:`Config.hash` of the config that made the stage. Features do not depend on the
        coreset settings, so those are set to their defaults first: trying another
        ``coreset_ratio`` reuses the extracted features."""
        if stage == "features":
            defaults = {f.name: f.default for f in fields(Config) if f.name in FEATURE_FREE_FIELDS}
            return self.config.replace(**defaults).hash()
        return self.config.hash()

    def path(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown artifact {stage!r}; one of {STAGES}")
        return self.artifacts_dir / f"{stage}-{self.stage_hash(stage)}.safetensors"

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ data
    @property
    def is_synthetic(self) -> bool:
        return not self.config.dataset_path

    def data_id(self) -> str:
        """What the artifacts were made from: the synthetic set's parameters or the data folder."""
        if self.is_synthetic:
            return "synthetic:" + json.dumps(self.synthetic, sort_keys=True)
        return f"folder:{Path(self.config.dataset_path).expanduser().resolve()}|{self.config.category}"

    @property
    def data_root(self) -> Path:
        """The MVTec-layout folder in use: generated (synthetic), downloaded or given."""
        if self._data_root is None:
            c = self.config
            if self.is_synthetic:
                from .synthetic import generate_dataset
                self._data_root = generate_dataset(self.root / "data", c.category, seed=c.seed,
                                                   **self.synthetic)
            else:
                from .download import prepare_dataset
                self._data_root = prepare_dataset(c.dataset_path, c.category,
                                                  download_missing=self.download,
                                                  url=self.download_url or None,
                                                  sha256=self.download_sha256 or None)
        return self._data_root

    @property
    def train_samples(self) -> list[Sample]:
        if self._train is None:
            self._train = list_samples(self.data_root, self.config.category, "train")
        return self._train

    @property
    def test_samples(self) -> list[Sample]:
        if self._test is None:
            self._test = list_samples(self.data_root, self.config.category, "test")
        return self._test

    def describe(self) -> str:
        c = self.config
        source = (f"synthetic set ({self.synthetic['size']} px), generated in <run folder>/"
                  f"{self.rel(self.data_root)}"
                  if self.is_synthetic else str(self.data_root))
        return (f"run folder : {self.root}\n"
                f"data       : {source}\n"
                f"config hash: {c.hash()}  (backbone {c.backbone}, layers {c.layers}, "
                f"input {c.input_size} px, coreset {c.coreset_ratio:g})")

    # ------------------------------------------------------------------ cache
    def _meta(self, stage: str) -> dict[str, str]:
        extra = {k: getattr(self.config, k) for k in SCORING_FIELDS} if stage == "predictions" else {}
        return {"stage": stage, "config_hash": self.stage_hash(stage), "data_id": self.data_id(),
                "extra": json.dumps(extra, sort_keys=True)}

    def is_cached(self, stage: str) -> bool:
        """True when the stage's file exists and was made with the current settings and data."""
        meta = self._metadata(stage)
        if meta is None:
            return False
        want = self._meta(stage)
        return all(meta.get(k) == v for k, v in want.items())

    def _metadata(self, stage: str) -> dict[str, str] | None:
        """The header metadata of the stage's file (tensors are not read); None if unreadable."""
        path = self.path(stage)
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as fh:
                return fh.metadata() or {}
        except Exception:
            return None

    def _log(self, stage: str, action: str, path: Path, note: str = "") -> None:
        event = {"stage": stage, "action": action, "file": self.rel(path), "time": time.time()}
        self.events.append(event)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with open(self.artifacts_dir / "events.jsonl", "a") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.verbose and self._depth == 0:   # what a stage needed is logged, not printed
            print(f"[cache: {action}] {stage}: {self.rel(path)}{note}")

    def cached(self, stage: str, compute: Callable[[], tuple[dict, dict]],
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load ``stage`` (tensors, info) when cached with matching settings; otherwise call
        ``compute() -> (tensors, info)`` and save the result atomically."""
        path = self.path(stage)
        if self.is_cached(stage):
            tensors, meta = load_tensors(path)
            self._log(stage, "loaded", path)
            return tensors, json.loads(meta.get("info", "{}"))
        self._depth += 1
        try:
            tensors, info = compute()
        finally:
            self._depth -= 1
        save_tensors(path, tensors, {**self._meta(stage), "info": json.dumps(info, sort_keys=True)})
        self._log(stage, "computed", path)
        return tensors, info

    # ------------------------------------------------------------------ stages
    def new_model(self, **overrides):
        """A PatchCore for this config (no bank yet); ``overrides`` are runtime fields."""
        from .model import PatchCore
        return PatchCore(self.config.replace(**overrides) if overrides else self.config)

    def embed_samples(self, model, samples: list[Sample]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Patch embeddings [n, h, w, D] (CPU) of a few ``samples`` (for figures) and the crops
        the network saw (RGB uint8)."""
        emb = torch.cat([b.embeddings.cpu() for b in model.embed_images(samples)])
        crops = [model.preprocess.crop_rgb(load_image(s.path))[0] for s in samples]
        return emb, crops

    def _spill_path(self) -> Path:
        return self.path("features").with_suffix(".f32")

    def features(self, model=None):
        """Patch features of all good training images (notebook 02), cached: the coreset
        projection in ``features-<hash>.safetensors`` and, unless the projection is the identity,
        the full embeddings in ``features-<hash>.f32`` (float32 rows), both in artifacts/.
        Returns a :class:`~helpers.model.TrainingFeatures`."""
        from .projection import Projection
        from .model import TrainingFeatures
        from .spill import FeatureSpill

        m = model or self.new_model()

        def compute():
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            feats = m.extract(self.train_samples, progress=self.verbose,
                              spill_dir=self.artifacts_dir)
            if feats.spill is not None:
                feats.spill.persist(self._spill_path())
                feats.spill.close()
            rows, n = feats.projection.result()
            info = {"grid": list(feats.grid), "n_images": feats.n_images,
                    "n_views": feats.n_views, "seconds": feats.seconds, "device": str(m.device),
                    "dim": feats.dim, "spill": feats.spill is not None}
            return {"projection": rows[:n].cpu()}, info

        if self.is_cached("features") and self._info("features").get("spill") \
                and not self._spill_path().is_file():
            self.path("features").unlink()        # the spill file was deleted: recompute
        tensors, info = self.cached("features", compute)
        proj = Projection.of_rows(tensors["projection"], m.device)
        spill = FeatureSpill.open(self._spill_path(), info["dim"]) if info["spill"] else None
        return TrainingFeatures(proj, spill, tuple(info["grid"]), info["n_images"],
                                info.get("n_views", info["n_images"]), info["seconds"])

    def model(self, **overrides):
        """The fitted PatchCore (notebook 03): loads the bank when cached, else runs the greedy
        coreset on the cached (or freshly extracted) features and saves the bank.
        ``overrides`` change runtime fields only (device, batch_size, precision...)."""
        from .model import PatchCore
        path = self.path("bank")
        if self.is_cached("bank"):
            model = PatchCore.load(path, self.config, **overrides)
            self._log("bank", "loaded", path, f"  ({model.memory_bank.shape[0]} x "
                      f"{model.memory_bank.shape[1]})")
            return model
        model = self.new_model(**overrides)
        self._depth += 1
        try:
            feats = self.features(model)
        finally:
            self._depth -= 1
        try:
            model.build_bank(feats, progress=self.verbose)
        finally:
            feats.close()
        model.save(path)
        # the same metadata as the other stages, so that is_cached() can check the data
        tensors, meta = load_tensors(path)
        save_tensors(path, tensors, {**meta, **self._meta("bank")})
        self._log("bank", "computed", path, f"  ({model.memory_bank.shape[0]} x "
                  f"{model.memory_bank.shape[1]})")
        return model

    def coverage(self, ratios: list[float], max_patches: int = 2000) -> dict[str, np.ndarray]:
        """Coverage radius (max distance of a training patch to its nearest kept patch, in the
        full feature space) of greedy and of random subsets, for each coreset ratio."""
        from .coreset import covering_radius, greedy_coreset

        ratios = sorted(float(r) for r in ratios)

        def compute():
            all_feats = self.features()
            try:
                feats = all_feats.sample(max_patches)
            finally:
                all_feats.close()
            gen = torch.Generator().manual_seed(self.config.seed)
            n = feats.shape[0]
            sizes = [max(1, min(n, int(n * r))) for r in ratios]
            c = self.config
            picks = greedy_coreset(feats, max(sizes), projection_dim=c.coreset_projection_dim,
                                   start_points=c.coreset_start_points, seed=c.seed)
            perm = torch.randperm(n, generator=gen)
            greedy = [covering_radius(feats, picks[:k]) for k in sizes]
            rand = [covering_radius(feats, perm[:k]) for k in sizes]
            tensors = {"ratios": torch.tensor(ratios, dtype=torch.float64),
                       "sizes": torch.tensor(sizes), "greedy_radius": torch.tensor(greedy, dtype=torch.float64),
                       "random_radius": torch.tensor(rand, dtype=torch.float64)}
            return tensors, {"n_patches": n, "max_patches": max_patches}

        tensors, info = self.cached("coverage", compute)
        if tensors["ratios"].tolist() != ratios or info.get("max_patches") != max_patches:
            self.path("coverage").unlink()       # asked for other ratios: recompute
            tensors, info = self.cached("coverage", compute)
        out = {k: v.numpy() for k, v in tensors.items()}
        out["n_patches"] = info["n_patches"]
        return out

    def predictions(self, model=None, batch_size: int | None = None) -> Prediction:
        """Scores and anomaly maps of every test image (notebook 04), cached. The patch-score
        grids are saved; maps in original pixels are made from them on load."""
        from .maps import grids_to_maps
        c = self.config
        test = self.test_samples
        used = {}

        def compute():
            m = model or self.model(**({"batch_size": batch_size} if batch_size else {}))
            t0 = time.perf_counter()
            pred = m.predict(test, maps=False, progress=self.verbose)
            for start in range(0, len(test), 16):   # timed with the scores, then dropped
                m.maps_from_grids(pred.patch_scores[start:start + 16],
                                  pred.geometries[start:start + 16])
            if m.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            geoms = np.array([[-1] * 7 if g is None else [g.orig_h, g.orig_w, g.res_h, g.res_w,
                                                           g.top, g.left, g.crop]
                              for g in pred.geometries], dtype=np.int64)
            used.update(device=str(m.device), batch_size=m.config.batch_size)
            tensors = {"scores": torch.from_numpy(pred.scores),
                       "patch_scores": torch.from_numpy(pred.patch_scores),
                       "geometries": torch.from_numpy(geoms)}
            info = {"seconds": seconds, "paths": [str(s.path.relative_to(self.data_root)) for s in test],
                    "defects": [s.defect for s in test], **used}
            return tensors, info

        tensors, info = self.cached("predictions", compute)
        geoms = [None if row[0] < 0 else Geometry(*map(int, row)) for row in tensors["geometries"].numpy()]
        scores = tensors["scores"].numpy()
        geoms = [None if not np.isfinite(scores[i]) else g for i, g in enumerate(geoms)]
        maps = grids_to_maps(tensors["patch_scores"], geoms, input_size=c.input_size, sigma=c.sigma)
        defects = info["defects"]
        return Prediction(scores, maps, tensors["patch_scores"].numpy(), geoms,
                          labels=np.array([0 if d == "good" else 1 for d in defects]),
                          defects=defects, paths=info["paths"], seconds=info["seconds"],
                          batch_size=info["batch_size"], device=info["device"])

    # ------------------------------------------------------------------ evaluation
    def masks(self, pred: Prediction) -> list[np.ndarray | None]:
        """Ground-truth masks at each map's size (all False for good images, None when missing)."""
        out = []
        for s, amap in zip(self.test_samples, pred.maps):
            if amap is None:
                out.append(None)
            elif s.defect == "good":
                out.append(np.zeros(amap.shape, bool))
            else:
                out.append(load_mask(s.mask_path, amap.shape) if s.mask_path else None)
        return out

    def evaluate(self, pred: Prediction) -> dict[str, Any]:
        """Every metric of metrics.json except timings, config and versions, plus
        ``pixel_f1_threshold`` (the map value maximising pixel F1, for drawing regions)."""
        import warnings
        from .metrics import evaluate_samples
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # nulls are reported in the table instead
            out = evaluate_samples(self.test_samples, pred)
            out["pixel_f1_threshold"] = pixel_f1_threshold(self.masks(pred), pred.maps)
        return out

    def timings(self, pred: Prediction) -> dict[str, Any]:
        info = self._info("bank")
        return {"fit_s": info.get("fit_s"), "features_s": info.get("features_s"),
                "coreset_s": info.get("coreset_s"),
                "infer_ms_per_image": 1000 * pred.seconds / max(len(pred), 1),
                "batch_size": pred.batch_size, "device": pred.device}

    def _info(self, stage: str) -> dict:
        return json.loads((self._metadata(stage) or {}).get("info", "{}"))

    def write_metrics(self, metrics: dict[str, Any], pred: Prediction) -> dict[str, Any]:
        """Write metrics.json (atomically) with every key of the contract; returns it."""
        from .model import versions
        out = dict(metrics)
        out.update(n_train=len(self.train_samples), n_test=len(self.test_samples),
                   timings=self.timings(pred), config=self.config.to_dict(),
                   data={"source": "synthetic", **self.synthetic} if self.is_synthetic
                   else {"source": "folder", "path": str(self.data_root)},
                   config_hash=self.config.hash(), versions=versions())
        for key in METRIC_KEYS:
            out.setdefault(key, None)
        atomic_write_json(self.metrics_path, _finite(out))
        return out

    def save_json(self, name: str, obj: Any) -> Path:
        """Write ``run_dir/<name>`` atomically (NaN -> null)."""
        return atomic_write_json(self.root / name, _finite(obj))

    # ------------------------------------------------------------------ figures
    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"

    def show(self, fig, name: str, display: bool = True, dpi: int = 100) -> None:
        """Save ``fig`` as figures/<name>.png (atomically) and show that PNG in the notebook
        (rendered once, so the notebook and the file show the same picture)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        atomic_write_bytes(self.figure_path(name), buf.getvalue())
        if display:
            from IPython.display import Image, display as _display
            _display(Image(data=buf.getvalue(), format="png"))


def pixel_f1_threshold(masks, maps, step: int = 4) -> float | None:
    """The anomaly-map value that maximises pixel-level F1 (every ``step``-th pixel in each
    direction, for speed); None without defect pixels."""
    from .metrics import f1_threshold
    pairs = [(m[::step, ::step].ravel(), a[::step, ::step].ravel())
             for m, a in zip(masks, maps) if m is not None and a is not None]
    if not pairs:
        return None
    y = np.concatenate([p[0] for p in pairs])
    if y.all() or not y.any():
        return None
    best = f1_threshold(y.astype(int), np.concatenate([p[1] for p in pairs]))
    return None if best is None else best[0]


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, so metrics.json holds valid JSON (null), never a made-up number."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj

