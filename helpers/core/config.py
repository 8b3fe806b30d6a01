"""One validated, JSON-serialisable configuration for a PatchCore run.

Every notebook's ``parameters`` cell maps one-to-one onto :class:`Config`. Fields left as ``None``
are filled from the chosen backbone's defaults (see :mod:`helpers.core.backbones`), so that
``Config(backbone="mobilenet_v2")`` gives settings that suit that network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from helpers.core.backbones import BACKBONES
from helpers.core.config_checks import (
    ConfigError,
    check_bank,
    check_data,
    check_execution,
    check_features,
    check_preprocessing,
    check_scoring,
    int_range,
)

# Fields that change a saved artifact (memory bank, features). Two configs with the same values
# here produce the same bank, whatever their batch size, device or dataset path.
ARTIFACT_FIELDS = (
    "backbone",
    "weights",
    "layers",
    "input_size",
    "resize",
    "patch_size",
    "pretrain_embed_dim",
    "target_embed_dim",
    "balance_taps",
    "clahe",
    "clahe_clip_limit",
    "clahe_tile_grid",
    "coreset_ratio",
    "coreset_max_size",
    "coreset_projection_dim",
    "coreset_start_points",
    "train_rotations",
    "seed",
)


# Fields that a backbone may set (BackboneSpec.defaults); these values apply when it does not.
FALLBACK_DEFAULTS = {
    "train_rotations": 1,
    "distance": "l2",
    "cosine_floor": 0.0,
    "sigma": 4.0,
    "coreset_ratio": 0.1,
    "coreset_max_size": 0,  # no cap: the paper's 10 % of every training patch
    "balance_taps": False,
}

# train_rotations=0 ("auto"): rotate the training images when they are few. Measured on real
# sets (benchmarks/RESULTS.md, issue 10): at 5 metal_nut images 8 rotations lift image AUROC
# 0.899 -> 0.956; on tire (5-60 images) they change nothing; at 213 transistor images they cost
# 8x the fit time.
AUTO_ROTATIONS = 8
AUTO_ROTATIONS_BELOW = 20  # training images


@dataclass
class Config:
    # data
    dataset_path: str | None = None  # MVTec-layout folder holding <category>/; None = synthetic set
    category: str = "metal_nut"
    # backbone and features
    backbone: str = "wide_resnet50_2"
    weights: str | None = (
        "IMAGENET1K_V1"  # torchvision weights name; None = random (benchmarks only)
    )
    layers: list[str] | None = None  # None = backbone default
    input_size: int | None = None  # side of the square crop fed to the network
    resize: int | None = None  # shorter side before the centre crop (== input_size: crop
    # only the longer side; 0: squash the whole image to a square)
    patch_size: int = 3  # local neighbourhood aggregation (3x3, stride 1)
    pretrain_embed_dim: int | None = (
        None  # per-layer pooled length; 0: the layer's channels (3x3 mean)
    )
    target_embed_dim: int | None = None  # final length; 0: the concatenation (see embed_dim)
    # weight each tap so all have the same mean squared norm on the training patches (natural
    # embeddings only: target_embed_dim 0); None: backbone default, else False
    balance_taps: bool | None = None
    # memory bank
    coreset_ratio: float | None = (
        None  # fraction of training patches kept (None: backbone default, else 0.1)
    )
    # largest bank (rows) whatever the ratio: above it the greedy selection's time grows linearly
    # with the training set, not quadratically; 0: no cap (None: backbone default, else 0)
    coreset_max_size: int | None = None
    coreset_projection_dim: int = 128
    coreset_start_points: int = 10
    train_rotations: int | None = None  # >1: also fit on copies rotated by 360/k degrees; 0: auto
    # (8 below 20 training images, else 1); None: backbone default
    # scoring
    num_neighbors: int = 9  # b of eq. 7 re-weighting; 1 = plain max
    distance: str | None = None  # "l2" or "cosine" (None: backbone default, else "l2")
    # cosine only: divide by |f| + floor * median bank norm (None: backbone default, else 0)
    cosine_floor: float | None = None
    sigma: float | None = (
        None  # Gaussian blur of the anomaly map, in input pixels (None: backbone default, else 4)
    )
    # the good-only threshold (helpers.core.threshold): the share of good parts it may flag
    false_alarm_rate: float = 0.05
    # preprocessing
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    # execution
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    knn_backend: str = "auto"  # auto: faiss on the CPU when installed (exact, faster), else torch
    knn_memory_mb: int = 256  # bound on one kNN distance block
    num_workers: int = 0
    skip_bad_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"backbone={self.backbone!r} is not known; choose one of {sorted(BACKBONES)}"
            )
        spec = BACKBONES[self.backbone]
        self._sources = self._field_sources(spec)
        for name, value in {**FALLBACK_DEFAULTS, **spec.defaults}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.layers is None:
            self.layers = list(spec.default_layers)
        if isinstance(self.layers, str):
            self.layers = [s.strip() for s in self.layers.split(",") if s.strip()]
        self.layers = list(self.layers)
        if self.resize is None:
            self.resize = self.input_size
        if self._sources["balance_taps"] != "set" and self.target_embed_dim:
            self.balance_taps = False  # a pooled embedding mixes the taps' blocks
        self.validate()

    def _field_sources(self, spec) -> dict[str, str]:
        """Where each field's value comes from, decided before the None fields are filled."""
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
        """Rows the memory bank keeps of ``n_patches`` training patches: ``coreset_ratio`` of
        them, at most ``coreset_max_size`` (when set), at least one."""
        n = int(n_patches * self.coreset_ratio)
        if self.coreset_max_size:
            n = min(n, self.coreset_max_size)
        return max(1, min(n_patches, n))

    def sources(self) -> dict[str, str]:
        """Field name -> where its value came from: "set", "backbone default (<name>)",
        "fallback default" (:data:`FALLBACK_DEFAULTS`), "field default" or "= input_size"."""
        return dict(self._sources)

    def describe(self) -> str:
        """A printable table of every field's effective value and where it came from."""
        rows = [(name, repr(getattr(self, name)), source) for name, source in self._sources.items()]
        w0 = max(len(r[0]) for r in rows)
        w1 = min(max(len(r[1]) for r in rows), 40)
        lines = [f"{'field':<{w0}}  {'value':<{w1}}  source", "-" * (w0 + w1 + 24)]
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        return "\n".join(lines)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field out of range (the checks are in
        :mod:`helpers.core.config_checks`)."""
        check_data(self)
        check_features(self)
        check_bank(self)
        int_range(
            "train_rotations",
            self.train_rotations,
            0,
            360,
            hint=f"0: {AUTO_ROTATIONS} below {AUTO_ROTATIONS_BELOW} training images, else 1",
        )
        check_scoring(self)
        check_preprocessing(self)
        check_execution(self)

    def rotations_for(self, n_train: int) -> int:
        """Training rotations used for ``n_train`` images (resolves ``train_rotations=0``)."""
        if self.train_rotations:
            return self.train_rotations
        return AUTO_ROTATIONS if n_train < AUTO_ROTATIONS_BELOW else 1

    @property
    def tap_dims(self) -> list[int]:
        """Length of each tap's block of a patch embedding (before ``target_embed_dim``)."""
        spec = BACKBONES[self.backbone]
        return [self.pretrain_embed_dim or spec.channels[layer] for layer in self.layers]

    @property
    def embed_dim(self) -> int:
        """Length of one patch embedding (the memory bank's row length)."""
        return BACKBONES[self.backbone].embed_dim(
            self.layers, self.pretrain_embed_dim, self.target_embed_dim
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def artifact_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ARTIFACT_FIELDS}

    def hash(self) -> str:
        """Stable 12-hex hash of the fields that change a saved artifact."""
        blob = json.dumps(self.artifact_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({**self.to_dict(), "config_hash": self.hash()}, indent=2, sort_keys=True)
        if path is not None:
            from helpers.core.io import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k != "config_hash"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again). Unchanged fields keep their source
        (see :meth:`describe`). When the backbone changes, every field that was not ``set``
        (a default of the old backbone, a fallback, ``= input_size``) takes the new backbone's
        default instead; fields that were set keep their values."""
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
        mine = self.artifact_dict()
        return {k: (mine[k], other.get(k)) for k in mine if _norm(mine[k]) != _norm(other.get(k))}


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
