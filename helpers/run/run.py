"""``Run``: one run folder, the object every notebook starts from (``run =
Run.from_params(globals())``, then ``run.model()``, ``run.predictions()``...). It holds the
config, the data (:class:`~helpers.run.parameters.DataSource`), the artifact cache and the
notebooks' own parameters; each cached stage is a function of :mod:`helpers.run.stages`, handed
the run's parts (never the run). The folder's layout: README, "The run folder"."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from helpers.core.bank import BankMismatchError, bank_digest, versions
from helpers.core.config import Config, ConfigError
from helpers.core.images import load_image
from helpers.core.model import PatchCore
from helpers.core.process import release_freed_memory
from helpers.core.runtime import atomic_write_bytes, atomic_write_json
from helpers.data.download import mount_drive_for
from helpers.data.mvtec import Sample, masks_like
from helpers.evaluation import report
from helpers.run import parameters, stages
from helpers.run.cache import ArtifactCache
from helpers.run.parameters import NOTEBOOK_PARAMETERS, DataSource, config_from_params
from helpers.run.stages import RunPrediction, Stages, threshold_path


class Run:
    """One run folder: its config, its data and its cached artifacts."""

    def __init__(self, run_dir: str | Path, config: Config, *, synthetic: dict | None = None,
                 download=False, download_url="", download_sha256="", params=None,
                 verbose=True):  # fmt: skip
        # in Colab, a run folder, data folder or archive on /content/drive mounts Drive first
        mount_drive_for(run_dir=str(run_dir), dataset_path=config.dataset_path,
                        download_url=download_url)  # fmt: skip
        self.root, self.config, self.verbose = parameters.resolve_run_dir(run_dir), config, verbose
        if unknown := set(params or {}) - set(NOTEBOOK_PARAMETERS):
            raise ValueError(
                f"unknown notebook parameter(s) {sorted(unknown)}: the notebooks' own parameters "
                f"are {sorted(NOTEBOOK_PARAMETERS)} (helpers/run/parameters.py)"
            )
        parameters.check_notebook_parameters(params or {})
        # the notebooks' own settings (figure sizes, timing repeats, ...): their defaults, with
        # whatever the lesson's parameters cell or papermill's -p set
        self.params = SimpleNamespace(
            **{**NOTEBOOK_PARAMETERS, **(params or {}), "run_dir": run_dir}
        )
        self.data = DataSource(config, self.root / "data", synthetic=synthetic,
                               download=download, download_url=download_url,
                               download_sha256=download_sha256)  # fmt: skip
        self.cache = ArtifactCache(self.root / "artifacts", self.root, verbose)
        self.stages = Stages(self.cache, self.data, config, verbose)  # what the stages work with

    @classmethod
    def from_params(cls, params: dict[str, Any], verbose: bool = True) -> Run:
        """Build from a notebook's variables (``globals()``): every ``Config`` field and notebook
        parameter (:data:`~helpers.run.parameters.NOTEBOOK_PARAMETERS`) found there is used, the
        rest keep their defaults (so papermill's ``-p`` can set any); the notebook parameters
        end up in ``run.params`` (``run.params.n_examples``, ...)."""
        syn = {
            k: params[f"synthetic_{k}"]
            for k in parameters.SYNTHETIC_DEFAULTS
            if f"synthetic_{k}" in params
        }
        own = {k: params[k] for k in NOTEBOOK_PARAMETERS if k in params and k != "run_dir"}
        run_dir = params.get("run_dir", NOTEBOOK_PARAMETERS["run_dir"])
        url, sha = params.get("download_url", "") or "", params.get("download_sha256", "") or ""
        return cls(run_dir, config_from_params(params), synthetic=syn, params=own, verbose=verbose,
                   download=bool(params.get("download", False)), download_url=url,
                   download_sha256=sha)  # fmt: skip

    # ------------------------------------------------------------------ folder and data
    figures_dir = property(lambda self: self.root / "figures")
    metrics_path = property(lambda self: self.root / "metrics.json")
    data_root = property(lambda self: self.data.root, doc="The MVTec-layout folder in use.")
    is_synthetic = property(lambda self: self.data.is_synthetic)
    train_samples = property(lambda self: self.data.train_samples)
    test_samples = property(lambda self: self.data.test_samples)

    def describe(self) -> str:
        c = self.config
        made = f"synthetic set ({self.data.synthetic['size']} px), generated in <run folder>/"
        source = made + self.cache.rel(self.data_root) if self.is_synthetic else str(self.data_root)
        return (f"run folder : {self.root}\ndata       : {source}\nconfig hash: {c.hash()}  "
                f"(backbone {c.backbone}, layers {c.layers}, input {c.input_size} px, coreset "
                f"{c.coreset_ratio:g})")  # fmt: skip

    # ------------------------------------------------------------------ cached stages
    def path(self, stage: str) -> Path:
        """The cache file of ``stage`` (see :class:`helpers.run.stages.Stages`)."""
        return self.stages.path(stage)

    def is_cached(self, stage: str) -> bool:
        """True when ``stage``'s file was made with the current settings and data."""
        return self.stages.is_cached(stage)

    def new_model(self, **overrides) -> PatchCore:
        """A PatchCore for this config (no bank yet); ``overrides`` are runtime fields."""
        return PatchCore(self.config.replace(**overrides) if overrides else self.config)

    def embed_samples(self, model: PatchCore, samples: list[Sample]) -> tuple:
        """Patch embeddings [n, h, w, D] (CPU) of a few ``samples`` (for figures) and the crops
        the network saw (RGB uint8)."""
        emb = torch.cat([b.embeddings.cpu() for b in model.embed_images(samples)])
        crops = [model.preprocess.crop_rgb(load_image(s.path))[0] for s in samples]
        return emb, crops

    def features(self, model: PatchCore | None = None):
        """Patch features of all good training images (notebook 02), cached."""
        return stages.features(self.stages, model)

    def model(self, **overrides) -> PatchCore:
        """The fitted PatchCore (notebook 03): the cached bank, or built and saved; ``overrides``:
        runtime fields only."""
        return stages.fitted_model(self.stages, **overrides)

    def coverage(self, ratios: list[float], max_patches: int = 2000) -> dict[str, np.ndarray]:
        """Coverage radius of greedy and of random subsets for each coreset ratio (cached)."""
        return stages.coverage(self.stages, ratios, max_patches)

    def predictions(self, model=None, batch_size: int | None = None) -> RunPrediction:
        """Scores and anomaly maps of every test image (notebook 04), cached."""
        return stages.predictions(self.stages, model, batch_size)

    def threshold(self, model: PatchCore | None = None) -> dict:
        """The good-only threshold at ``config.false_alarm_rate`` (and the max of good) from the
        training images' held-out scores (cached), written beside the bank."""
        return stages.good_only_threshold(self.stages, model)

    # ------------------------------------------------------------------ evaluation
    def masks(self, pred: RunPrediction) -> list[np.ndarray | None]:
        """Ground-truth masks at each map's size (all False for good images, None when missing)."""
        return masks_like(self.test_samples, pred.maps)

    def evaluate(self, pred: RunPrediction) -> dict[str, Any]:
        """:func:`helpers.evaluation.report.evaluate` of the test set, plus ``thresholds``: the
        F1-optimal one (test labels) beside the good-only ones (:meth:`threshold`), each with the
        false-alarm and miss rates it gives on the test set."""
        out = report.evaluate(self.test_samples, pred)
        try:
            good_only = self.threshold()
        except ValueError as exc:  # a bank not made from the cached features: say so, go on
            warnings.warn(f"no good-only threshold: {exc}", stacklevel=2)
            good_only = None
        labels = [s.label for s in self.test_samples]
        out["thresholds"] = report.thresholds(labels, pred.scores, out["f1_threshold"], good_only)
        return out

    def write_metrics(self, metrics: dict[str, Any], pred: RunPrediction) -> dict[str, Any]:
        """Write metrics.json (atomically) with every key of the contract; returns it."""
        c, timings = self.config, report.timings(self.cache.info(self.path("bank")), pred)
        record = dict(n_train=len(self.train_samples), n_test=len(self.test_samples),
                      timings=timings, config=c.to_dict(), data=self.data.record(),
                      config_hash=c.hash(), versions=versions())  # fmt: skip
        return report.write_metrics(self.metrics_path, metrics, record)

    def save_json(self, name: str, obj: Any) -> Path:
        """Write ``run_dir/<name>`` atomically (NaN -> null)."""
        return atomic_write_json(self.root / name, report.finite(obj))

    def show(self, fig, name: str, display: bool = True, dpi: int = 100) -> None:
        """Save ``fig`` as figures/<name>.png and show that PNG (:func:`save_and_show`)."""
        save_and_show(fig, self.figures_dir / f"{name}.png", display=display, dpi=dpi)


def save_and_show(fig, path: str | Path, display: bool = True, dpi: int = 100) -> Path:
    """Save ``fig`` as ``path`` (atomically) and show that PNG in the notebook (rendered once, so
    the notebook and the file show the same picture)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    out = atomic_write_bytes(Path(path), buf.getvalue())
    if display:
        import IPython.display as ipd

        ipd.display(ipd.Image(data=buf.getvalue(), format="png"))
    release_freed_memory()  # a figure of 1024-px images renders through large temporaries
    return out


def saved_model(source: str | Path, **overrides) -> tuple[PatchCore, dict | None]:
    """(model, saved good-only threshold or None) of a run folder (its run.json's config, the
    bank and threshold in artifacts/) or a bank file (the threshold in its header or beside it).
    Runtime ``overrides`` (device, batch_size...) are allowed; an artifact setting that differs
    from the bank's is refused. Every refusal is a ValueError of one line saying what to do."""
    source = Path(source).expanduser()
    if not source.exists():
        raise ValueError(f"{source} does not exist: give a run folder or a bank file")
    try:
        if source.is_dir():
            if not (source / "run.json").is_file():
                why = "give a run folder made by python -m helpers run, or a .safetensors bank file"
                raise ValueError(f"{source} is not a run folder (no run.json); {why}")
            params = json.loads((source / "run.json").read_text()).get("parameters", {})
            try:
                cfg = config_from_params({**params, **overrides})
            except (ConfigError, TypeError) as exc:
                raise ValueError(f"{source}/run.json gives no valid config ({exc})") from exc
            bank = Stages(ArtifactCache(source / "artifacts", source), None, cfg).path("bank")
            if not bank.is_file():
                raise ValueError(
                    f"{source} has no memory bank for its config ({bank.name} is missing): "
                    "finish the run first (python -m helpers run ... --resume)"
                )
            model = PatchCore.load(bank, cfg)
        else:
            bank, model = source, PatchCore.load(source, **overrides)
            if overrides:  # an artifact override must match the bank, as for a run folder
                PatchCore.load(bank, model.config)
    except BankMismatchError as exc:
        raise ValueError(" ".join(str(exc).split())) from exc
    except ConfigError as exc:
        raise ValueError(f"invalid setting: {exc}") from exc
    except ValueError as exc:  # not a safetensors file, truncated; or said above
        raise ValueError(str(exc).splitlines()[0]) from exc
    side = threshold_path(bank)  # the run's threshold, or one written beside a bank file
    threshold = json.loads(side.read_text()) if side.is_file() else model.threshold
    if (threshold or {}).get("bank_sha256") not in (None, bank_digest(model.memory_bank)):
        raise ValueError(
            f"the saved threshold ({side if side.is_file() else bank}) was computed for another "
            "memory bank; recompute it (run the main job again, or PatchCore.calibrate) or pass "
            "--threshold VALUE"
        )
    return model, threshold
