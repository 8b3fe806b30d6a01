"""The range checks behind :meth:`helpers.core.config.Config.validate`, one function per group of
fields; each :class:`ConfigError` names the field, its value and what is allowed."""

from __future__ import annotations

from typing import Any

from helpers.core.backbones import BACKBONES

DISTANCES = ("l2", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KNN_BACKENDS = ("auto", "torch", "faiss")


class ConfigError(ValueError):
    """A configuration field is out of range; the message names the field and the allowed values."""


def int_range(name: str, value: Any, lo: int, hi: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"{name}={value!r} must be an integer in [{lo}, {hi}]{extra}")


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_features(c) -> None:
    """Backbone layers, input size and crop, patch neighbourhood, embedding lengths."""
    spec = BACKBONES[c.backbone]
    bad = [layer for layer in c.layers if layer not in spec.layers]
    if not c.layers or bad:
        raise ConfigError(
            f"layers={c.layers!r}: unknown layer(s) {bad} for {c.backbone}; "
            f"allowed: {list(spec.layers)}"
        )
    int_range("input_size", c.input_size, 32, 2048)
    if c.input_size % 8:
        raise ConfigError(
            f"input_size={c.input_size} must be a multiple of 8 "
            f"(for example {8 * round(c.input_size / 8)})"
        )
    if c.resize != 0:
        int_range(
            "resize",
            c.resize,
            c.input_size,
            4096,
            hint=f"resize is the shorter side before the centre crop, so >= input_size="
            f"{c.input_size}; or 0 to squash the whole image to a square",
        )
    int_range("patch_size", c.patch_size, 1, 9)
    if c.patch_size % 2 == 0:
        raise ConfigError(f"patch_size={c.patch_size} must be odd (1, 3, 5, ...)")
    hint = "0: each layer keeps its channel count"
    int_range("pretrain_embed_dim", c.pretrain_embed_dim, 0, 65536, hint=hint)
    hint = "0: the concatenated layers' length"
    int_range("target_embed_dim", c.target_embed_dim, 0, 65536, hint=hint)


def check_bank(c) -> None:
    """The coreset: ratio kept, size cap, projection, start points."""
    if not isinstance(c.coreset_ratio, (int, float)) or not 0 < c.coreset_ratio <= 1:
        raise ConfigError(
            f"coreset_ratio={c.coreset_ratio!r} must be in (0, 1] "
            "(0.1 keeps 10% of the training patches; 1 keeps all)"
        )
    hint = "the most rows the memory bank keeps; 0: no cap"
    int_range("coreset_max_size", c.coreset_max_size, 0, 2**31 - 1, hint=hint)
    hint = "0 disables the random projection"
    int_range("coreset_projection_dim", c.coreset_projection_dim, 0, 65536, hint=hint)
    int_range("coreset_start_points", c.coreset_start_points, 1, 10000)


def check_scoring(c) -> None:
    """Neighbours, distance, cosine floor, map blur."""
    int_range("num_neighbors", c.num_neighbors, 1, 1000)
    choice("distance", c.distance, DISTANCES)
    if not _number(c.cosine_floor) or not 0 <= c.cosine_floor <= 100:
        raise ConfigError(
            f"cosine_floor={c.cosine_floor!r} must be a number in [0, 100] "
            "(0: plain cosine; 0.3: a floor at 30% of the median feature norm)"
        )
    if not _number(c.sigma) or c.sigma < 0:
        raise ConfigError(f"sigma={c.sigma!r} must be >= 0 (0 disables the blur; paper: 4)")


def check_preprocessing(c) -> None:
    """CLAHE on the L channel."""
    if not isinstance(c.clahe, bool):
        raise ConfigError(f"clahe={c.clahe!r} must be True or False")
    if not isinstance(c.clahe_clip_limit, (int, float)) or c.clahe_clip_limit <= 0:
        raise ConfigError(f"clahe_clip_limit={c.clahe_clip_limit!r} must be > 0 (typical 1-4)")
    int_range("clahe_tile_grid", c.clahe_tile_grid, 1, 64)


def check_execution(c) -> None:
    """Batch size, device, precision, kNN backend and budget, workers, seed, weights name."""
    int_range("batch_size", c.batch_size, 1, 4096)
    choice("device", c.device, DEVICES)
    choice("precision", c.precision, PRECISIONS)
    choice("knn_backend", c.knn_backend, KNN_BACKENDS)
    int_range("knn_memory_mb", c.knn_memory_mb, 1, 1 << 20)
    int_range("num_workers", c.num_workers, 0, 64)
    int_range("seed", c.seed, 0, 2**63 - 1)
    if c.weights is not None and not isinstance(c.weights, str):
        raise ConfigError(
            f"weights={c.weights!r} must be a torchvision weights name "
            "such as 'IMAGENET1K_V1', or None for random weights"
        )
