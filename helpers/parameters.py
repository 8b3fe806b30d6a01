"""The parameters a run accepts: every ``Config`` field plus the notebooks' own (declared here,
so ``-p NAME`` is checked without reading notebook source), the presets, and ``-p`` value parsing.
"""

from __future__ import annotations

import json
from typing import Any

from .datasource import SYNTHETIC_DEFAULTS

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


# Every notebook's parameters cell declares these, then the few knobs its lesson is about (as
# Colab form fields); any other parameter keeps its default unless papermill's -p sets it.
COMMON_PARAMETERS = ("dataset_path", "download", "backbone", "run_dir")


def known_parameters() -> dict[str, Any]:
    """Every parameter a run accepts, with its default: the Config fields and the notebooks'."""
    import dataclasses

    from .config import Config

    return {**{f.name: f.default for f in dataclasses.fields(Config)}, **NOTEBOOK_PARAMETERS}
