"""The cached stages of a run, one function each, called by :class:`~helpers.artifacts.Run`:
training features (notebook 02), the fitted model (03), the coverage curve (03) and the
predictions (04). Each goes through PatchCore's public seams (``extract``, ``build_bank``,
``predict``, ``maps_from_grids``) and the run's artifact cache."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .coreset import covering_radius, greedy_coreset
from .data import Geometry
from .io import load_tensors, save_tensors
from .model import PatchCore
from .prediction import Prediction
from .projection import Projection
from .spill import FeatureSpill
from .training import TrainingFeatures

if TYPE_CHECKING:
    from .artifacts import Run


def features(run: Run, model=None) -> TrainingFeatures:
    """Patch features of all good training images (notebook 02), cached: the coreset
    projection in ``features-<hash>.safetensors`` and, unless the projection is the identity,
    the full embeddings in ``features-<hash>.f32`` (float32 rows), both in artifacts/.
    Returns a :class:`~helpers.training.TrainingFeatures`."""
    m = model or run.new_model()

    def compute():
        run.artifacts_dir.mkdir(parents=True, exist_ok=True)
        feats = m.extract(run.train_samples, progress=run.verbose, spill_dir=run.artifacts_dir)
        if feats.spill is not None:
            feats.spill.persist(run.spill_path())
            feats.spill.close()
        rows, n = feats.projection.result()
        info = {
            "grid": list(feats.grid),
            "n_images": feats.n_images,
            "n_views": feats.n_views,
            "seconds": feats.seconds,
            "device": str(m.device),
            "dim": feats.dim,
            "spill": feats.spill is not None,
        }
        return {"projection": rows[:n].cpu()}, info

    if (
        run.is_cached("features")
        and run.cache.info(run.path("features")).get("spill")
        and not run.spill_path().is_file()
    ):
        run.path("features").unlink()  # the spill file was deleted: recompute
    tensors, info = run.cached("features", compute)
    proj = Projection.of_rows(tensors["projection"], m.device)
    spill = FeatureSpill.open(run.spill_path(), info["dim"]) if info["spill"] else None
    return TrainingFeatures(
        proj,
        spill,
        grid=tuple(info["grid"]),
        n_images=info["n_images"],
        n_views=info.get("n_views", info["n_images"]),
        seconds=info["seconds"],
    )


def fitted_model(run: Run, **overrides):
    """The fitted PatchCore (notebook 03): loads the bank when cached, else runs the greedy
    coreset on the cached (or freshly extracted) features and saves the bank.
    ``overrides`` change runtime fields only (device, batch_size, precision...)."""
    path = run.path("bank")
    if run.is_cached("bank"):
        model = PatchCore.load(path, run.config, **overrides)
        run.cache.log("bank", "loaded", path, _bank_note(model))
        return model
    model = run.new_model(**overrides)
    feats = run.cache.nested(lambda: run.features(model))
    try:
        model.build_bank(feats, progress=run.verbose)
    finally:
        feats.close()
    model.save(path)
    # the same metadata as the other stages, so that is_cached() can check the data
    tensors, meta = load_tensors(path)
    save_tensors(path, tensors, {**meta, **run.stage_meta("bank")})
    run.cache.log("bank", "computed", path, _bank_note(model))
    return model


def coverage(run: Run, ratios: list[float], max_patches: int = 2000) -> dict[str, np.ndarray]:
    """Coverage radius (max distance of a training patch to its nearest kept patch, in the
    full feature space) of greedy and of random subsets, for each coreset ratio."""
    ratios = sorted(float(r) for r in ratios)

    def compute():
        all_feats = run.features()
        try:
            feats = all_feats.sample(max_patches)
        finally:
            all_feats.close()
        gen = torch.Generator().manual_seed(run.config.seed)
        n = feats.shape[0]
        sizes = [max(1, min(n, int(n * r))) for r in ratios]
        c = run.config
        picks = greedy_coreset(
            feats,
            max(sizes),
            projection_dim=c.coreset_projection_dim,
            start_points=c.coreset_start_points,
            seed=c.seed,
        )
        perm = torch.randperm(n, generator=gen)
        greedy = [covering_radius(feats, picks[:k]) for k in sizes]
        rand = [covering_radius(feats, perm[:k]) for k in sizes]
        tensors = {
            "ratios": torch.tensor(ratios, dtype=torch.float64),
            "sizes": torch.tensor(sizes),
            "greedy_radius": torch.tensor(greedy, dtype=torch.float64),
            "random_radius": torch.tensor(rand, dtype=torch.float64),
        }
        return tensors, {"n_patches": n, "max_patches": max_patches}

    tensors, info = run.cached("coverage", compute)
    if tensors["ratios"].tolist() != ratios or info.get("max_patches") != max_patches:
        run.path("coverage").unlink()  # asked for other ratios: recompute
        tensors, info = run.cached("coverage", compute)
    out = {k: v.numpy() for k, v in tensors.items()}
    out["n_patches"] = info["n_patches"]
    return out


def predictions(run: Run, model=None, batch_size: int | None = None) -> Prediction:
    """Scores and anomaly maps of every test image (notebook 04), cached. The patch-score
    grids are saved; maps in original pixels are made from them on load."""
    test = run.test_samples
    used = {}

    def compute():
        m = model or run.model(**({"batch_size": batch_size} if batch_size else {}))
        t0 = time.perf_counter()
        pred = m.predict(test, maps=False, progress=run.verbose)
        for start in range(0, len(test), 16):  # timed with the scores, then dropped
            m.maps_from_grids(
                pred.patch_scores[start : start + 16], pred.geometries[start : start + 16]
            )
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        geoms = np.array(
            [
                [-1] * 7
                if g is None
                else [g.orig_h, g.orig_w, g.res_h, g.res_w, g.top, g.left, g.crop]
                for g in pred.geometries
            ],
            dtype=np.int64,
        )
        used.update(device=str(m.device), batch_size=m.config.batch_size)
        tensors = {
            "scores": torch.from_numpy(pred.scores),
            "patch_scores": torch.from_numpy(pred.patch_scores),
            "geometries": torch.from_numpy(geoms),
        }
        info = {
            "seconds": seconds,
            "paths": [str(s.path.relative_to(run.data_root)) for s in test],
            "defects": [s.defect for s in test],
            **used,
        }
        return tensors, info

    tensors, info = run.cached("predictions", compute)
    geoms = [
        None if row[0] < 0 else Geometry(*map(int, row)) for row in tensors["geometries"].numpy()
    ]
    scores = tensors["scores"].numpy()
    geoms = [None if not np.isfinite(scores[i]) else g for i, g in enumerate(geoms)]
    # maps from the saved grids with the model's own seam (on the CPU, as they were saved)
    maps = run.new_model(device="cpu").maps_from_grids(tensors["patch_scores"], geoms)
    defects = info["defects"]
    return Prediction(
        scores,
        maps,
        tensors["patch_scores"].numpy(),
        geoms,
        labels=np.array([0 if d == "good" else 1 for d in defects]),
        defects=defects,
        paths=info["paths"],
        seconds=info["seconds"],
        batch_size=info["batch_size"],
        device=info["device"],
    )


def _bank_note(model) -> str:
    return f"  ({model.memory_bank.shape[0]} x {model.memory_bank.shape[1]})"
