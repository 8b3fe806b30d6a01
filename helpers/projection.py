"""The coreset's seeded Gaussian random projection (Johnson-Lindenstrauss), filled block by block.

Dot products of the greedy selection always go through a matrix-vector product whose row count
is a multiple of ``ROWS`` (zero-padded): MKL's gemv rounds its last ``N mod 8`` rows differently
from the others, which made two identical patches get different distances depending on where
they sat. :class:`Projection` keeps that padding.
"""

from __future__ import annotations

import torch

ROWS = 64  # every matrix-vector product runs on a multiple of this many rows (see module doc)


def _projection_matrix(d: int, dim: int, seed: int, device, dtype) -> torch.Tensor | None:
    """The seeded Gaussian matrix [d, dim] scaled by 1/sqrt(dim); None when no projection applies
    (``dim <= 0`` or ``dim >= d``: the features are used as they are)."""
    if dim <= 0 or dim >= d:
        return None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(d, dim, generator=gen) / dim**0.5).to(device, dtype)


def random_projection(
    features: torch.Tensor,
    dim: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    chunk: int = 16384,
) -> torch.Tensor:
    """[N, D] -> [N, dim] with a seeded Gaussian matrix scaled by 1/sqrt(dim) (``dtype`` result,
    computed in that dtype, in row chunks so a float64 copy of the features is never made).
    ``dim <= 0`` or ``dim >= D`` returns the features unprojected."""
    proj = Projection(
        features.shape[1], dim, seed, features.shape[0], features.device, dtype, padded=False
    )
    proj.add(features, block_rows=chunk)
    return proj.result()[0]


class Projection:
    """The coreset's projection, filled block by block (the streaming fit adds one image's patches
    at a time): a preallocated [capacity + padding, dim] buffer whose rows after the last added
    one are zero. The same blocks give the same numbers whether the features arrive in a stream
    or from one tensor (the matrix product of a block depends only on that block)."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        seed: int,
        capacity: int,
        device=None,
        dtype: torch.dtype = torch.float64,
        padded: bool = True,
    ):
        self.matrix = _projection_matrix(in_dim, dim, seed, device, dtype)
        self.dim = in_dim if self.matrix is None else dim
        self.capacity, self.n, self.padded = int(capacity), 0, padded
        self.buffer = torch.zeros(
            capacity + (ROWS if padded else 0), self.dim, dtype=dtype, device=device
        )

    @classmethod
    def of_rows(cls, rows: torch.Tensor, device=None) -> Projection:
        """A filled projection from rows already projected (a saved one)."""
        proj = cls(rows.shape[1], 0, 0, rows.shape[0], device, rows.dtype)
        proj.add(rows)
        return proj

    def add(self, rows: torch.Tensor, block_rows: int | None = None) -> None:
        """Append ``rows`` [k, in_dim], projected ``block_rows`` rows per matrix product (all at
        once when None)."""
        if block_rows is not None:
            for start in range(0, rows.shape[0], block_rows):
                self.add(rows[start : start + block_rows])
            return
        k = rows.shape[0]
        if self.n + k > self.capacity:
            raise ValueError(f"projection buffer holds {self.capacity} rows; got {self.n + k}")
        part = rows.to(self.buffer.device, self.buffer.dtype)
        if self.matrix is None:
            self.buffer[self.n : self.n + k] = part
        else:
            torch.mm(part, self.matrix, out=self.buffer[self.n : self.n + k])
        self.n += k

    def result(self) -> tuple[torch.Tensor, int]:
        """(rows [n + padding, dim] with zero padding rows, n); a view of the buffer."""
        pad = (-self.n % ROWS or ROWS) if self.padded else 0
        return self.buffer[: self.n + pad], self.n


def projected(
    features: torch.Tensor, projection_dim: int, seed: int, block_rows: int = 16384
) -> tuple[torch.Tensor, int]:
    """float64 projection zero-padded to a multiple of ROWS rows (at least one zero row, row
    ``n``, which pads gathered row sets), and the real row count."""
    proj = Projection(features.shape[1], projection_dim, seed, features.shape[0], features.device)
    proj.add(features, block_rows=block_rows)
    return proj.result()
