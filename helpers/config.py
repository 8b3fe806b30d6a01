"""One validated, JSON-serialisable configuration for a PatchCore run.

Every notebook's ``parameters`` cell maps one-to-one onto :class:`Config`. Fields left as ``None``
are filled from the chosen backbone's defaults (see :mod:`helpers.backbones`), so that
``Config(backbone="mobilenet_v2")`` gives settings that suit that network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .backbones import BACKBONES

DISTANCES = ("l2", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KNN_BACKENDS = ("torch", "faiss")

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
    "clahe",
    "clahe_clip_limit",
    "clahe_tile_grid",
    "coreset_ratio",
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
}

# train_rotations=0 ("auto"): rotate the training images when they are few. Measured on real
# sets (benchmarks/RESULTS.md, issue 10): at 5 metal_nut images 8 rotations lift image AUROC
# 0.899 -> 0.956; on tire (5-60 images) they change nothing; at 213 transistor images they cost
# 8x the fit time.
AUTO_ROTATIONS = 8
AUTO_ROTATIONS_BELOW = 20  # training images


class ConfigError(ValueError):
    """A configuration field is out of range; the message names the field and the allowed values."""


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
    # memory bank
    coreset_ratio: float | None = (
        None  # fraction of training patches kept (None: backbone default, else 0.1)
    )
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
    # preprocessing
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    # execution
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    knn_backend: str = "torch"
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
        spec = BACKBONES[self.backbone]
        bad = [layer for layer in self.layers if layer not in spec.layers]
        if not self.layers or bad:
            raise ConfigError(
                f"layers={self.layers!r}: unknown layer(s) {bad} for {self.backbone}; "
                f"allowed: {list(spec.layers)}"
            )
        _int_range("input_size", self.input_size, 32, 2048)
        if self.input_size % 8:
            raise ConfigError(
                f"input_size={self.input_size} must be a multiple of 8 "
                f"(for example {8 * round(self.input_size / 8)})"
            )
        if self.resize != 0:
            _int_range(
                "resize",
                self.resize,
                self.input_size,
                4096,
                hint=f"resize is the shorter side before the centre crop, so >= input_size="
                f"{self.input_size}; or 0 to squash the whole image to a square",
            )
        _int_range("patch_size", self.patch_size, 1, 9)
        if self.patch_size % 2 == 0:
            raise ConfigError(f"patch_size={self.patch_size} must be odd (1, 3, 5, ...)")
        _int_range(
            "pretrain_embed_dim",
            self.pretrain_embed_dim,
            0,
            65536,
            hint="0: each layer keeps its channel count",
        )
        _int_range(
            "target_embed_dim",
            self.target_embed_dim,
            0,
            65536,
            hint="0: the concatenated layers' length",
        )
        if not isinstance(self.coreset_ratio, (int, float)) or not 0 < self.coreset_ratio <= 1:
            raise ConfigError(
                f"coreset_ratio={self.coreset_ratio!r} must be in (0, 1] "
                "(0.1 keeps 10% of the training patches; 1 keeps all)"
            )
        _int_range(
            "coreset_projection_dim",
            self.coreset_projection_dim,
            0,
            65536,
            hint="0 disables the random projection",
        )
        _int_range("coreset_start_points", self.coreset_start_points, 1, 10000)
        _int_range(
            "train_rotations",
            self.train_rotations,
            0,
            360,
            hint=f"0: {AUTO_ROTATIONS} below {AUTO_ROTATIONS_BELOW} training images, else 1",
        )
        _int_range("num_neighbors", self.num_neighbors, 1, 1000)
        _choice("distance", self.distance, DISTANCES)
        if (
            not isinstance(self.cosine_floor, (int, float))
            or isinstance(self.cosine_floor, bool)
            or not 0 <= self.cosine_floor <= 100
        ):
            raise ConfigError(
                f"cosine_floor={self.cosine_floor!r} must be a number in [0, 100] "
                "(0: plain cosine; 0.3: a floor at 30% of the median feature norm)"
            )
        if (
            not isinstance(self.sigma, (int, float))
            or isinstance(self.sigma, bool)
            or self.sigma < 0
        ):
            raise ConfigError(f"sigma={self.sigma!r} must be >= 0 (0 disables the blur; paper: 4)")
        if not isinstance(self.clahe, bool):
            raise ConfigError(f"clahe={self.clahe!r} must be True or False")
        if not isinstance(self.clahe_clip_limit, (int, float)) or self.clahe_clip_limit <= 0:
            raise ConfigError(
                f"clahe_clip_limit={self.clahe_clip_limit!r} must be > 0 (typical 1-4)"
            )
        _int_range("clahe_tile_grid", self.clahe_tile_grid, 1, 64)
        _int_range("batch_size", self.batch_size, 1, 4096)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("knn_backend", self.knn_backend, KNN_BACKENDS)
        _int_range("knn_memory_mb", self.knn_memory_mb, 1, 1 << 20)
        _int_range("num_workers", self.num_workers, 0, 64)
        _int_range("seed", self.seed, 0, 2**63 - 1)
        if self.weights is not None and not isinstance(self.weights, str):
            raise ConfigError(
                f"weights={self.weights!r} must be a torchvision weights name "
                "such as 'IMAGENET1K_V1', or None for random weights"
            )

    def rotations_for(self, n_train: int) -> int:
        """Training rotations used for ``n_train`` images (resolves ``train_rotations=0``)."""
        if self.train_rotations:
            return self.train_rotations
        return AUTO_ROTATIONS if n_train < AUTO_ROTATIONS_BELOW else 1

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
            from .io import atomic_write_text

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
        (see :meth:`describe`) while the backbone stays the same."""
        new = Config.from_dict({**self.to_dict(), **changes})
        if new.backbone == self.backbone:
            new._sources.update({k: v for k, v in self._sources.items() if k not in changes})
        return new

    def differences(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Artifact fields whose value differs from ``other`` (a dict): name -> (mine, other)."""
        mine = self.artifact_dict()
        return {k: (mine[k], other.get(k)) for k in mine if _norm(mine[k]) != _norm(other.get(k))}


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _int_range(name: str, value: Any, lo: int, hi: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name}={value!r} must be an integer in [{lo}, {hi}]{extra}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
