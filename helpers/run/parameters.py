"""What a run is given: the parameters it accepts (every ``Config`` field plus the notebooks' own,
declared here so that ``-p NAME`` is checked without reading notebook source), the presets, ``-p``
value parsing, and :class:`DataSource`, where its images come from (the synthetic set generated
into the run folder, or an MVTec-layout folder, downloaded first when asked)."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from helpers.core.config import Config, ConfigError
from helpers.core.images import check_image_file
from helpers.data.mvtec import Sample, fingerprint, list_samples

# the synthetic set's parameters (the notebooks' synthetic_* parameters override them)
SYNTHETIC_DEFAULTS = dict(size=256, n_train=24, n_test_good=8, n_per_defect=6)

# Pipeline runs are not interactive: widgets fall back to static figures saved in figures/.
BASE_PARAMETERS: dict[str, Any] = {"interactive": False}
PRESETS: dict[str, dict[str, Any]] = {
    # make demo: the synthetic set with the offline MobileNetV2 and its defaults, except the input
    # size (the synthetic images are 256 px: the network sees them unscaled)
    "demo": {"backbone": "mobilenet_v2", "input_size": 256, "resize": 256},
    # tests: as small as still meaningful
    "ci": dict(backbone="mobilenet_v2", input_size=128, resize=128, synthetic_size=128,
               synthetic_n_train=8, synthetic_n_test_good=3, synthetic_n_per_defect=2,
               n_examples=2, coverage_ratios=[0.05, 0.2, 1.0], coverage_max_patches=1000,
               timing_repeats=1, batch_size=8),
}  # fmt: skip
RESERVED = ("run_dir",)


def parse_value(text: str) -> Any:
    """'0.1' -> 0.1, '8' -> 8, 'true'/'True' -> True, 'null'/'None' -> None, '[1, 2]' -> [1, 2],
    anything else -> the string itself."""
    if (stripped := text.strip()) in (named := {"None": None, "True": True, "False": False}):
        return named[stripped]
    try:
        return json.loads(stripped)
    except ValueError:
        return text


# The notebooks' own parameters (besides every Config field): their defaults, declared by the
# parameters cells exactly (tests/test_notebooks.py checks both ways), and what each may be
# (checked before any notebook runs, and by Run): integers in [lo, hi] (what they are), or a kind.
_SYN = SYNTHETIC_DEFAULTS
_NOTEBOOK = {
    "run_dir": ("runs/notebooks", "text"),
    "download": (False, "bool"),
    "download_url": ("", "text"),
    "download_sha256": ("", "sha256"),
    "synthetic_size": (_SYN["size"], (32, 4096, "side of the synthetic images in pixels")),
    "synthetic_n_train": (_SYN["n_train"], (1, 100000, "synthetic training images")),
    "synthetic_n_test_good": (_SYN["n_test_good"], (0, 100000, "synthetic good test images")),
    "synthetic_n_per_defect": (_SYN["n_per_defect"], (0, 100000, "synthetic test images per defect type")),  # noqa: E501
    "n_examples": (4, (1, 1000, "images shown in the example figures")),
    "coverage_ratios": ([0.01, 0.02, 0.05, 0.1, 0.25, 0.5], "ratios"),
    "coverage_max_patches": (2000, (2, 10**7, "training patches the coverage curve samples")),
    "inference_batch_size": (0, (0, 4096, "0: chosen for the device")),
    "timing_repeats": (0, (0, 10000, "0: 10 on a GPU, 3 on the CPU")),
    "interactive": (True, "bool"),
}  # fmt: skip
NOTEBOOK_PARAMETERS: dict[str, Any] = {k: default for k, (default, _) in _NOTEBOOK.items()}
NOTEBOOK_CHECKS = {k: rule for k, (_, rule) in _NOTEBOOK.items()}


class ParameterError(ConfigError):
    """A notebook parameter (not a Config field) has a value it cannot take; the message names
    the parameter, its value and what is allowed."""


def check_notebook_parameters(params: dict[str, Any]) -> None:
    """Raise :class:`ParameterError` naming the first notebook parameter in ``params`` whose
    value is out of range (Config fields are checked by :class:`Config`)."""
    number = lambda r: isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)
    for name, rule in NOTEBOOK_CHECKS.items():
        if name not in params:
            continue
        v = params[name]
        if isinstance(rule, tuple):
            lo, hi, what = rule
            ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
            allowed = f"an integer in [{lo}, {hi}] ({what})"
        elif rule in ("bool", "text"):
            ok = isinstance(v, bool if rule == "bool" else str)
            allowed = "true or false" if rule == "bool" else "a string"
        elif rule == "sha256":
            ok = isinstance(v, str) and (not v or re.fullmatch(r"[0-9a-fA-F]{64}", v) is not None)
            allowed = "empty or 64 hexadecimal digits (a sha256)"
        else:
            ok = isinstance(v, (list, tuple)) and len(v) > 0
            ok = ok and all(number(r) and 0 < r <= 1 for r in v)
            allowed = "a list of ratios in (0, 1], e.g. [0.01, 0.1, 0.5]"
        if not ok:
            raise ParameterError(f"{name}={v!r} must be {allowed}")


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
    found there is used, the rest keep their defaults. "" and "None" mean None for
    ``dataset_path``, ``weights`` and the backbone-dependent sizes."""
    kw = {f.name: params[f.name] for f in fields(Config) if f.name in params}
    nullable = ("dataset_path", "weights", "layers", "input_size", "resize", "pretrain_embed_dim",
                "target_embed_dim")  # fmt: skip
    kw.update({k: None for k in nullable if k in kw and kw[k] in ("", "None")})
    return Config(**kw)


def resolve_run_dir(run_dir: str | Path) -> Path:
    """Relative run folders are taken from the repository root, so a notebook opened from
    ``notebooks/`` and the pipeline agree on where ``runs/...`` is."""
    path = Path(run_dir).expanduser()
    return path if path.is_absolute() else repo_root() / path


class DataSource:
    """The data of one config: ``config.dataset_path`` (None: the synthetic set, generated in
    ``data_dir`` with ``synthetic`` overriding :data:`SYNTHETIC_DEFAULTS`)."""

    def __init__(self, config: Config, data_dir: str | Path, *, synthetic: dict | None = None,
                 download=False, download_url: str = "", download_sha256: str = ""):  # fmt: skip
        self.config, self.data_dir = config, Path(data_dir)
        self.synthetic = {**SYNTHETIC_DEFAULTS, **(synthetic or {})}
        self.download = dict(download_missing=download, url=download_url or None,
                             sha256=download_sha256 or None)  # fmt: skip
        self._memo: dict = {}  # the root, and per split: listed, unreadable, usable, fingerprint
        self.skipped: dict[str, list[tuple[Sample, str]]] = {}  # split -> [(sample, reason)]

    def _once(self, key, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    is_synthetic = property(lambda self: not self.config.dataset_path)

    def data_id(self) -> str:
        """Where artifacts come from: the synthetic set's parameters or the data folder (what the
        files hold is :meth:`fingerprint`)."""
        if self.is_synthetic:
            return "synthetic:" + json.dumps(self.synthetic, sort_keys=True)
        folder = Path(self.config.dataset_path).expanduser().resolve()
        return f"folder:{folder}|{self.config.category}"

    @property
    def root(self) -> Path:
        """The MVTec-layout folder in use: generated (synthetic), downloaded or given."""
        return self._once("root", self._prepare)

    def _prepare(self) -> Path:
        c = self.config
        if self.is_synthetic:
            from helpers.data.synthetic import generate_dataset

            return generate_dataset(self.data_dir, c.category, seed=c.seed, **self.synthetic)
        from helpers.data.download import prepare_dataset

        return prepare_dataset(c.dataset_path, c.category, **self.download)

    def listed(self, split: str) -> list[Sample]:
        """Every image file of ``split`` ("train" or "test"), readable or not."""
        listing = lambda: list_samples(self.root, self.config.category, split)
        return self._once(("listed", split), listing)

    def unreadable(self, split: str) -> list[tuple[Sample, str]]:
        """(sample, reason) of each image of ``split`` that cannot be used (truncated, corrupt,
        too large), by :func:`helpers.core.images.check_image_file` (no decoding)."""
        check = lambda: [(s, why) for s in self.listed(split) if (why := check_image_file(s.path))]
        return self._once(("unreadable", split), check)

    def samples(self, split: str) -> list[Sample]:
        """The images of ``split`` a run uses: every listed one, or with ``skip_bad_images`` the
        readable ones (the others skipped with one counted warning, kept in ``skipped``)."""

        def usable() -> list[Sample]:
            if not self.config.skip_bad_images:
                return self.listed(split)
            bad = self.skipped[split] = self.unreadable(split)
            if bad:
                why = f"(skip_bad_images), e.g. {bad[0][0].path}: {bad[0][1]}"
                warnings.warn(f"skipped {len(bad)} unreadable {split} image(s) {why}", stacklevel=4)
            gone = {s.path for s, _ in bad}
            return [s for s in self.listed(split) if s.path not in gone]

        return self._once(("usable", split), usable)

    train_samples = property(lambda self: self.samples("train"))
    test_samples = property(lambda self: self.samples("test"))

    def fingerprint(self, split: str) -> str:
        """What the artifacts of ``split`` ("train", "test" or "masks") are made from: the
        :func:`~helpers.data.mvtec.fingerprint` of its files."""
        if split == "masks":
            files = lambda: [s.mask_path for s in self.listed("test") if s.mask_path is not None]
        else:
            files = lambda: [s.path for s in self.listed(split)]
        return self._once(("fingerprint", split), lambda: fingerprint(files(), self.root))

    def fingerprints(self) -> dict[str, str]:
        """Every split's :meth:`fingerprint` (generates the synthetic set when needed)."""
        return {split: self.fingerprint(split) for split in ("train", "test", "masks")}

    def record(self) -> dict:
        """The data entry of metrics.json."""
        folder = {"source": "folder", "path": str(self.root)}
        out = {"source": "synthetic", **self.synthetic} if self.is_synthetic else folder
        out["files"] = self.fingerprints()
        skipped = {split: [str(s.path.relative_to(self.root)) for s, _ in bad]
                   for split, bad in self.skipped.items() if bad}  # fmt: skip
        return {**out, "skipped": skipped} if skipped else out
