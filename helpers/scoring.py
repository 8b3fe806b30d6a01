"""Scoring against the memory bank, the part of :class:`~helpers.model.PatchCore` that runs after
a fit: the bank and what is derived from it (squared row norms, the cosine norm floor), the
nearest-neighbour search that halves its block budget on out-of-memory, and the image score with
the paper's eq. 7 re-weighting."""

from __future__ import annotations

import torch

from .knn import knn, pair_distance
from .runtime import run_halving


class BankScoring:
    """Mixed into :class:`~helpers.model.PatchCore`, whose ``__init__`` sets ``config``,
    ``_knn_mb`` (the kNN block budget) and ``memory_bank``."""

    def _check_fitted(self) -> None:
        if self.memory_bank is None:
            raise RuntimeError(
                "this PatchCore has no memory bank: call fit(train_images) or "
                "PatchCore.load(path) first"
            )

    @property
    def memory_bank(self) -> torch.Tensor | None:
        """The kept training patch features [M, D]; setting it resets what is derived from it."""
        return self._memory_bank

    @memory_bank.setter
    def memory_bank(self, bank: torch.Tensor | None) -> None:
        self._memory_bank = bank
        self._bank_sqn = None  # |bank row|^2, made on first use
        self._bank_norm = None  # median bank-row norm (cosine floor)

    @property
    def bank_sqn(self) -> torch.Tensor:
        if self._bank_sqn is None:
            self._bank_sqn = (self.memory_bank.float() ** 2).sum(1)
        return self._bank_sqn

    @property
    def norm_floor(self) -> float:
        """The absolute norm floor of ``distance="cosine"``: ``cosine_floor`` times the median
        norm of the memory bank's features (0 for L2 or plain cosine)."""
        c = self.config
        if c.distance != "cosine" or not c.cosine_floor:
            return 0.0
        if self._bank_norm is None:
            self._bank_norm = float(self.memory_bank.float().norm(dim=1).median())
        return c.cosine_floor * self._bank_norm

    def _knn(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """kNN against the bank; halves the distance-block budget on out-of-memory."""
        c = self.config

        def run(memory_mb: int):
            return knn(
                queries,
                self.memory_bank,
                k,
                distance=c.distance,
                backend=c.knn_backend,
                memory_mb=memory_mb,
                bank_sqn=self.bank_sqn,
                norm_floor=self.norm_floor,
            )

        out, self._knn_mb = run_halving(run, self._knn_mb, "nearest-neighbour search (memory_mb)")
        return out

    def score_embeddings(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch embeddings [B, h, w, D] -> (image scores [B], patch-score grid [B, h, w])."""
        self._check_fitted()
        c = self.config
        b, h, w, d = emb.shape
        if d != self.memory_bank.shape[1]:
            raise ValueError(
                f"embeddings have dimension {d}, the memory bank {self.memory_bank.shape[1]}"
            )
        flat = emb.reshape(b, h * w, d)
        dist, idx = self._knn(flat.reshape(-1, d), 1)
        dist, idx = dist.view(b, h * w), idx.view(b, h * w)
        s_star, pos = dist.max(dim=1)
        scores = s_star
        k = min(c.num_neighbors, self.memory_bank.shape[0])
        if k > 1:  # eq. 7: down-weight when m* sits in a dense region of the bank
            rows = torch.arange(b, device=dist.device)
            m_test = flat[rows, pos]  # [B, D]
            m_star = idx[rows, pos]  # [B]
            _, support = self._knn(self.memory_bank[m_star], k)
            support[:, 0] = m_star  # the nearest neighbour of m* is m* (or an exact duplicate)
            near = self.memory_bank[support].float()  # [B, k, D]
            dd = pair_distance(m_test[:, None], near, c.distance, self.norm_floor)
            weight = 1 - torch.softmax(dd.double(), dim=1)[:, 0].float()
            scores = weight * s_star
        return scores, dist.view(b, h, w)
