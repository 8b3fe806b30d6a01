"""A run's cached stages, one function each, handed a :class:`Stages` context (cache, data,
config; never the Run): features (notebook 02), the fitted model and coverage curve (03),
predictions (04) and the good-only threshold (written beside the bank for ``predict``). A
stage's file ``<stage>-<hash>.safetensors`` records the settings and the images' fingerprints it
was made from; one that differs or does not read back whole is recomputed (events.jsonl: why).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import closing
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from helpers.core.bank import bank_digest, held_out_scores
from helpers.core.config import Config
from helpers.core.coreset import Projection, covering_radius, greedy_coreset
from helpers.core.images import Geometry
from helpers.core.maps import grids_to_maps
from helpers.core.model import PatchCore, Prediction
from helpers.core.runtime import atomic_write_json
from helpers.core.training import FeatureSpill, TrainingFeatures
from helpers.run.cache import ArtifactCache
from helpers.run.parameters import DataSource

SCORING_FIELDS = ("num_neighbors", "distance", "cosine_floor", "sigma")
HELD_OUT_FIELDS = SCORING_FIELDS[:3]  # a held-out score does not depend on the map's blur
FEATURE_FREE_FIELDS = ("coreset_ratio", "coreset_max_size", "coreset_projection_dim",
                       "coreset_start_points")  # fmt: skip


@dataclass
class RunPrediction(Prediction):
    """A :class:`~helpers.core.model.Prediction` of a run's test set, with its labels, defect
    names, paths and how the scores were timed."""

    labels: np.ndarray | None = None  # [N] 0 good, 1 defective
    defects: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seconds: float = math.nan  # wall time of predict + maps when computed
    batch_size: int | None = None
    device: str = ""


@dataclass
class Stages:
    """What every stage works with: the run's artifact cache, its data and its config."""

    cache: ArtifactCache
    data: DataSource
    config: Config
    verbose: bool = True

    def hash(self, stage: str) -> str:
        """:meth:`Config.hash` of the config that made ``stage`` (features: with the coreset
        settings at their defaults, so another ``coreset_ratio`` reuses them)."""
        if stage == "features":
            defaults = {f.name: f.default for f in fields(Config) if f.name in FEATURE_FREE_FIELDS}
            return self.config.replace(**defaults).hash()
        return self.config.hash()

    def path(self, stage: str) -> Path:
        return self.cache.path(stage, self.hash(stage))

    def spill_path(self) -> Path:
        """The full training features (float32 rows) next to ``features-<hash>.safetensors``."""
        return self.path("features").with_suffix(".f32")

    def meta(self, stage: str) -> dict[str, str]:
        """What a stage's file must hold to be reused: the settings hash, the data source and
        the fingerprint of the images it was made from (training; for predictions, test too)."""
        meta = dict(stage=stage, config_hash=self.hash(stage), data_id=self.data.data_id(),
                    data_train=self.data.fingerprint("train"))  # fmt: skip
        if stage == "predictions":
            meta["data_test"] = self.data.fingerprint("test")
        scoring = {"predictions": SCORING_FIELDS, "heldout": HELD_OUT_FIELDS}.get(stage, ())
        meta["extra"] = json.dumps({k: getattr(self.config, k) for k in scoring}, sort_keys=True)
        return meta

    def is_cached(self, stage: str) -> bool:
        """True when the stage's file exists and was made with the current settings and data
        (and, for features, its spill file is whole)."""
        saved = self.cache.metadata(self.path(stage)) or {}
        if saved.get("data_id") != self.data.data_id():  # cheap first: no data listed or made
            return False
        fresh = self.cache.stale_reason(self.path(stage), self.meta(stage)) is None
        return fresh and (stage != "features" or _spill_problem(self) is None)

    def cached(self, stage: str, compute, stale: str | None = None):
        """(tensors, info) of ``stage``: loaded when cached, else ``compute()`` and saved."""
        return self.cache.cached(stage, self.hash(stage), self.meta(stage), compute, stale)


def features(st: Stages, model: PatchCore | None = None) -> TrainingFeatures:
    """Patch features of all good training images (notebook 02), cached: the coreset projection
    in ``features-<hash>.safetensors`` and, unless it is the identity, the full embeddings in
    ``features-<hash>.f32`` (float32 rows)."""
    m = model or PatchCore(st.config)

    def compute():
        st.cache.folder.mkdir(parents=True, exist_ok=True)
        feats = m.extract(st.data.train_samples, progress=st.verbose, spill_dir=st.cache.folder)
        if feats.spill is not None:
            feats.spill.persist(st.spill_path())
            feats.spill.close()
        rows, n = feats.projection.result()
        info = dict(grid=list(feats.grid), n_images=feats.n_images, n_views=feats.n_views,
                    seconds=feats.seconds, device=str(m.device), dim=feats.dim,
                    spill=feats.spill is not None, tap_weights=m.tap_weights)  # fmt: skip
        return {"projection": rows[:n].cpu()}, info

    stale = None
    if st.cache.stale_reason(st.path("features"), st.meta("features")) is None:
        stale = _spill_problem(st)  # the .f32 file deleted or cut short: recompute both
    tensors, info = st.cached("features", compute, stale)
    m.tap_weights = info.get("tap_weights")  # the features were scaled by them (balance_taps)
    n_views = info.get("n_views", info["n_images"])
    proj = Projection.of_rows(tensors["projection"], m.device)
    spill = FeatureSpill.open(st.spill_path(), info["dim"], _rows(info)) if info["spill"] else None
    rotations = max(1, n_views // max(1, info["n_images"]))
    kw = dict(grid=tuple(info["grid"]), n_views=n_views, rotations=rotations)
    return TrainingFeatures(proj, spill, seconds=info["seconds"], **kw)


def _rows(info: dict) -> int:  # training patches in the features' info: views x grid
    return info.get("n_views", info["n_images"]) * info["grid"][0] * info["grid"][1]


def _spill_problem(st: Stages) -> str | None:
    """Why the cached features' spill file (the full embeddings) cannot be used, or None."""
    info = st.cache.info(st.path("features"))
    if not all(k in info for k in ("grid", "dim", "n_images", "spill")):
        return "its info entry is incomplete"
    if not info["spill"]:
        return None
    spill = st.spill_path()
    if not spill.is_file():
        return f"{spill.name} is missing"
    size, want = spill.stat().st_size, _rows(info) * info["dim"] * 4
    return f"{spill.name} holds {size} bytes, not {want} (cut short?)" if size != want else None


def fitted_model(st: Stages, **overrides) -> PatchCore:
    """The fitted PatchCore (notebook 03): the cached bank, else the greedy coreset of the cached
    (or freshly extracted) features, saved. ``overrides``: runtime fields only (device, ...)."""
    path = st.path("bank")
    reason = st.cache.stale_reason(path, st.meta("bank"))
    if reason is None:
        try:
            model = PatchCore.load(path, st.config, **overrides)
        except ValueError as exc:  # damaged (checksum, NaN, truncated): built again below
            reason = f"unreadable ({exc})"
        else:
            st.cache.log("bank", "loaded", path, f"  ({len(model.bank)} x {model.bank.dim})")
            return model
    model = PatchCore(st.config.replace(**overrides) if overrides else st.config)
    with closing(st.cache.nested(lambda: features(st, model))) as feats:
        model.build_bank(feats, progress=st.verbose)
    model.save(path, metadata=st.meta("bank"))
    note = f"  ({len(model.bank)} x {model.bank.dim})"
    st.cache.log("bank", "computed", path, note, reason=reason)
    return model


def coverage(st: Stages, ratios: list[float], max_patches: int = 2000) -> dict[str, np.ndarray]:
    """Coverage radius (max distance of a training patch to its nearest kept patch, in the
    full feature space) of greedy and of random subsets, for each coreset ratio."""
    ratios, c = sorted(float(r) for r in ratios), st.config

    def compute():
        with closing(features(st)) as all_feats:
            feats = all_feats.sample(max_patches)
        n = feats.shape[0]
        sizes = [max(1, min(n, int(n * r))) for r in ratios]
        kw = dict(projection_dim=c.coreset_projection_dim, start_points=c.coreset_start_points)
        picks = greedy_coreset(feats, max(sizes), seed=c.seed, **kw)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(c.seed))
        radius = lambda idx: [covering_radius(feats, idx[:k]) for k in sizes]
        columns = dict(ratios=ratios, greedy_radius=radius(picks), random_radius=radius(perm))
        tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in columns.items()}
        tensors["sizes"] = torch.tensor(sizes)
        return tensors, {"n_patches": n, "max_patches": max_patches}

    tensors, info = st.cached("coverage", compute)
    if tensors["ratios"].tolist() != ratios or info.get("max_patches") != max_patches:
        why = "other coverage_ratios or coverage_max_patches asked for"
        tensors, info = st.cached("coverage", compute, stale=why)
    out = {k: v.numpy() for k, v in tensors.items()}
    out["n_patches"] = info["n_patches"]
    return out


def predictions(st: Stages, model: PatchCore | None = None, batch_size=None) -> RunPrediction:
    """Scores and anomaly maps of every test image (notebook 04), cached: the patch-score grids
    are saved, the maps (original pixels) made from them on load."""
    test, c = st.data.test_samples, st.config

    def compute():
        m = model or fitted_model(st, **({"batch_size": batch_size} if batch_size else {}))
        t0 = time.perf_counter()
        pred = m.predict(test, maps=False, progress=st.verbose)
        for i in range(0, len(test), 16):  # timed with the scores, then dropped
            m.maps_from_grids(pred.patch_scores[i : i + 16], pred.geometries[i : i + 16])
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        geoms = np.array([[-1] * 7 if g is None else astuple(g) for g in pred.geometries], np.int64)
        arrays = dict(scores=pred.scores, patch_scores=pred.patch_scores, geometries=geoms)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        paths = [str(s.path.relative_to(st.data.root)) for s in test]
        info = dict(seconds=seconds, paths=paths, defects=[s.defect for s in test],
                    device=str(m.device), batch_size=m.config.batch_size)  # fmt: skip
        return tensors, info

    tensors, info = st.cached("predictions", compute)
    if len(info.get("paths", [])) != len(test) or tensors["scores"].shape[0] != len(test):
        why = f"made for {len(info.get('paths', []))} test images, the test set has {len(test)}"
        tensors, info = st.cached("predictions", compute, stale=why)
    scores = tensors["scores"].numpy()
    rows = zip(tensors["geometries"].numpy(), scores)  # a skipped image: no geometry
    geoms = [None if r[0] < 0 or not np.isfinite(s) else Geometry(*map(int, r)) for r, s in rows]
    grids = tensors["patch_scores"]  # maps made from the saved grids, on the CPU
    maps = grids_to_maps(grids, geoms, input_size=c.input_size, sigma=c.sigma, device="cpu")
    labels = np.array([0 if d == "good" else 1 for d in info["defects"]])
    kw = {k: info[k] for k in ("defects", "paths", "seconds", "batch_size", "device")}
    return RunPrediction(scores, maps, grids.numpy(), geoms, labels=labels, **kw)


# ------------------------------------------------------------------ the good-only threshold
def threshold_path(bank_path: str | Path) -> Path:  # bank-<hash>.threshold.json, beside it
    return Path(bank_path).with_suffix(".threshold.json")


def held_out(st: Stages, model: PatchCore | None = None) -> tuple[np.ndarray, dict]:
    """(held-out score of each training image, info), cached in artifacts/."""

    def compute():
        m = model or fitted_model(st)
        with closing(st.cache.nested(lambda: features(st, m))) as feats:
            scores, info = held_out_scores(m, feats, progress=st.verbose)
        info["bank_sha256"] = bank_digest(m.memory_bank)
        info["paths"] = [str(s.path.relative_to(st.data.root)) for s in st.data.train_samples]
        return {"scores": torch.from_numpy(scores)}, info

    tensors, info = st.cached("heldout", compute)
    return tensors["scores"].numpy(), info


def good_only_threshold(st: Stages, model: PatchCore | None = None) -> dict:
    """The run's good-only threshold (:meth:`PatchCore.calibrate`), written beside the bank."""
    m = model or fitted_model(st)
    scores, info = held_out(st, m)
    if info.get("bank_sha256") != bank_digest(m.memory_bank):
        why = "was computed for another bank; delete it to have it computed again"
        raise ValueError(f"{st.cache.rel(st.path('heldout'))} {why}")
    t = m.calibrate(None, scores=scores)
    t.update(computed_on=f"{info['n_images']} good training images, {info['method']}",
             data=st.data.data_id(), bank_file=st.path("bank").name,
             held_out_scores=[float(s) for s in scores])  # fmt: skip
    atomic_write_json(threshold_path(st.path("bank")), t)
    return t
