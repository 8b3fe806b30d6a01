"""The range checks behind :meth:`helpers.core.config.Config.validate`, one function per group of
fields; each :class:`ConfigError` names the field, its value and what is allowed."""

from __future__ import annotations

import math
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
    """A finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be True or False")


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
    if not isinstance(c.balance_taps, bool):
        raise ConfigError(f"balance_taps={c.balance_taps!r} must be true or false")
    if c.balance_taps and c.target_embed_dim and c.target_embed_dim != sum(c.tap_dims):
        raise ConfigError(
            f"balance_taps=True weighs each tap's block, but target_embed_dim="
            f"{c.target_embed_dim} pools the blocks together: set target_embed_dim=0 or "
            "balance_taps=False"
        )


def check_bank(c) -> None:
    """The coreset: ratio kept, size cap, projection, start points."""
    if not _number(c.coreset_ratio) or not 0 < c.coreset_ratio <= 1:
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
    """Neighbours, distance, cosine floor, map blur, the good-only threshold's rate."""
    int_range("num_neighbors", c.num_neighbors, 1, 1000)
    choice("distance", c.distance, DISTANCES)
    if not _number(c.cosine_floor) or not 0 <= c.cosine_floor <= 100:
        raise ConfigError(
            f"cosine_floor={c.cosine_floor!r} must be a number in [0, 100] "
            "(0: plain cosine; 0.3: a floor at 30% of the median feature norm)"
        )
    if not _number(c.sigma) or c.sigma < 0:
        raise ConfigError(
            f"sigma={c.sigma!r} must be a finite number >= 0 (0 disables the blur; paper: 4)"
        )
    rate = c.false_alarm_rate
    if not _number(rate) or not 0 < rate < 1:
        raise ConfigError(
            f"false_alarm_rate={rate!r} must be in (0, 1): the share of good parts the good-only "
            "threshold may flag (0.05: one in twenty)"
        )


def check_preprocessing(c) -> None:
    """CLAHE on the L channel."""
    flag("clahe", c.clahe)
    if not _number(c.clahe_clip_limit) or c.clahe_clip_limit <= 0:
        raise ConfigError(
            f"clahe_clip_limit={c.clahe_clip_limit!r} must be a finite number > 0 (typical 1-4)"
        )
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
    flag("skip_bad_images", c.skip_bad_images)
    if c.weights is not None:
        names = weights_names(c.backbone)
        if not isinstance(c.weights, str) or (names and c.weights not in names):
            raise ConfigError(
                f"weights={c.weights!r} is not a torchvision weights name of {c.backbone}; "
                f"choose one of {names or ['IMAGENET1K_V1']}, or None for random weights"
            )


def check_data(c) -> None:
    """The data folder and the category (a folder name inside it)."""
    if c.dataset_path is not None and not isinstance(c.dataset_path, str):
        raise ConfigError(f"dataset_path={c.dataset_path!r} must be a folder path or None")
    cat = c.category
    if not isinstance(cat, str) or not cat or cat in (".", "..") or "/" in cat or "\\" in cat:
        raise ConfigError(
            f"category={cat!r} must be the name of a folder inside dataset_path, such as "
            "'metal_nut' (not a path)"
        )


def weights_names(backbone: str) -> list[str]:
    """The weights names torchvision knows for ``backbone`` (empty when it cannot say)."""
    try:
        import torchvision

        return sorted(torchvision.models.get_model_weights(backbone).__members__)
    except (ImportError, ValueError, KeyError, AttributeError):
        return []
