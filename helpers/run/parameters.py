"""The parameters a run accepts: every ``Config`` field plus the notebooks' own (declared here,
so ``-p NAME`` is checked without reading notebook source), the presets, and ``-p`` value parsing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from helpers.core.config import Config, ConfigError
from helpers.data.source import SYNTHETIC_DEFAULTS

CONFIG_FIELDS = tuple(f.name for f in fields(Config))

# Pipeline runs are not interactive: widgets fall back to static figures saved in figures/.
BASE_PARAMETERS: dict[str, Any] = {"interactive": False}
PRESETS: dict[str, dict[str, Any]] = {
    # make demo: the synthetic set with the offline MobileNetV2 and its defaults, except the input
    # size (the synthetic images are 256 px: the network sees them unscaled)
    "demo": {"backbone": "mobilenet_v2", "input_size": 256, "resize": 256},
    # tests: as small as still meaningful
    "ci": {
        "backbone": "mobilenet_v2",
        "input_size": 128,
        "resize": 128,
        "synthetic_size": 128,
        "synthetic_n_train": 8,
        "synthetic_n_test_good": 3,
        "synthetic_n_per_defect": 2,
        "n_examples": 2,
        "coverage_ratios": [0.05, 0.2, 1.0],
        "coverage_max_patches": 1000,
        "timing_repeats": 1,
        "batch_size": 8,
    },
}
RESERVED = ("run_dir",)


def parse_value(text: str) -> Any:
    """'0.1' -> 0.1, '8' -> 8, 'true'/'True' -> True, 'null'/'None' -> None, '[1, 2]' -> [1, 2],
    anything else -> the string itself."""
    stripped = text.strip()
    named = {"None": None, "True": True, "False": False}
    if stripped in named:
        return named[stripped]
    try:
        return json.loads(stripped)
    except ValueError:
        return text


# The notebooks' own parameters (besides every Config field), with their defaults; the parameters
# cells declare exactly these (tests/test_notebooks.py checks both ways).
NOTEBOOK_PARAMETERS: dict[str, Any] = {
    "run_dir": "runs/notebooks",
    "download": False,
    "download_url": "",
    "download_sha256": "",
    **{f"synthetic_{k}": v for k, v in SYNTHETIC_DEFAULTS.items()},
    "n_examples": 4,
    "coverage_ratios": [0.01, 0.02, 0.05, 0.1, 0.25, 0.5],
    "coverage_max_patches": 2000,
    "inference_batch_size": 0,
    "timing_repeats": 0,
    "interactive": True,
}


class ParameterError(ConfigError):
    """A notebook parameter (not a Config field) has a value it cannot take; the message names
    the parameter, its value and what is allowed."""


def _int(lo: int, hi: int, what: str):
    def check(name: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ParameterError(f"{name}={v!r} must be an integer in [{lo}, {hi}] ({what})")

    return check


def _bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ParameterError(f"{name}={v!r} must be true or false")


def _text(name: str, v: Any) -> None:
    if not isinstance(v, str):
        raise ParameterError(f"{name}={v!r} must be a string")


def _sha256(name: str, v: Any) -> None:
    if not isinstance(v, str) or (v and not re.fullmatch(r"[0-9a-fA-F]{64}", v)):
        raise ParameterError(f"{name}={v!r} must be empty or 64 hexadecimal digits (a sha256)")


def _ratios(name: str, v: Any) -> None:
    ok = isinstance(v, (list, tuple)) and len(v) > 0
    ok = ok and all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and 0 < r <= 1
        for r in v
    )
    if not ok:
        raise ParameterError(
            f"{name}={v!r} must be a list of ratios in (0, 1], e.g. [0.01, 0.1, 0.5]"
        )


# what each notebook parameter may be (checked before any notebook runs, and by Run)
NOTEBOOK_CHECKS = {
    "run_dir": _text,
    "download": _bool,
    "download_url": _text,
    "download_sha256": _sha256,
    "synthetic_size": _int(32, 4096, "side of the synthetic images in pixels"),
    "synthetic_n_train": _int(1, 100000, "synthetic training images"),
    "synthetic_n_test_good": _int(0, 100000, "synthetic good test images"),
    "synthetic_n_per_defect": _int(0, 100000, "synthetic test images per defect type"),
    "n_examples": _int(1, 1000, "images shown in the example figures"),
    "coverage_ratios": _ratios,
    "coverage_max_patches": _int(2, 10**7, "training patches the coverage curve samples"),
    "inference_batch_size": _int(0, 4096, "0: chosen for the device"),
    "timing_repeats": _int(0, 10000, "0: 10 on a GPU, 5 on the CPU"),
    "interactive": _bool,
}


def check_notebook_parameters(params: dict[str, Any]) -> None:
    """Raise :class:`ParameterError` naming the first notebook parameter in ``params`` whose
    value is out of range (Config fields are checked by :class:`Config`)."""
    for name, check in NOTEBOOK_CHECKS.items():
        if name in params:
            check(name, params[name])


# Every notebook's parameters cell declares these, then the few knobs its lesson is about (as
# Colab form fields); any other parameter keeps its default unless papermill's -p sets it.
COMMON_PARAMETERS = ("dataset_path", "download", "backbone", "run_dir")


def known_parameters() -> dict[str, Any]:
    """Every parameter a run accepts, with its default: the Config fields and the notebooks'."""
    return {**{f.name: f.default for f in fields(Config)}, **NOTEBOOK_PARAMETERS}


def repo_root() -> Path:
    """The folder holding ``helpers/`` (the repository root of a clone)."""
    return Path(__file__).resolve().parents[2]


def config_from_params(params: dict[str, Any]) -> Config:
    """A :class:`Config` from a notebook's parameter variables (``globals()``): every Config field
    found there is used, the rest keep their defaults. Empty strings mean None for
    ``dataset_path``, ``weights`` and the backbone-dependent sizes."""
    kw = {k: params[k] for k in CONFIG_FIELDS if k in params}
    for name in (
        "dataset_path",
        "weights",
        "layers",
        "input_size",
        "resize",
        "pretrain_embed_dim",
        "target_embed_dim",
    ):
        if name in kw and (kw[name] == "" or kw[name] == "None"):
            kw[name] = None
    return Config(**kw)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """Relative run folders are taken from the repository root, so a notebook opened from
    ``notebooks/`` and the pipeline agree on where ``runs/...`` is."""
    path = Path(run_dir).expanduser()
    return path if path.is_absolute() else repo_root() / path
