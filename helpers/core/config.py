"""One validated, JSON-serialisable configuration: every knob of a run, each notebook's parameters
cell maps onto it (notebook 01 introduces it). Fields left as ``None`` take the chosen backbone's
defaults (:mod:`helpers.core.backbones`), so ``Config(backbone="mobilenet_v2")`` suits that net."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from helpers.core.backbones import BACKBONES

# Fields that change a saved artifact (memory bank, features): two configs with the same values
# here produce the same bank, whatever their batch size, device or dataset path.
ARTIFACT_FIELDS = (
    "backbone", "weights", "layers", "input_size", "resize", "patch_size", "pretrain_embed_dim",
    "target_embed_dim", "balance_taps", "clahe", "clahe_clip_limit", "clahe_tile_grid",
    "coreset_ratio", "coreset_max_size", "coreset_projection_dim", "coreset_start_points",
    "train_rotations", "seed",
)  # fmt: skip
# Fields that a backbone may set (BackboneSpec.defaults); these values apply when it does not
# (coreset_max_size 0: no cap, the paper's 10 % of every training patch).
FALLBACK_DEFAULTS = {
    "train_rotations": 1, "distance": "l2", "cosine_floor": 0.0, "sigma": 4.0, "coreset_ratio": 0.1,
    "coreset_max_size": 0, "balance_taps": False,
}  # fmt: skip
# train_rotations=0 ("auto"): rotate the training images when they are few. Measured on real sets
# (benchmarks/RESULTS.md, issue 10): at 5 metal_nut images 8 rotations lift image AUROC 0.899 ->
# 0.956; on tire (5-60 images) they change nothing; at 213 transistor images they cost 8x the fit.
AUTO_ROTATIONS, AUTO_ROTATIONS_BELOW = 8, 20

# Config.validate's checks: integers in [lo, hi] (hint), finite numbers (test, allowed), choices.
INTS = {
    "input_size": (32, 2048, ""), "resize": (0, 4096, "0: squash the whole image to a square"),
    "patch_size": (1, 9, ""),
    "pretrain_embed_dim": (0, 65536, "0: each layer keeps its channel count"),
    "target_embed_dim": (0, 65536, "0: the concatenated layers' length"),
    "coreset_max_size": (0, 2**31 - 1, "the most rows the memory bank keeps; 0: no cap"),
    "coreset_projection_dim": (0, 65536, "0 disables the random projection"),
    "coreset_start_points": (1, 10000, ""),
    "train_rotations": (0, 360, f"0: {AUTO_ROTATIONS} below {AUTO_ROTATIONS_BELOW} images, else 1"),
    "num_neighbors": (1, 1000, "b of eq. 7; 1: no re-weighting"),
    "clahe_tile_grid": (1, 64, ""), "batch_size": (1, 4096, ""), "knn_memory_mb": (1, 1 << 20, ""),
    "num_workers": (0, 64, ""), "seed": (0, 2**63 - 1, ""),
}  # fmt: skip
NUMBERS = {
    "coreset_ratio": (lambda v: 0 < v <= 1, "in (0, 1] (0.1 keeps 10% of the patches; 1: all)"),
    "cosine_floor": (lambda v: 0 <= v <= 100, "a number in [0, 100] (0: plain cosine; 0.3: a "
                     "floor at 30% of the median feature norm)"),
    "sigma": (lambda v: v >= 0, "a finite number >= 0 (0 disables the blur; paper: 4)"),
    "false_alarm_rate": (lambda v: 0 < v < 1, "in (0, 1): the share of good parts the good-only "
                         "threshold may flag (0.05: one in twenty)"),
    "clahe_clip_limit": (lambda v: v > 0, "a finite number > 0 (typical 1-4)"),
}  # fmt: skip
CHOICES = {
    "distance": ("l2", "cosine"), "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "knn_backend": ("auto", "torch", "pruned", "faiss", "bf16"),
}  # fmt: skip
FLAGS = ("balance_taps", "clahe", "skip_bad_images")


class ConfigError(ValueError):
    """A configuration field is out of range; the message names the field and the allowed values."""


@dataclass
class Config:
    dataset_path: str | None = None  # MVTec-layout folder with <category>/; None: synthetic
    category: str = "metal_nut"
    # backbone and features (None: the backbone's default)
    backbone: str = "wide_resnet50_2"
    weights: str | None = "IMAGENET1K_V1"  # torchvision weights name; None: random (benchmarks)
    layers: list[str] | None = None
    input_size: int | None = None  # side of the square crop fed to the network
    # shorter side before the centre crop (== input_size: crop only the longer side; 0: squash)
    resize: int | None = None
    patch_size: int = 3  # local neighbourhood aggregation (3x3, stride 1)
    pretrain_embed_dim: int | None = None  # per-layer pooled length; 0: the layer's channels
    target_embed_dim: int | None = None  # final length; 0: the concatenation (see embed_dim)
    # weigh the taps to the same mean |block|^2 on <= 64 training images (target_embed_dim 0 only)
    balance_taps: bool | None = None
    # memory bank: the fraction of training patches kept (else 0.1), at most coreset_max_size
    # rows (0: no cap; above it the coreset's time grows linearly with the training set)
    coreset_ratio: float | None = None
    coreset_max_size: int | None = None
    coreset_projection_dim: int = 128
    coreset_start_points: int = 10
    # >1: also fit on copies rotated by 360/k degrees; 0: auto (8 below 20 images, else 1)
    train_rotations: int | None = None
    # scoring: b of eq. 7 (1: plain max), "l2" or "cosine", the cosine's norm floor (x the median
    # bank norm), the map's Gaussian blur in input pixels (else 4)
    num_neighbors: int = 9
    distance: str | None = None
    cosine_floor: float | None = None
    sigma: float | None = None
    false_alarm_rate: float = 0.05  # the good-only threshold: share of good parts it may flag
    # preprocessing
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    # execution (precision auto: bf16 autocast on CUDA, fp32 on CPU; knn_backend auto: on the CPU
    # bf16 candidates + exact re-rank where bf16 is native, else the exact pruned search; torch on
    # a GPU; knn_memory_mb bounds one kNN distance block)
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"
    knn_backend: str = "auto"
    knn_memory_mb: int = 256
    num_workers: int = 2  # image-reading threads: a batch's files decoded two at a time
    skip_bad_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if (name := self.backbone) not in BACKBONES:
            raise ConfigError(f"backbone={name!r} is not known; choose one of {sorted(BACKBONES)}")
        spec = BACKBONES[self.backbone]
        self._sources = self._field_sources(spec)
        for name, value in {**FALLBACK_DEFAULTS, **spec.defaults}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        layers = spec.default_layers if self.layers is None else self.layers
        if isinstance(layers, str):
            layers = [s.strip() for s in layers.split(",") if s.strip()]
        self.layers = list(layers)
        if self.resize is None:
            self.resize = self.input_size
        if self._sources["balance_taps"] != "set" and self.target_embed_dim:
            self.balance_taps = False  # a pooled embedding mixes the taps' blocks
        self.validate()

    def _field_sources(self, spec) -> dict[str, str]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.default is None:
                out[f.name] = "set"
            elif value is None and (f.name in spec.defaults or f.name == "layers"):
                out[f.name] = f"backbone default ({self.backbone})"
            elif value is None and f.name in FALLBACK_DEFAULTS:
                out[f.name] = "fallback default"
            elif value is None and f.name == "resize":
                out[f.name] = "= input_size"
            else:
                out[f.name] = "field default" if value == f.default else "set"
        return out

    def coreset_size(self, n_patches: int) -> int:
        """Rows the bank keeps of ``n_patches``: ``coreset_ratio``, capped, at least one."""
        n = int(n_patches * self.coreset_ratio)
        return max(1, min(n_patches, n, self.coreset_max_size or n))

    def sources(self) -> dict[str, str]:
        """Field -> "set", "backbone default (<name>)", "fallback default", "field default" or
        "= input_size"."""
        return dict(self._sources)

    def describe(self) -> str:
        """A printable table of every field's effective value and where it came from."""
        rows = [(name, repr(getattr(self, name)), source) for name, source in self._sources.items()]
        w0, w1 = max(len(r[0]) for r in rows), min(max(len(r[1]) for r in rows), 40)
        lines = [f"{'field':<{w0}}  {'value':<{w1}}  source", "-" * (w0 + w1 + 24)]
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        return "\n".join(lines)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field out of range and what is allowed."""
        if self.dataset_path is not None and not isinstance(self.dataset_path, str):
            raise ConfigError(f"dataset_path={self.dataset_path!r} must be a folder path or None")
        cat = self.category
        if not isinstance(cat, str) or cat in ("", ".", "..") or "/" in cat or "\\" in cat:
            raise ConfigError(f"category={cat!r} must be a folder name (not a path): 'metal_nut'")
        spec = BACKBONES[self.backbone]
        bad = [layer for layer in self.layers if layer not in spec.layers]
        if not self.layers or bad:
            raise ConfigError(f"layers={self.layers!r}: unknown layer(s) {bad} for "
                              f"{self.backbone}; allowed: {list(spec.layers)}")  # fmt: skip
        for name, (lo, hi, hint) in INTS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                extra = f" ({hint})" if hint else ""
                raise ConfigError(f"{name}={v!r} must be an integer in [{lo}, {hi}]{extra}")
        if self.input_size % 8:
            near = 8 * round(self.input_size / 8)
            raise ConfigError(f"input_size={self.input_size} must be a multiple of 8 (e.g. {near})")
        if 0 < self.resize < self.input_size:
            raise ConfigError(f"resize={self.resize} must be >= input_size={self.input_size} (the "
                              "shorter side before the centre crop), or 0 to squash the whole "
                              "image to a square")  # fmt: skip
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size={self.patch_size} must be odd (1, 3, 5, ...)")
        for name, (ok, allowed) in NUMBERS.items():
            v = getattr(self, name)
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not number or not ok(v):
                raise ConfigError(f"{name}={v!r} must be {allowed}")
        for name, allowed in CHOICES.items():
            if (v := getattr(self, name)) not in allowed:
                raise ConfigError(f"{name}={v!r} is not allowed; choose one of {list(allowed)}")
        for name in FLAGS:
            if not isinstance(v := getattr(self, name), bool):
                raise ConfigError(f"{name}={v!r} must be True or False")
        if self.balance_taps and self.target_embed_dim not in (0, sum(self.tap_dims)):
            d = self.target_embed_dim
            raise ConfigError(f"balance_taps=True weighs each tap, but target_embed_dim={d} "
                              "pools the taps together: set target_embed_dim to 0")  # fmt: skip
        if self.weights is not None:
            try:
                import torchvision

                names = sorted(torchvision.models.get_model_weights(self.backbone).__members__)
            except (ImportError, ValueError, KeyError, AttributeError):
                names = []  # torchvision cannot say
            if not isinstance(self.weights, str) or (names and self.weights not in names):
                raise ConfigError(f"weights={self.weights!r} is not a torchvision weights name of "
                                  f"{self.backbone}; choose one of {names or ['IMAGENET1K_V1']}, "
                                  "or None for random weights")  # fmt: skip

    def rotations_for(self, n_train: int) -> int:
        """Training rotations used for ``n_train`` images (resolves ``train_rotations=0``)."""
        return self.train_rotations or (AUTO_ROTATIONS if n_train < AUTO_ROTATIONS_BELOW else 1)

    @property
    def tap_dims(self) -> list[int]:
        """Length of each tap's block of a patch embedding (before ``target_embed_dim``)."""
        spec = BACKBONES[self.backbone]
        return [self.pretrain_embed_dim or spec.channels[layer] for layer in self.layers]

    @property
    def embed_dim(self) -> int:
        """Length of one patch embedding (the memory bank's row length)."""
        spec = BACKBONES[self.backbone]
        return spec.embed_dim(self.layers, self.pretrain_embed_dim, self.target_embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def artifact_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ARTIFACT_FIELDS}

    def hash(self) -> str:
        """Stable 12-hex hash of the fields that change a saved artifact."""
        blob = json.dumps(self.artifact_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "config_hash"}
        if unknown := sorted(set(data) - known):
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated again; on a new backbone every field that
        was not ``set`` takes the new backbone's default (fields that were set keep values)."""
        data = {**self.to_dict(), **changes}
        same = data["backbone"] == self.backbone
        if not same:
            nullable = {f.name for f in fields(self) if f.default is None}
            for name, source in self._sources.items():
                if name in nullable and name not in changes and source != "set":
                    data[name] = None
        elif "balance_taps" not in changes and self._sources.get("balance_taps") != "set":
            data["balance_taps"] = None  # its default follows target_embed_dim
        new = Config.from_dict(data)
        new._sources.update(
            {k: v for k, v in self._sources.items() if k not in changes and (same or v == "set")}
        )
        return new

    def differences(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Artifact fields whose value differs from ``other`` (a dict): name -> (mine, other)."""
        norm = lambda v: list(v) if isinstance(v, tuple) else v
        mine = self.artifact_dict()
        return {k: (mine[k], other.get(k)) for k in mine if norm(mine[k]) != norm(other.get(k))}
