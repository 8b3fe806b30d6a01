"""Patch-score grid -> anomaly map: bilinear upsampling to the input size, then a Gaussian blur
(sigma 4 in the paper) that matches ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``,
done in torch so it runs on the GPU in a batch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """scipy's 'reflect' (d c b a | a b c d | d c b a), repeated for kernels wider than the map."""
    n = x.shape[dim]
    idx = torch.remainder(torch.arange(-r, n + r, device=x.device), 2 * n)
    return x.index_select(dim, torch.where(idx >= n, 2 * n - 1 - idx, idx))


def gaussian_blur(maps: torch.Tensor, sigma: float, chunk: int = 8) -> torch.Tensor:
    """Blur [B, H, W] maps with a separable Gaussian, ``chunk`` maps at a time (bounded memory:
    112 maps of 320 px at sigma 8 peaked at 1.07 GB at once, 0.70 GB in chunks); sigma <= 0
    returns the input."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps.unsqueeze(1)  # [B, 1, H, W]
    parts = [x] if torch.onnx.is_in_onnx_export() else x.split(chunk)  # ONNX: one graph, any B
    out = []
    for part in parts:
        part = F.conv2d(_symmetric_pad(part, r, 3), k.view(1, 1, 1, -1))
        out.append(F.conv2d(_symmetric_pad(part, r, 2), k.view(1, 1, -1, 1)))
    return torch.cat(out).squeeze(1)


def patch_scores_to_maps(grid: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """[B, h, w] patch scores -> [B, size, size] blurred anomaly maps in input pixels."""
    up = F.interpolate(grid[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    return gaussian_blur(up.squeeze(1), sigma)


def grids_to_maps(grids, geometries: list, *, input_size: int, sigma: float,
                  device: torch.device | str = "cpu", chunk: int = 16) -> list:  # fmt: skip
    """Patch-score grids [B, h, w] -> anomaly maps in each image's ORIGINAL pixels (upsampled,
    blurred, resize/crop undone by its :class:`~helpers.core.images.Geometry`); None where the
    geometry is None (an unreadable image)."""
    grids = grids.detach().cpu() if isinstance(grids, torch.Tensor) else grids
    grids = torch.as_tensor(np.nan_to_num(np.asarray(grids, np.float32)))
    out = []
    for start in range(0, len(geometries), chunk):
        part = patch_scores_to_maps(grids[start : start + chunk].to(device), input_size, sigma)
        for g, amap in zip(geometries[start : start + chunk], part.cpu().numpy()):
            out.append(None if g is None else g.to_original(amap))
    return out
