"""A run folder's artifact cache: ``<stage>-<hash>.safetensors`` files whose header records what
they were made from, loaded when that matches, else computed and saved atomically; one line per
load or computation in ``events.jsonl``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from helpers.core.runtime import load_tensors, save_tensors

STAGES = ("features", "bank", "coverage", "predictions", "heldout")
# how a reason for recomputing names a header entry (others are named by their key)
LABELS = {"data_id": "data source", "data_train": "training images", "data_test": "test images",
          "config_hash": "settings", "extra": "scoring settings"}  # fmt: skip


class ArtifactCache:
    """The ``artifacts/`` folder. ``stage`` names a file kind (one of :data:`STAGES`), ``key``
    the settings hash in its name, and ``meta`` (str -> str) what must match for a file to be
    reused. ``root`` is only used to print paths relative to the run folder."""

    def __init__(self, folder: str | Path, root: str | Path | None = None, verbose: bool = True):
        self.folder = Path(folder)
        self.root = Path(root) if root is not None else self.folder.parent
        self.verbose = verbose
        self.events: list[dict] = []
        self.depth = 0  # > 0 while a stage computes the stages it needs (logged, not printed)

    def path(self, stage: str, key: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown artifact {stage!r}; one of {STAGES}")
        return self.folder / f"{stage}-{key}.safetensors"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root) if path.is_relative_to(self.root) else path)

    @staticmethod
    def _header(path: Path) -> dict[str, str]:  # raises safetensors' own errors, or OSError
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}

    def metadata(self, path: Path) -> dict[str, str] | None:
        """The header metadata of ``path`` (tensors are not read); None if missing or unreadable."""
        try:
            return self._header(path) if path.is_file() else None
        except Exception:
            return None

    def info(self, path: Path) -> dict:
        """The ``info`` dict saved with ``path`` (empty when there is none or it is unreadable)."""
        try:
            info = json.loads((self.metadata(path) or {}).get("info", "{}"))
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def stale_reason(self, path: Path, meta: dict[str, str]) -> str | None:
        """Why ``path`` cannot be reused for ``meta`` ("new": no such file yet), or None: its
        header holds every item of ``meta``."""
        if not path.exists():
            return "new"
        try:
            saved = self._header(path)
        except Exception as exc:  # safetensors' own error types: cut short, not safetensors
            return f"unreadable ({exc})"
        for key, value in meta.items():
            label = LABELS.get(key, key)
            if key not in saved:
                return f"made before {label} were recorded"
            if saved[key] != value:
                return f"{label} changed: {saved[key]} -> {value}"
        return None

    def log(self, stage: str, action: str, path: Path, note: str = "", reason: str = "") -> None:
        """One line in events.jsonl (and printed, for a top-level stage); ``reason``: why a
        file was computed ("new", or what made the old one stale)."""
        event = {"stage": stage, "action": action, "file": self.rel(path), "time": time.time()}
        event.update({"reason": reason} if reason else {})
        self.events.append(event)
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "events.jsonl", "a") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.verbose and self.depth == 0:
            why = f" ({reason})" if reason and reason != "new" else ""
            print(f"[cache: {action}] {stage}: {self.rel(path)}{note}{why}")

    def nested(self, compute: Callable[[], Any]) -> Any:
        """Run ``compute`` as part of another stage (its cache lines are logged, not printed)."""
        self.depth += 1
        try:
            return compute()
        finally:
            self.depth -= 1

    def cached(self, stage: str, key: str, meta: dict[str, str], compute: Callable[[], tuple],
               stale: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:  # fmt: skip
        """Load ``stage`` (tensors, info) when its file matches ``meta`` and reads back whole;
        otherwise call ``compute() -> (tensors, info)`` and save the result atomically. ``stale``
        (a reason) forces the computation. events.jsonl says why a file was computed."""
        path = self.path(stage, key)
        reason = stale or self.stale_reason(path, meta)
        if reason is None:
            try:
                tensors, saved = load_tensors(path)
                info = json.loads(saved.get("info", "{}"))
            except ValueError as exc:  # a truncated or damaged file (JSONDecodeError included)
                reason = f"unreadable ({exc})"
            else:
                self.log(stage, "loaded", path)
                return tensors, info
        tensors, info = self.nested(compute)
        save_tensors(path, tensors, {**meta, "info": json.dumps(info, sort_keys=True)})
        self.log(stage, "computed", path, reason=reason)
        return tensors, info
