"""``Run``: one run folder, the façade the notebooks use. It joins small parts, each usable on
its own: :mod:`helpers.datasource` (the images), :mod:`helpers.cache` (the artifact cache),
:mod:`helpers.evaluation` (metrics.json) and :mod:`helpers.figures` (figure files); its stages
call :class:`~helpers.model.PatchCore`'s public seams (``extract``, ``build_bank``, ``predict``,
``maps_from_grids``, ``embed_images``) and re-implement none of its steps.

The run folder's layout (``run.json``, ``metrics.json``, ``figures/``, ``artifacts/<stage>-<hash>
.safetensors``, ...) is in the README, "The run folder".

``<hash>`` is :meth:`Config.hash` (the settings that change an artifact; for features, with the
coreset settings left out, since they do not change features). Each file also stores
the data it was made from and, for predictions, the scoring settings (``num_neighbors``,
``distance``, ``cosine_floor``, ``sigma``); a file whose stored values differ from the current
ones is recomputed and replaced, never silently reused.

In a notebook::

    run = Run.from_params(globals())   # the parameters cell's variables
    model = run.model()                 # loads bank-<hash>.safetensors or builds it
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from . import evaluation, stages
from .cache import STAGES, ArtifactCache
from .config import Config
from .data import Sample, load_image, masks_like
from .datasource import SYNTHETIC_DEFAULTS, DataSource
from .evaluation import METRIC_KEYS, pixel_f1_threshold
from .figures import save_and_show
from .io import atomic_write_json
from .parameters import NOTEBOOK_PARAMETERS, config_from_params, repo_root, resolve_run_dir
from .prediction import Prediction

__all__ = [
    "METRIC_KEYS",
    "STAGES",
    "SYNTHETIC_DEFAULTS",
    "Run",
    "config_from_params",
    "pixel_f1_threshold",
    "repo_root",
    "resolve_run_dir",
]

SCORING_FIELDS = ("num_neighbors", "distance", "cosine_floor", "sigma")
FEATURE_FREE_FIELDS = (
    "coreset_ratio",
    "coreset_max_size",
    "coreset_projection_dim",
    "coreset_start_points",
)


class Run:
    """One run folder: its config, its data and its cached artifacts."""

    def __init__(
        self,
        run_dir: str | Path,
        config: Config,
        *,
        synthetic: dict | None = None,
        download: bool = False,
        download_url: str = "",
        download_sha256: str = "",
        params: dict[str, Any] | None = None,
        verbose: bool = True,
    ):
        from .colab import mount_drive_for

        # in Colab, a run folder, data folder or archive on /content/drive mounts Drive first
        mount_drive_for(
            run_dir=str(run_dir), dataset_path=config.dataset_path, download_url=download_url
        )
        self.root = resolve_run_dir(run_dir)
        self.config = config
        unknown = set(params or {}) - set(NOTEBOOK_PARAMETERS)
        if unknown:
            raise ValueError(
                f"unknown notebook parameter(s) {sorted(unknown)}: the notebooks' own parameters "
                f"are {sorted(NOTEBOOK_PARAMETERS)} (helpers/parameters.py)"
            )
        # the notebooks' own settings (figure sizes, timing repeats, ...): their defaults, with
        # whatever the lesson's parameters cell or papermill's -p set
        self.params = SimpleNamespace(
            **{**NOTEBOOK_PARAMETERS, **(params or {}), "run_dir": run_dir}
        )
        self.verbose = verbose
        self.data = DataSource(
            config,
            self.root / "data",
            synthetic=synthetic,
            download=download,
            download_url=download_url,
            download_sha256=download_sha256,
        )
        self.cache = ArtifactCache(self.root / "artifacts", self.root, verbose)

    @classmethod
    def from_params(cls, params: dict[str, Any], verbose: bool = True) -> Run:
        """Build from a notebook's variables (``globals()``): every ``Config`` field and every
        notebook parameter (:data:`helpers.parameters.NOTEBOOK_PARAMETERS`) found there is used;
        the rest keep their defaults. So a lesson's parameters cell declares only its own knobs,
        and papermill's ``-p`` (which adds a cell of assignments) can still set any of them.
        The notebook parameters end up in ``run.params`` (``run.params.n_examples``, ...)."""
        synthetic = {
            k: params[f"synthetic_{k}"] for k in SYNTHETIC_DEFAULTS if f"synthetic_{k}" in params
        }
        own = {k: params[k] for k in NOTEBOOK_PARAMETERS if k in params and k != "run_dir"}
        return cls(
            params.get("run_dir", NOTEBOOK_PARAMETERS["run_dir"]),
            config_from_params(params),
            synthetic=synthetic,
            download=bool(params.get("download", False)),
            download_url=params.get("download_url", "") or "",
            download_sha256=params.get("download_sha256", "") or "",
            params=own,
            verbose=verbose,
        )

    # ------------------------------------------------------------------ paths
    @property
    def artifacts_dir(self) -> Path:
        return self.cache.folder

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def events(self) -> list[dict]:
        return self.cache.events

    def stage_hash(self, stage: str) -> str:
        """:meth:`Config.hash` of the config that made the stage. Features do not depend on the
        coreset settings, so those are set to their defaults first: trying another
        ``coreset_ratio`` reuses the extracted features."""
        if stage == "features":
            defaults = {f.name: f.default for f in fields(Config) if f.name in FEATURE_FREE_FIELDS}
            return self.config.replace(**defaults).hash()
        return self.config.hash()

    def path(self, stage: str) -> Path:
        return self.cache.path(stage, self.stage_hash(stage))

    def spill_path(self) -> Path:
        """The full training features (float32 rows) next to ``features-<hash>.safetensors``."""
        return self.path("features").with_suffix(".f32")

    def rel(self, path: Path) -> str:
        return self.cache.rel(path)

    # ------------------------------------------------------------------ data
    @property
    def synthetic(self) -> dict:
        return self.data.synthetic

    @property
    def is_synthetic(self) -> bool:
        return self.data.is_synthetic

    def data_id(self) -> str:
        return self.data.data_id()

    @property
    def data_root(self) -> Path:
        """The MVTec-layout folder in use: generated (synthetic), downloaded or given."""
        return self.data.root

    @property
    def train_samples(self) -> list[Sample]:
        return self.data.train_samples

    @property
    def test_samples(self) -> list[Sample]:
        return self.data.test_samples

    def describe(self) -> str:
        c = self.config
        source = (
            f"synthetic set ({self.synthetic['size']} px), generated in <run folder>/"
            f"{self.rel(self.data_root)}"
            if self.is_synthetic
            else str(self.data_root)
        )
        return (
            f"run folder : {self.root}\n"
            f"data       : {source}\n"
            f"config hash: {c.hash()}  (backbone {c.backbone}, layers {c.layers}, "
            f"input {c.input_size} px, coreset {c.coreset_ratio:g})"
        )

    # ------------------------------------------------------------------ cache
    def stage_meta(self, stage: str) -> dict[str, str]:
        extra = (
            {k: getattr(self.config, k) for k in SCORING_FIELDS} if stage == "predictions" else {}
        )
        return {
            "stage": stage,
            "config_hash": self.stage_hash(stage),
            "data_id": self.data_id(),
            "extra": json.dumps(extra, sort_keys=True),
        }

    def is_cached(self, stage: str) -> bool:
        """True when the stage's file exists and was made with the current settings and data."""
        return self.cache.matches(self.path(stage), self.stage_meta(stage))

    def cached(
        self,
        stage: str,
        compute: Callable[[], tuple[dict, dict]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load ``stage`` (tensors, info) when cached with matching settings; otherwise call
        ``compute() -> (tensors, info)`` and save the result atomically."""
        return self.cache.cached(stage, self.stage_hash(stage), self.stage_meta(stage), compute)

    def _info(self, stage: str) -> dict:
        return self.cache.info(self.path(stage))

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

    def features(self, model=None):
        """Patch features of all good training images (notebook 02), cached: the coreset
        projection in ``features-<hash>.safetensors`` and, unless the projection is the identity,
        the full embeddings in ``features-<hash>.f32``.
        A :class:`~helpers.training.TrainingFeatures`."""
        return stages.features(self, model)

    def model(self, **overrides):
        """The fitted PatchCore (notebook 03): loads the bank when cached, else builds it from the
        cached (or freshly extracted) features and saves it. ``overrides`` change runtime fields
        only (device, batch_size, precision...)."""
        return stages.fitted_model(self, **overrides)

    def coverage(self, ratios: list[float], max_patches: int = 2000) -> dict[str, np.ndarray]:
        """Coverage radius of greedy and of random subsets for each coreset ratio (cached)."""
        return stages.coverage(self, ratios, max_patches)

    def predictions(self, model=None, batch_size: int | None = None) -> Prediction:
        """Scores and anomaly maps of every test image (notebook 04), cached."""
        return stages.predictions(self, model, batch_size)

    # ------------------------------------------------------------------ evaluation
    def masks(self, pred: Prediction) -> list[np.ndarray | None]:
        """Ground-truth masks at each map's size (all False for good images, None when missing)."""
        return masks_like(self.test_samples, pred.maps)

    def evaluate(self, pred: Prediction) -> dict[str, Any]:
        """Every metric of metrics.json except timings, config and versions, plus
        ``pixel_f1_threshold`` (see :func:`helpers.evaluation.evaluate`)."""
        return evaluation.evaluate(self.test_samples, pred)

    def timings(self, pred: Prediction) -> dict[str, Any]:
        return evaluation.timings(self._info("bank"), pred)

    def write_metrics(self, metrics: dict[str, Any], pred: Prediction) -> dict[str, Any]:
        """Write metrics.json (atomically) with every key of the contract; returns it."""
        from .bank_file import versions

        record = dict(
            n_train=len(self.train_samples),
            n_test=len(self.test_samples),
            timings=self.timings(pred),
            config=self.config.to_dict(),
            data=self.data.record(),
            config_hash=self.config.hash(),
            versions=versions(),
        )
        return evaluation.write_metrics(self.metrics_path, metrics, record)

    def save_json(self, name: str, obj: Any) -> Path:
        """Write ``run_dir/<name>`` atomically (NaN -> null)."""
        return atomic_write_json(self.root / name, evaluation.finite(obj))

    # ------------------------------------------------------------------ figures
    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"

    def show(self, fig, name: str, display: bool = True, dpi: int = 100) -> None:
        """Save ``fig`` as figures/<name>.png (atomically) and show that PNG in the notebook
        (rendered once, so the notebook and the file show the same picture)."""
        save_and_show(fig, self.figure_path(name), display=display, dpi=dpi)
