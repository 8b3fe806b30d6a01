"""The memory-bank file: one .safetensors file holding the bank, the config it was built with,
the library versions and the fit's info; read back only for a matching config (no pickle)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .config import Config
from .io import load_tensors, save_tensors

BANK_FORMAT = "patchcore-memory-bank"
BANK_FORMAT_VERSION = "1"


class BankMismatchError(ValueError):
    """A saved memory bank does not match the configuration it is loaded for."""


def versions() -> dict[str, str]:
    import sklearn
    import torchvision

    from . import __version__

    return {
        "helpers": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def save_bank(path: str | Path, bank: torch.Tensor, config: Config, grid, info: dict) -> Path:
    """Write ``bank`` with ``config``, ``grid``, ``info`` and the versions, atomically."""
    meta = {
        "format": BANK_FORMAT,
        "format_version": BANK_FORMAT_VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "config_hash": config.hash(),
        "versions": json.dumps(versions()),
        "grid": json.dumps(list(grid) if grid else None),
        "info": json.dumps(info),
    }
    return save_tensors(path, {"memory_bank": bank.float()}, meta)


def read_bank(
    path: str | Path, config: Config | None = None, **overrides
) -> tuple[Config, torch.Tensor, dict[str, Any]]:
    """(config to use, bank [M, D], metadata) of a file written by :func:`save_bank`. With
    ``config``, refuse a bank built with other artifact settings and list the differences;
    ``overrides`` change runtime fields."""
    path = Path(path)
    tensors, meta = load_tensors(path)
    if meta.get("format") != BANK_FORMAT:
        raise BankMismatchError(
            f"{path} is not a PatchCore memory bank (format="
            f"{meta.get('format')!r}); rebuild it with PatchCore.fit(...).save(...)"
        )
    if meta.get("format_version") != BANK_FORMAT_VERSION:
        raise BankMismatchError(
            f"{path} has bank format {meta.get('format_version')!r}; this "
            f"version reads {BANK_FORMAT_VERSION!r}. Refit and save again."
        )
    cfg = _config_for(path, meta, config, overrides)
    bank = tensors.get("memory_bank")
    if bank is None or bank.ndim != 2 or bank.shape[1] != cfg.embed_dim or bank.shape[0] < 1:
        raise BankMismatchError(
            f"{path}: memory_bank tensor missing or of shape "
            f"{None if bank is None else tuple(bank.shape)}, expected "
            f"[M, {cfg.embed_dim}]"
        )
    if not torch.isfinite(bank).all():
        raise BankMismatchError(f"{path}: memory bank holds NaN or infinite values")
    return cfg, bank, meta


def _config_for(path: Path, meta: dict, config: Config | None, overrides: dict) -> Config:
    try:
        saved = json.loads(meta["config"])
        saved_cfg = Config.from_dict(saved)
    except (KeyError, ValueError, TypeError) as exc:
        raise BankMismatchError(f"{path}: its stored config is unreadable ({exc})") from exc
    if config is None:
        return saved_cfg.replace(**overrides) if overrides else saved_cfg
    diff = config.differences(saved)
    if diff:
        lines = "\n".join(f"  {k}: bank has {b!r}, config asks {a!r}" for k, (a, b) in diff.items())
        raise BankMismatchError(
            f"memory bank {path} was built with other settings:\n{lines}\n"
            "Refit with the current config, or load without a config."
        )
    return config.replace(**overrides) if overrides else config
