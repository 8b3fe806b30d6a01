"""The memory bank M (notebooks 03-04): :class:`MemoryBank` (the coreset's rows and their
nearest-neighbour search), its file (a .safetensors file with the config it was built with; no
pickle) and the good-only threshold: each good training image scored against M without the rows
copied from its own patches, the threshold just above the k-th smallest of these scores, k =
ceil((n + 1)(1 - alpha)), so a new good part is flagged with probability <= alpha (split
conformal, approximately; benchmarks/RESULTS.md, "A threshold from good parts only")."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from helpers.core.config import Config
from helpers.core.knn import (
    Bf16Bank,
    PrunedBank,
    faiss_index,
    knn_bf16,
    knn_faiss,
    knn_pruned,
    knn_torch,
    pair_distance,
    resolve_backend,
)
from helpers.core.process import release_freed_memory
from helpers.core.runtime import load_tensors, run_halving, save_tensors
from helpers.core.runtime import progress as show_progress
from helpers.core.training import TrainingFeatures

BANK_FORMAT, BANK_FORMAT_VERSION = "patchcore-memory-bank", "1"
REBUILD = "rebuild it with PatchCore.fit(...).save(...)"
METHOD = "leave-one-image-out"


class BankMismatchError(ValueError):
    """A saved memory bank does not match the configuration it is loaded for."""


class MemoryBank:
    """M of the paper: the coreset's training patch features [M, D] (notebook 03) and what scoring
    derives from them once (each row's squared norm; for cosine, the norm floor). :meth:`nearest`
    is notebook 04's kNN search; it halves its block budget on out-of-memory and keeps it."""

    def __init__(self, features: torch.Tensor, *, distance: str = "l2", cosine_floor: float = 0.0,
                 backend: str = "torch", memory_mb: int = 256):  # fmt: skip
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"a memory bank is [M, D] with M >= 1, got {tuple(features.shape)}")
        self.features, self.distance, self.backend = features, distance, backend
        self.memory_mb = memory_mb  # halved (and kept) on out-of-memory
        self.sqn = (features.float() ** 2).sum(1)  # |m|^2 of each row, reused by every search
        self.norm_floor = 0.0  # cosine_floor x the median row norm (see helpers.core.knn)
        if distance == "cosine" and cosine_floor:
            self.norm_floor = cosine_floor * float(features.float().norm(dim=1).median())
        self._faiss = None  # the faiss index of these rows, made on first use
        self._bf16 = None  # these rows prepared for knn_bf16, made on first use
        self._pruned = None  # these rows prepared for knn_pruned, made on first use

    @classmethod
    def for_config(cls, features: torch.Tensor, c: Config) -> MemoryBank:
        return cls(features, distance=c.distance, cosine_floor=c.cosine_floor,
                   backend=c.knn_backend, memory_mb=c.knn_memory_mb)  # fmt: skip

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def nearest(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances [Q, k] ascending, row indices [Q, k]) of each query's k nearest rows."""
        kw = dict(distance=self.distance, norm_floor=self.norm_floor)
        backend = resolve_backend(self.backend, queries.device)
        if backend == "faiss":
            if self._faiss is None:  # built once: it copies the whole bank
                self._faiss = faiss_index(self.features, self.distance, self.norm_floor)
            return knn_faiss(queries, self.features, k, index=self._faiss, **kw)
        if backend == "bf16":
            if self._bf16 is None:  # built once: a float32 and a bf16 copy of the bank
                self._bf16 = Bf16Bank(self.features, self.distance, self.norm_floor)
            kw["prepared"] = self._bf16
            run = lambda mb: knn_bf16(queries, self.features, k, memory_mb=mb, **kw)
        elif backend == "pruned":
            kw["prepared"] = self.pruned()
            run = lambda mb: knn_pruned(queries, self.features, k, memory_mb=mb, **kw)
        else:
            kw["bank_sqn"] = self.sqn
            run = lambda mb: knn_torch(queries, self.features, k, memory_mb=mb, **kw)
        what = "nearest-neighbour search (memory_mb)"
        out, self.memory_mb = run_halving(run, self.memory_mb, what)
        return out

    def pruned(self) -> PrunedBank:
        """These rows prepared for :func:`helpers.core.knn.knn_pruned` (built on first use)."""
        if self._pruned is None:
            self._pruned = PrunedBank(self.features, self.distance, self.norm_floor)
        return self._pruned

    def subset(self, rows) -> MemoryBank:
        """The bank of the rows ``rows`` (a slice, indices or a boolean mask), searched with this
        bank's distance and norm floor; a pruned search is prepared on this bank, not per subset."""
        sub = copy.copy(self)
        sub.features, sub.sqn = self.features[rows], self.sqn[rows]
        sub._faiss = sub._bf16 = None
        if resolve_backend(self.backend, self.features.device) == "pruned":
            pb = self.pruned()  # prepared once, on this bank; its rows are ours for l2 float32
            sub._pruned = pb.subset(rows, sub.features if pb.rows is self.features else None)
        return sub

    def head(self, k: int) -> MemoryBank:
        """The first ``k`` rows (a greedy bank's first k rows are the coreset of size k)."""
        return self.subset(slice(0, k))

    def distance_to(self, a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Distance of ``a`` [..., 1, D] to bank rows ``rows`` [..., k], as :meth:`nearest`."""
        return pair_distance(a, self.features[rows].float(), self.distance, self.norm_floor)


# ------------------------------------------------------------------ the bank file
def versions() -> dict[str, str]:
    """The library versions a bank file records."""
    import sklearn
    import torchvision

    from helpers.core import __version__

    libs = {"torch": torch, "torchvision": torchvision, "numpy": np, "opencv": cv2,
            "scikit-learn": sklearn}  # fmt: skip
    found = {k: m.__version__ for k, m in libs.items()}
    return {"helpers": __version__, **found, "python": platform.python_version()}


def bank_digest(features: torch.Tensor) -> str:
    """sha256 (hex) of the bank's float32 rows: ties a threshold or a file to the bank's values."""
    return hashlib.sha256(np.ascontiguousarray(features.detach().float().cpu().numpy())).hexdigest()


def save_bank(path: str | Path, bank: torch.Tensor, config: Config, grid, info: dict,
              extra: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``bank`` with ``config``, ``grid``, ``info``, the versions, the checksum of its
    values and ``extra`` header entries to one .safetensors file, atomically."""
    bank = bank.detach().float().cpu().contiguous()
    digest = "sha256:" + bank_digest(bank)
    meta = {"format": BANK_FORMAT, "format_version": BANK_FORMAT_VERSION,
            "config": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.hash(),
            "versions": json.dumps(versions()), "grid": json.dumps(list(grid) if grid else None),
            "info": json.dumps(info), **(extra or {}), "checksum": digest}  # fmt: skip
    return save_tensors(path, {"memory_bank": bank}, meta)


def header_field(path: str | Path, meta: dict, name: str, default: str = "null") -> Any:
    """The JSON header entry ``name`` of the bank file ``path``, parsed (damaged: an error)."""
    try:
        return json.loads(meta.get(name, default))
    except ValueError as exc:
        raise BankMismatchError(f"{path}: its header entry {name!r} is damaged ({exc}); "
                                f"{REBUILD}") from exc  # fmt: skip


def read_bank(path: str | Path, config: Config | None = None, **overrides) -> tuple:
    """(config to use, bank [M, D], metadata) of a file written by :func:`save_bank`. With
    ``config``, refuse a bank built with other artifact settings and list the differences;
    ``overrides`` change runtime fields."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != BANK_FORMAT:
        raise BankMismatchError(f"{path} is not a PatchCore memory bank "
                                f"(format={meta.get('format')!r}); {REBUILD}")  # fmt: skip
    if meta.get("format_version") != BANK_FORMAT_VERSION:
        found = meta.get("format_version")
        raise BankMismatchError(f"{path} has bank format {found!r}; this version reads "
                                f"{BANK_FORMAT_VERSION!r}. Refit and save again.")  # fmt: skip
    try:
        saved = json.loads(meta["config"])
        cfg = Config.from_dict(saved)
    except (KeyError, ValueError, TypeError) as exc:
        raise BankMismatchError(f"{path}: its stored config is unreadable ({exc})") from exc
    if config is not None and (diff := config.differences(saved)):
        lines = "\n".join(f"  {k}: bank has {b!r}, config asks {a!r}" for k, (a, b) in diff.items())
        raise BankMismatchError(f"memory bank {path} was built with other "
                                f"settings:\n{lines}\nRefit with the current config, or load "
                                "without a config.")  # fmt: skip
    cfg = config or cfg
    cfg = cfg.replace(**overrides) if overrides else cfg
    bank = tensors.get("memory_bank")
    if bank is None or bank.ndim != 2 or bank.shape[1] != cfg.embed_dim or bank.shape[0] < 1:
        shape = None if bank is None else tuple(bank.shape)
        raise BankMismatchError(f"{path}: memory_bank tensor missing or of shape {shape}, expected "
                                f"[M, {cfg.embed_dim}]")  # fmt: skip
    digest = "sha256:" + bank_digest(bank)
    if meta.get("checksum", digest) != digest:  # a file without a checksum is not refused
        raise BankMismatchError(f"{path}: the values do not match the checksum in its header "
                                f"(damaged); {REBUILD}")  # fmt: skip
    if not torch.isfinite(bank).all():
        raise BankMismatchError(f"{path}: memory bank holds NaN or infinite values; {REBUILD}")
    for name in ("grid", "info", "versions"):
        header_field(path, meta, name)  # every entry PatchCore.load reads parses
    return cfg, bank, meta


# ------------------------------------------------------------------ the good-only threshold
def held_out_scores(model, feats: TrainingFeatures, progress=False,
                    head_rows: int | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """(scores [n_images], info): each training image's unrotated view scored against the bank of
    ``model`` (a fitted PatchCore) minus the rows copied from any of that image's patches;
    ValueError when a bank row copies no training patch (the bank is not of these features).
    Only the patches that can give s* are searched in full (:func:`could_give_s_star`; ``head_rows``
    rows bound the rest: default 1/8 of a bank of >= 2,048 rows, 0 searches every patch)."""
    bank = model.bank
    if bank is None:
        raise RuntimeError("held-out scores need a fitted model (fit or load first)")
    features = bank.features
    row_keys = lambda rows: [r.tobytes() for r in np.ascontiguousarray(rows, dtype=np.float32)]
    keys = {k: j for j, k in enumerate(row_keys(features.detach().cpu().numpy()))}
    h, w = feats.grid
    views = max(1, feats.n_views // max(1, feats.n_images))  # rotations per image
    per_image, n = views * h * w, feats.n_images
    scores = np.full(n, np.nan, dtype=np.float32)
    owned = np.zeros(len(bank), dtype=bool)
    group = max(1, 16384 // per_image)  # images read from the feature file (and searched) at once
    starts = range(0, n, group)
    if progress:
        starts = show_progress(starts, total=math.ceil(n / group), desc="held-out", unit="group")
    for start in starts:
        stop = min(n, start + group)
        rows = feats.rows(torch.arange(start * per_image, stop * per_image)).float().cpu()
        blocks = [rows[j * per_image : (j + 1) * per_image] for j in range(stop - start)]
        own = [sorted({keys[k] for k in row_keys(b.numpy()) if k in keys}) for b in blocks]
        for rows_of_image in own:
            owned[rows_of_image] = True
        patches = torch.stack([b[: h * w] for b in blocks]).to(features.device)
        scores[start:stop] = _held_out_group(model, patches, own, head_rows)
    if not owned.all():
        raise ValueError(f"{int((~owned).sum())} of {len(bank)} memory-bank rows are copies of no "
                         "training patch: the bank was not built from these training features "
                         "(they were recomputed after the fit?). Refit the bank on these "
                         "features, then compute the threshold.")  # fmt: skip
    info = {"method": METHOD, "n_images": n, "views_per_image": views, "bank_rows": len(bank)}
    release_freed_memory()  # the per-group banks' buffers
    return scores, info


def _held_out_group(model, patches: torch.Tensor, own: list[list[int]], head_rows) -> np.ndarray:
    """s (eq. 7) of each image's patches ``patches[g]`` [P, D] against M without its rows
    ``own[g]``, as :meth:`PatchCore.score_embeddings` computes it against that bank. The images
    share the searches of M without all their rows ("rest"); the other images' rows ("extra",
    a few hundred) are searched per image, and the nearer of the two answers counts."""
    bank, dev, g_n = model.bank, model.bank.features.device, len(patches)
    theirs = sorted(set().union(*own))
    rest_idx = torch.ones(len(bank), dtype=torch.bool, device=dev)
    rest_idx[theirs] = False
    rest_idx = torch.nonzero(rest_idx).squeeze(1)
    rest = bank.subset(rest_idx) if len(rest_idx) else None
    extra_idx = [
        torch.tensor(sorted(set(theirs) - set(o)), dtype=torch.long, device=dev) for o in own
    ]
    extra = [bank.subset(e) if len(e) else None for e in extra_idx]
    if rest is None and any(e is None for e in extra):  # M without an image's rows is empty
        raise ValueError("every memory-bank row copies one training image's patches: a held-out "
                         "score needs rows from other images (fit on more images)")  # fmt: skip

    def nearest(queries: list[torch.Tensor], k: int = 1) -> list[tuple]:
        """Per image g, the k nearest (distances, bank rows) of queries[g] in M without own[g]."""
        found = [[] for _ in queries]
        if rest is not None:  # one search for every image's queries
            d, i = rest.nearest(torch.cat(queries), min(k, len(rest_idx)))
            sizes = [len(q) for q in queries]
            for g, (dg, ig) in enumerate(zip(d.split(sizes), rest_idx[i].split(sizes))):
                found[g].append((dg, ig))
        for g, (q, e) in enumerate(zip(queries, extra)):
            if e is not None:
                d, i = e.nearest(q, min(k, len(extra_idx[g])))
                found[g].append((d, extra_idx[g][i]))
        return [_merge(parts, k) for parts in found]

    if rest is not None:  # bounds from rest's first rows, for every image's patches at once
        hr = head_rows if head_rows is not None else (len(rest) // 8 if len(rest) >= 2048 else 0)
        if 0 < hr < len(rest) and patches.shape[1] > 32:
            bound = rest.head(hr).nearest(patches.flatten(0, 1), 1)[0][:, 0].view(g_n, -1)
            tops = torch.topk(bound, 32, dim=1).indices
            best = [d[:, 0].max() for d, _ in nearest([p[t] for p, t in zip(patches, tops)])]
            kept = [_kept(b, t, m) for b, t, m in zip(bound, tops, best)]
            patches = [p[k] for p, k in zip(patches, kept)]
    dist = nearest(list(patches))
    s_star, pos = zip(*[d[:, 0].max(0) for d, _ in dist])  # eq. 6, the first of equal maxima
    m_star = torch.stack([i[p, 0] for (_, i), p in zip(dist, pos)])
    ks = [min(model.config.num_neighbors, len(bank) - len(o)) for o in own]  # eq. 7's b
    out = [float(s) for s in s_star]
    if max(ks) > 1:
        found = nearest(list(bank.features[m_star][:, None].float()), max(ks))  # N_b(m*)
        for g, (_, n_b) in enumerate(found):
            if ks[g] > 1:
                n_b = n_b[:, : ks[g]].clone()
                n_b[:, 0] = m_star[g]  # m*'s nearest neighbour is m* itself (or a duplicate)
                d_n = bank.distance_to(patches[g][pos[g]][None, None], n_b)
                weight = 1 - torch.softmax(d_n.double(), dim=1)[:, 0].float()
                out[g] = float(weight * s_star[g])
    return np.array(out, dtype=np.float32)


def _merge(parts: list[tuple], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest of several searches' (distances [Q, k_j], rows [Q, k_j]): by distance, then
    row number (of equally near rows the first, as one search over the union reports)."""
    d, i = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    order = torch.sort(i, dim=1, stable=True).indices
    d, i = d.gather(1, order), i.gather(1, order)
    order = torch.sort(d, dim=1, stable=True).indices[:, :k]
    return d.gather(1, order), i.gather(1, order)


def _kept(bound: torch.Tensor, top: torch.Tensor, best, margin: float = 1e-3) -> torch.Tensor:
    """Positions whose bound reaches the largest searched distance ``best`` (less ``margin``,
    relative, for float32 rounding), and the searched ``top`` ones: ascending."""
    keep = bound >= best * (1 - margin)
    keep[top] = True
    return torch.nonzero(keep).squeeze(1)


def could_give_s_star(patches: torch.Tensor, bank: MemoryBank, head_rows: int | None = None,
                      first: int = 32, margin: float = 1e-3) -> torch.Tensor:  # fmt: skip
    """Positions (ascending) of the ``patches`` [P, D] whose distance to ``bank`` may be the
    largest, s* (eq. 6): the image score s depends on that patch alone. The distance to the bank's
    first ``head_rows`` rows (default 1/8 of a bank of >= 2,048 rows) bounds each patch's from
    above; the ``first`` largest bounds are searched in full, and every patch whose bound reaches
    their largest distance (less ``margin``, relative, for float32 rounding) is kept. Every
    position for a small bank. (:func:`held_out_scores` does the same for a group of images.)"""
    n = patches.shape[0]
    if head_rows is None:  # a small bank: searching every patch in full is cheap
        head_rows = len(bank) // 8 if len(bank) >= 2048 else 0
    if not 0 < head_rows < len(bank) or n <= first:
        return torch.arange(n, device=patches.device)
    bound = bank.head(head_rows).nearest(patches, 1)[0][:, 0]
    top = torch.topk(bound, first).indices
    return _kept(bound, top, bank.nearest(patches[top], 1)[0].max(), margin)


def good_only_threshold(scores, false_alarm_rate: float = 0.05) -> dict:
    """The threshold at ``false_alarm_rate`` and the max-of-good one from held-out good scores:
    ``value`` (flag when score >= value), the rate asked for and the ``expected`` one, ``rank``
    k, ``n_images`` n, ``held_out_flagged``, ``max_of_good``. With too few images for the rate
    (k > n) the threshold is the max of good, ``reachable`` is False and a warning says so."""
    alpha = float(false_alarm_rate)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"false_alarm_rate={alpha} must be in (0, 1)")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    n = len(s)
    if n == 0:
        raise ValueError("a good-only threshold needs at least one held-out good score")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    reachable = k <= n
    if not reachable:
        warnings.warn(f"a false-alarm rate of {alpha:g} needs at least {math.ceil(1 / alpha) - 1} "
                      f"good images; with {n} the threshold is the largest held-out score "
                      f"(expected false alarms {1 / (n + 1):.3f})", stacklevel=2)  # fmt: skip
        k = n
    # just above a float32 score: an image scoring exactly s[k - 1] passes (flagged: >=)
    above = lambda x: float(np.nextafter(np.float32(x), np.float32(np.inf)))
    value = above(s[k - 1])
    return {
        "value": value,
        "false_alarm_rate": alpha,
        "expected_false_alarm_rate": (n + 1 - k) / (n + 1),
        "reachable": reachable,
        "rank": k,
        "n_images": n,
        "held_out_flagged": int((s >= value).sum()),
        "max_of_good": above(s[-1]),
        "max_of_good_expected_false_alarm_rate": 1 / (n + 1),
        "method": METHOD,
    }
