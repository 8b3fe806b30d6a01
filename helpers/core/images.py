"""From a file to the network's input (notebook 01): any image decoded to RGB uint8, CLAHE, resize
+ centre crop with the inverse :class:`Geometry` that puts maps back on the original pixels, and
batches of what users pass as images (paths, samples, RGB uint8 arrays, a normalised tensor)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from helpers.core.config import Config

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


def load_image(path: str | Path) -> np.ndarray:
    """Any common image file as RGB uint8 [H, W, 3] (gray, RGBA on black, palette, 16-bit, float);
    a corrupt or truncated file, or one above Pillow's bomb limit: :class:`ImageReadError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # the header: format, mode, size (bomb check)
                arr = _png_rgb8(path, im)
                if arr is None:
                    im.load()
                    arr = _to_rgb8(im)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"image {path} is {_too_large(exc)}. Downscale or remove the file, or "
                             "set skip_bad_images=True to skip it.") from exc  # fmt: skip
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, RuntimeError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}. Remove or replace the file, or set "
                             "skip_bad_images=True to skip unreadable files.") from exc  # fmt: skip
    return arr


def _png_rgb8(path: Path, im) -> np.ndarray | None:
    """An 8-bit RGB PNG (MVTec's images) decoded by OpenCV: 27-28 ms for a 1024-px transistor
    image against Pillow's 33-36, the same pixels on every RGB image of the three real sets
    (benchmarks/RESULTS.md). None for any other file, which Pillow decodes; a damaged file raises
    RuntimeError."""
    if im.format != "PNG" or im.mode != "RGB" or "transparency" in im.info:
        return None
    data = np.fromfile(path, dtype=np.uint8)
    if data.size < 26 or data[24] != 8 or data[25] != 2:  # IHDR: 8 bits, colour type 2 (RGB)
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise RuntimeError("the PNG data is damaged or incomplete")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _too_large(exc: BaseException) -> str:
    size = str(exc).split(", could be")[0].rstrip(".")  # "Image size (N pixels) exceeds limit..."
    return f"too large to decode safely: {size} (Pillow's guard against decompression bombs)"


def check_image_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image (a short reason), or None. Cheaper than decoding:
    the header always; PNG: every chunk's CRC; JPEG: the end marker; other formats: decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format
                if fmt == "PNG":
                    im.verify()  # reads every chunk and checks its CRC, decodes nothing
                elif fmt != "JPEG":
                    im.load()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 64))
                if b"\xff\xd9" not in fh.read():
                    return "truncated JPEG file (no end-of-image marker)"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return _too_large(exc)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _to_rgb8(im) -> np.ndarray:
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0 if arr.max() <= 65535 else arr * (255.0 / max(arr.max(), 1))
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
    if im.mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.asarray(im.convert("RGB")), dtype=np.uint8)


def apply_clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of LAB's L channel (RGB uint8 in, out)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid),) * 2)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


@dataclass(frozen=True)
class Geometry:
    """How an original image became the network input: shorter side resized to ``resize``, then a
    centred ``crop`` x ``crop`` window at (top, left) of the resized image."""

    orig_h: int
    orig_w: int
    res_h: int
    res_w: int
    top: int
    left: int
    crop: int

    @classmethod
    def for_shape(cls, h: int, w: int, resize: int, crop: int) -> Geometry:
        if resize == 0:  # squash: the whole image, aspect ratio not kept
            return cls(h, w, crop, crop, 0, 0, crop)
        scale = resize / min(h, w)
        res_h, res_w = max(crop, round(h * scale)), max(crop, round(w * scale))
        # torchvision's CenterCrop convention
        top, left = int(round((res_h - crop) / 2.0)), int(round((res_w - crop) / 2.0))
        return cls(h, w, res_h, res_w, top, left, crop)

    def to_original(self, amap: np.ndarray, fill: float | None = None) -> np.ndarray:
        """Map a [crop, crop] map to the original [orig_h, orig_w] pixels. Pixels the crop never
        saw get ``fill`` (default: the map's minimum)."""
        if amap.shape != (self.crop, self.crop):
            raise ValueError(f"map shape {amap.shape} != crop {(self.crop, self.crop)}")
        canvas = np.full((self.res_h, self.res_w), amap.min() if fill is None else fill, np.float32)
        canvas[self.top : self.top + self.crop, self.left : self.left + self.crop] = amap
        if (self.res_h, self.res_w) == (self.orig_h, self.orig_w):
            return canvas
        return cv2.resize(canvas, (self.orig_w, self.orig_h), interpolation=cv2.INTER_LINEAR)


class Preprocessor:
    """RGB uint8 image -> normalised float tensor [3, crop, crop] and its :class:`Geometry`."""

    def __init__(self, input_size: int, resize: int, *, clahe=False, clip=2.0, tiles=8):
        self.input_size, self.resize = input_size, resize
        self.clahe, self.clip, self.tiles = clahe, clip, tiles

    @classmethod
    def from_config(cls, c) -> Preprocessor:
        clahe = dict(clahe=c.clahe, clip=c.clahe_clip_limit, tiles=c.clahe_tile_grid)
        return cls(c.input_size, c.resize, **clahe)

    def crop_rgb(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """CLAHE (if on), resize and centre crop: RGB uint8 [crop, crop, 3]."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if self.clahe:
            image = apply_clahe(image, self.clip, self.tiles)
        g = Geometry.for_shape(image.shape[0], image.shape[1], self.resize, self.input_size)
        interp = cv2.INTER_AREA if g.res_h < g.orig_h else cv2.INTER_LINEAR
        resized = cv2.resize(image, (g.res_w, g.res_h), interpolation=interp)
        return resized[g.top : g.top + g.crop, g.left : g.left + g.crop], g

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        crop, g = self.crop_rgb(image)
        x = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), g


Batch = tuple[torch.Tensor, list[Geometry], list[int]]


def rotate_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, border replicated (for train_rotations)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def image_batches(images, config: Config, preprocess: Preprocessor, rotations=1) -> Iterator[Batch]:
    """(tensor batch, geometries, indices into the input) of ``config.batch_size`` images, read
    as they are needed; with ``rotations`` > 1 also each image's copies turned by 360/rotations."""
    c = config
    if not isinstance(images, torch.Tensor):
        yield from _file_batches(as_list(images), c, preprocess, rotations)
        return
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"a tensor input must be float [N, 3, {c.input_size}, "
                         f"{c.input_size}] ImageNet-normalised; got {images.dtype} "
                         f"{tuple(images.shape)}")  # fmt: skip
    if tuple(images.shape[2:]) != (c.input_size, c.input_size):
        raise ValueError(f"tensor images are {tuple(images.shape[2:])} but "
                         f"input_size={c.input_size}; pass file paths or uint8 arrays to have them "
                         "resized")  # fmt: skip
    g = Geometry(c.input_size, c.input_size, c.input_size, c.input_size, 0, 0, c.input_size)
    for i in range(0, images.shape[0], c.batch_size):
        part = images[i : i + c.batch_size]
        yield part, [g] * part.shape[0], list(range(i, i + part.shape[0]))


def _file_batches(items: list, c: Config, preprocess: Preprocessor, rotations: int):
    if not items:
        raise ValueError("no images given (an empty list or folder?)")

    def load(item):  # maybe in a reader thread: a file to skip comes back as its error
        try:
            return load_input(item)
        except ImageReadError as exc:
            if c.skip_bad_images:
                return exc
            raise

    # reader threads decode a batch's files in parallel (the PNG decoders release the GIL); not
    # the next batch's while the network runs: on 2 cores the readers and the network's threads
    # then slow each other down (100 transistor test images: 29-31 -> 37-44 ms each)
    workers = ThreadPoolExecutor(c.num_workers) if c.num_workers > 0 else contextlib.nullcontext()
    with workers as pool:  # None: read in this thread
        for start in range(0, len(items), c.batch_size):
            loaded = (pool.map if pool else map)(load, items[start : start + c.batch_size])
            tensors, geoms, idx = [], [], []
            for i, img in enumerate(loaded, start):
                if isinstance(img, ImageReadError):  # warned here, in the caller's thread:
                    warnings.warn(f"skipped: {img}", stacklevel=3)  # points at embed_images
                    continue
                for r in range(rotations):
                    t, g = preprocess(img if r == 0 else rotate_image(img, 360.0 * r / rotations))
                    tensors.append(t)
                    geoms.append(g)
                    idx.append(i)
            if tensors:
                yield torch.stack(tensors), geoms, idx


def load_input(item) -> np.ndarray:
    """One image as RGB uint8 [H, W, 3]; an unreadable file raises :class:`ImageReadError` (the
    batches skip it with ``skip_bad_images``)."""
    if _is_sample(item):
        item = item.path
    if isinstance(item, (str, Path)):
        return load_image(item)
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must be [H, W, 3] RGB or [H, W] gray, got {item.shape}")
        if item.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 0-255, got {item.dtype}; convert "
                             "with (x * 255).clip(0, 255).astype(np.uint8)")  # fmt: skip
        return np.ascontiguousarray(item[..., :3])
    raise TypeError(f"cannot use {type(item).__name__} as an image: pass a file path, a Sample, an "
                    "RGB uint8 array or a normalised float tensor")  # fmt: skip


def _is_sample(item) -> bool:  # a helpers.data.mvtec.Sample, or anything with a path
    return isinstance(getattr(item, "path", None), (str, Path))


def as_list(images) -> list:
    """The images as a list (a tensor stays a tensor)."""
    if isinstance(images, (str, Path)) or _is_sample(images):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"cannot use {type(images).__name__} as images: pass a list of file paths, "
                    "Samples or RGB uint8 arrays, or a normalised tensor [N, 3, S, S]")  # fmt: skip
