"""Turning what a user passes as images into network input batches: file paths,
:class:`~helpers.data.Sample` objects, RGB uint8 arrays (or a list of them), or an already
normalised float tensor [N, 3, S, S]; each image optionally with rotated copies."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from .config import Config
from .data import Geometry, ImageReadError, Preprocessor, Sample, load_image

Batch = tuple[torch.Tensor, list[Geometry], list[int]]


def rotate_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, border replicated (for train_rotations)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def image_batches(
    images, config: Config, preprocess: Preprocessor, rotations: int = 1
) -> Iterator[Batch]:
    """Yield (tensor batch, geometries, indices into the input) of ``config.batch_size`` images,
    read from disk as they are needed; with ``rotations`` > 1 each image also gives its copies
    rotated by 360/rotations degrees (one view each)."""
    if isinstance(images, torch.Tensor):
        yield from _tensor_batches(images, config)
    else:
        yield from _file_batches(as_list(images), config, preprocess, rotations)


def _tensor_batches(images: torch.Tensor, c: Config) -> Iterator[Batch]:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"a tensor input must be float [N, 3, {c.input_size}, {c.input_size}] "
            f"ImageNet-normalised; got {images.dtype} {tuple(images.shape)}"
        )
    if tuple(images.shape[2:]) != (c.input_size, c.input_size):
        raise ValueError(
            f"tensor images are {tuple(images.shape[2:])} but input_size="
            f"{c.input_size}; pass file paths or uint8 arrays to have them resized"
        )
    g = Geometry(c.input_size, c.input_size, c.input_size, c.input_size, 0, 0, c.input_size)
    for i in range(0, images.shape[0], c.batch_size):
        part = images[i : i + c.batch_size]
        yield part, [g] * part.shape[0], list(range(i, i + part.shape[0]))


def _file_batches(
    items: list, c: Config, preprocess: Preprocessor, rotations: int
) -> Iterator[Batch]:
    if not items:
        raise ValueError("no images given (an empty list or folder?)")

    def load(item):
        return load_input(item, c.skip_bad_images)

    pool = ThreadPoolExecutor(max(1, c.num_workers)) if c.num_workers > 0 else None
    try:
        for start in range(0, len(items), c.batch_size):
            chunk = list(enumerate(items[start : start + c.batch_size], start))
            loaded = (
                pool.map(load, [it for _, it in chunk])
                if pool
                else map(load, [it for _, it in chunk])
            )
            tensors, geoms, idx = [], [], []
            for (i, _), img in zip(chunk, loaded):
                if img is None:
                    continue
                for r in range(rotations):
                    view = img if r == 0 else rotate_image(img, 360.0 * r / rotations)
                    t, g = preprocess(view)
                    tensors.append(t)
                    geoms.append(g)
                    idx.append(i)
            if tensors:
                yield torch.stack(tensors), geoms, idx
    finally:
        if pool:
            pool.shutdown()


def load_input(item, skip_bad_images: bool = False) -> np.ndarray | None:
    """One image as RGB uint8 [H, W, 3]; None for an unreadable file with ``skip_bad_images``."""
    if isinstance(item, Sample):
        item = item.path
    if isinstance(item, (str, Path)):
        try:
            return load_image(item)
        except ImageReadError as exc:
            if skip_bad_images:
                # points at PatchCore.embed_images (through load, the batches, image_batches)
                warnings.warn(f"skipped: {exc}", stacklevel=5)
                return None
            raise
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ValueError(
                f"image arrays must be [H, W, 3] RGB (or [H, W] gray), got {item.shape}"
            )
        if item.dtype != np.uint8:
            raise ValueError(
                f"image arrays must be uint8 0-255, got {item.dtype}; "
                "convert with (x * 255).clip(0, 255).astype(np.uint8)"
            )
        return np.ascontiguousarray(item[..., :3])
    raise TypeError(
        f"cannot use {type(item).__name__} as an image: pass a file path, a Sample, "
        "an RGB uint8 array or a normalised float tensor"
    )


def as_list(images) -> list:
    """The images as a list (a tensor stays a tensor)."""
    if isinstance(images, (str, Path, Sample)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(
        f"cannot use {type(images).__name__} as images: pass a list of file paths, "
        "Samples or RGB uint8 arrays, or a normalised tensor [N, 3, S, S]"
    )
