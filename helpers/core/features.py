"""Patch embeddings: backbone taps -> 3x3 local aggregation -> per-layer pooling -> one vector per
patch, as in the official PatchCore code.

For each tapped layer with C channels, every position's 3x3 neighbourhood (zero padded, stride 1)
is flattened to C*9 values and adaptive-average-pooled to ``pretrain_embed_dim``. Deeper layers are
upsampled bilinearly to the first layer's grid. The per-layer vectors are concatenated and pooled
again to ``target_embed_dim``.

``pretrain_embed_dim=0`` pools each layer to its own channel count C, which is exactly the 3x3 mean
of every channel (the C*9 values are channel-major); ``target_embed_dim=0`` keeps the concatenation
as it is. Both 0 give the "natural" embedding of a small backbone (MobileNetV2 features.6 + .13:
32 + 96 = 128 values) instead of stretching its 288 / 864 values up to 1024. (Pooling and
bilinear upsampling are both linear and act on different axes, so pooling before upsampling,
done here to save memory, gives the same numbers as the official order.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers.core.backbones import BACKBONES, load_backbone


class FeatureExtractor(nn.Module):
    """``forward(images [B,3,S,S] normalised) -> embeddings [B, h, w, D]``."""

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        *,
        weights: str | None = "IMAGENET1K_V1",
        patch_size: int = 3,
        pretrain_embed_dim: int = 1024,
        target_embed_dim: int = 1024,
        model: nn.Module | None = None,
    ):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        spec = BACKBONES[backbone]
        self.layers = list(layers)
        self.patch_size = patch_size
        self.pretrain_embed_dim = pretrain_embed_dim
        self.target_embed_dim = target_embed_dim
        # the stride of the first tap sets the patch grid; keep taps ordered by stride
        self.strides = [spec.layers[layer] for layer in self.layers]
        net = model if model is not None else load_backbone(backbone, weights)
        self.body = create_feature_extractor(net, return_nodes={name: name for name in self.layers})
        self.eval()

    @property
    def grid_stride(self) -> int:
        return self.strides[0]

    def grid_size(self, input_size: int) -> int:
        return -(-input_size // self.grid_stride)

    def train(self, mode: bool = True):  # frozen network: BatchNorm stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        taps = self.body(images)
        maps = [taps[layer] for layer in self.layers]
        h, w = maps[0].shape[-2:]
        pooled = []
        for fmap in maps:
            fmap = fmap.float()
            dim = self.pretrain_embed_dim or fmap.shape[1]  # 0: the layer's channel count
            emb = local_patch_pool(fmap, self.patch_size, dim)  # [B, dim, h', w']
            if emb.shape[-2:] != (h, w):
                emb = F.interpolate(emb, size=(h, w), mode="bilinear", align_corners=False)
            pooled.append(emb)
        emb = torch.cat(pooled, dim=1).permute(0, 2, 3, 1)  # [B, h, w, L*D]
        b, dim = emb.shape[0], self.target_embed_dim or emb.shape[-1]
        if emb.shape[-1] != dim:
            emb = F.adaptive_avg_pool1d(emb.reshape(-1, 1, emb.shape[-1]), dim)
        return emb.reshape(b, h, w, dim)


def balanced_tap_weights(emb: torch.Tensor, tap_dims: list[int]) -> list[float]:
    """One weight per tap such that every tap's block of ``emb`` [..., sum(tap_dims)] has the same
    mean squared norm: in an L2 distance each tap then counts alike, as the paper's pooling of
    every tap to the same width arranges, instead of the tap with the largest values (on
    MobileNetV2 the 160-channel stride-32 tap) drowning the finer ones."""
    blocks = emb.reshape(-1, emb.shape[-1]).double().split(tap_dims, dim=1)
    sq = [block.pow(2).sum(1).mean().item() for block in blocks]
    mean = sum(sq) / len(sq)
    return [(mean / s) ** 0.5 if s > 0 else 1.0 for s in sq]


def local_patch_pool(
    fmap: torch.Tensor, patch_size: int, out_dim: int, max_elements: int = 1 << 26
) -> torch.Tensor:
    """[B, C, h, w] -> [B, out_dim, h, w]: each position's ``patch_size`` neighbourhood (C*p*p
    values, channel-major like ``F.unfold``) adaptive-average-pooled to ``out_dim`` values.
    Processes the batch in slices so the unfolded tensor stays below ``max_elements``."""
    b, c, h, w = fmap.shape
    pad = (patch_size - 1) // 2
    per_image = c * patch_size * patch_size * h * w
    step = max(1, max_elements // max(per_image, 1))
    out = []
    for i in range(0, b, step):
        part = fmap[i : i + step]
        cols = F.unfold(part, kernel_size=patch_size, padding=pad, stride=1)  # [b, C*p*p, h*w]
        cols = cols.transpose(1, 2).reshape(-1, 1, cols.shape[1])
        pooled = F.adaptive_avg_pool1d(cols, out_dim)  # [b*h*w, 1, D]
        out.append(pooled.reshape(part.shape[0], h, w, out_dim).permute(0, 3, 1, 2))
    return torch.cat(out, dim=0)
