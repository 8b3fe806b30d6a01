"""The memory-bank file: one .safetensors file holding the bank, the config it was built with,
the library versions and the fit's info; read back only for a matching config (no pickle)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from helpers.core.config import Config
from helpers.core.runtime import load_tensors, save_tensors
from helpers.core.knn import faiss_index, knn_faiss, knn_torch, pair_distance, resolve_backend
from helpers.core.runtime import run_halving

BANK_FORMAT = "patchcore-memory-bank"
BANK_FORMAT_VERSION = "1"


class BankMismatchError(ValueError):
    """A saved memory bank does not match the configuration it is loaded for."""


def versions() -> dict[str, str]:
    import sklearn
    import torchvision

    from helpers.core import __version__

    return {
        "helpers": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def save_bank(
    path: str | Path,
    bank: torch.Tensor,
    config: Config,
    grid,
    info: dict,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``bank`` with ``config``, ``grid``, ``info``, the versions, the checksum of its
    values (checked by :func:`read_bank`) and ``extra`` header entries, atomically."""
    bank = bank.detach().float().cpu().contiguous()
    meta = {
        "format": BANK_FORMAT,
        "format_version": BANK_FORMAT_VERSION,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "config_hash": config.hash(),
        "versions": json.dumps(versions()),
        "grid": json.dumps(list(grid) if grid else None),
        "info": json.dumps(info),
        **(extra or {}),
        "checksum": checksum(bank),
    }
    return save_tensors(path, {"memory_bank": bank}, meta)


def checksum(bank: torch.Tensor) -> str:
    """``"sha256:<hex>"`` of the bank's float32 values (row-major bytes)."""
    data = bank.detach().float().cpu().contiguous().numpy().tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def header_field(path: str | Path, meta: dict, name: str, default: str = "null") -> Any:
    """The JSON header entry ``name`` of the bank file ``path``, parsed; a damaged one raises
    :class:`BankMismatchError` naming the file and the entry."""
    try:
        return json.loads(meta.get(name, default))
    except ValueError as exc:
        raise BankMismatchError(
            f"{path}: its header entry {name!r} is damaged ({exc}); rebuild the bank with "
            "PatchCore.fit(...).save(...)"
        ) from exc


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
    saved_sum = meta.get("checksum")
    if saved_sum is not None and checksum(bank) != saved_sum:
        raise BankMismatchError(
            f"{path}: the memory bank's values do not match the checksum in its header (the "
            "file was damaged after it was written); rebuild it with PatchCore.fit(...).save(...)"
        )
    if not torch.isfinite(bank).all():
        raise BankMismatchError(
            f"{path}: memory bank holds NaN or infinite values; rebuild it with "
            "PatchCore.fit(...).save(...)"
        )
    for name in ("grid", "info", "versions"):
        header_field(path, meta, name)  # every entry PatchCore.load reads parses
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


class MemoryBank:
    """The memory bank M of the paper: the coreset's kept training patch features [M, D]
    (notebook 03), with what scoring derives from them once: each row's squared norm and, for
    ``distance="cosine"``, the norm floor. :meth:`nearest` is the kNN search of notebook 04; it
    halves its distance-block budget on out-of-memory and keeps the smaller budget."""

    def __init__(
        self,
        features: torch.Tensor,
        *,
        distance: str = "l2",
        cosine_floor: float = 0.0,
        backend: str = "torch",
        memory_mb: int = 256,
    ):
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"a memory bank is [M, D] with M >= 1, got {tuple(features.shape)}")
        self.features = features
        self.distance, self.backend, self.memory_mb = distance, backend, memory_mb
        self.sqn = (features.float() ** 2).sum(1)  # |m|^2 of each row, reused by every search
        self.norm_floor = 0.0  # cosine_floor x the median row norm (see helpers.core.knn)
        if distance == "cosine" and cosine_floor:
            self.norm_floor = cosine_floor * float(features.float().norm(dim=1).median())
        self._faiss = None  # the faiss index of these rows, made on first use

    @classmethod
    def for_config(cls, features: torch.Tensor, config: Config) -> MemoryBank:
        return cls(
            features,
            distance=config.distance,
            cosine_floor=config.cosine_floor,
            backend=config.knn_backend,
            memory_mb=config.knn_memory_mb,
        )

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def nearest(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] ascending, row indices [Q, k]) of each query's k nearest rows."""

        def run(memory_mb: int):
            return knn_torch(
                queries,
                self.features,
                k,
                distance=self.distance,
                memory_mb=memory_mb,
                bank_sqn=self.sqn,
                norm_floor=self.norm_floor,
            )

        if resolve_backend(self.backend, queries.device) == "faiss":
            if self._faiss is None:  # built once: it copies the whole bank
                self._faiss = faiss_index(self.features, self.distance, self.norm_floor)
            d = dict(distance=self.distance, norm_floor=self.norm_floor, index=self._faiss)
            return knn_faiss(queries, self.features, k, **d)
        out, self.memory_mb = run_halving(
            run, self.memory_mb, "nearest-neighbour search (memory_mb)"
        )
        return out

    def distance_to(self, a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Distance of ``a`` [..., 1, D] to the bank rows ``rows`` [..., k], as :meth:`nearest`
        measures it."""
        return pair_distance(a, self.features[rows].float(), self.distance, self.norm_floor)
