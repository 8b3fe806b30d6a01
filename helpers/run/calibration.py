"""A run's good-only threshold: the held-out scores of its training images (a cached stage,
``heldout-<hash>.safetensors``), the threshold at the config's ``false_alarm_rate`` and the
max-of-good one (:mod:`helpers.core.threshold`), saved beside the bank as
``bank-<hash>.threshold.json`` (atomically), which ``python -m helpers predict`` reads.

The held-out scores need the bank and the training features (both cached by notebooks 02 and
03): one scoring pass over the training set, no refit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from helpers.core.bank import bank_digest, held_out_scores
from helpers.core.model import PatchCore
from helpers.core.runtime import atomic_write_json
from helpers.run import stages
from helpers.run.stages import Stages

# the settings a held-out score depends on besides the bank (the map's blur does not matter)
HELD_OUT_FIELDS = ("num_neighbors", "distance", "cosine_floor")


def threshold_path(bank_path: str | Path) -> Path:
    """``bank-<hash>.safetensors`` -> ``bank-<hash>.threshold.json`` (beside it)."""
    return Path(bank_path).with_suffix(".threshold.json")


def held_out(st: Stages, model: PatchCore | None = None) -> tuple[np.ndarray, dict]:
    """(held-out score of each training image, info), cached in artifacts/."""
    c = st.config

    def compute():
        m = model or stages.fitted_model(st)
        feats = st.cache.nested(lambda: stages.features(st, m))
        try:
            scores, info = held_out_scores(m, feats, progress=st.verbose)
        finally:
            feats.close()
        info["bank_sha256"] = bank_digest(m.memory_bank)
        info["paths"] = [str(s.path.relative_to(st.data.root)) for s in st.data.train_samples]
        return {"scores": torch.from_numpy(scores)}, info

    meta = st.meta("heldout")
    meta["extra"] = json.dumps({k: getattr(c, k) for k in HELD_OUT_FIELDS}, sort_keys=True)
    tensors, info = st.cache.cached("heldout", st.hash("heldout"), meta, compute)
    return tensors["scores"].numpy(), info


def good_only_threshold(st: Stages, model: PatchCore | None = None) -> dict:
    """The run's good-only threshold (see :meth:`PatchCore.calibrate`), written beside the bank
    with what it was computed on; returns it."""
    m = model or stages.fitted_model(st)
    scores, info = held_out(st, m)
    if info.get("bank_sha256") != bank_digest(m.memory_bank):
        raise ValueError(
            f"{st.cache.rel(st.path('heldout'))} was computed for another bank; delete it to "
            "have it computed again"
        )
    t = m.calibrate(None, scores=scores)
    t["computed_on"] = f"{info['n_images']} good training images, {info['method']}"
    t["data"] = st.data.data_id()
    t["bank_file"] = st.path("bank").name
    t["held_out_scores"] = [float(s) for s in scores]
    atomic_write_json(threshold_path(st.path("bank")), t)
    return t
