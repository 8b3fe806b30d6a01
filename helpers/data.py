"""MVTec-layout datasets: list samples, decode images robustly, CLAHE, resize + centre crop, and
the inverse geometry that puts anomaly maps back onto the original pixels.

Layout expected under ``root``::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png            (optional)
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<name>_mask.png   (optional)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

LAYOUT_HELP = """Expected MVTec AD layout:
  <dataset_path>/<category>/train/good/000.png ...
  <dataset_path>/<category>/test/good/000.png ...            (optional)
  <dataset_path>/<category>/test/<defect>/000.png ...
  <dataset_path>/<category>/ground_truth/<defect>/000_mask.png ...   (optional)"""


class DatasetError(FileNotFoundError):
    """The dataset folder is missing or not laid out like MVTec AD."""


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


@dataclass(frozen=True)
class Sample:
    path: Path
    split: str  # "train" or "test"
    defect: str  # "good" or the defect folder name
    mask_path: Path | None  # None for good images or when the mask is missing

    @property
    def label(self) -> int:
        return 0 if self.defect == "good" else 1


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    files, ignored = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("._"):
            files.append(p)
        elif p.is_file():
            ignored.append(p)
    return files, ignored


def category_dir(root: str | Path, category: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} does not exist or is not a folder.\n{LAYOUT_HELP}")
    cat = root / category
    if not cat.is_dir():
        if (root / "train").is_dir():  # the user pointed at the category folder itself
            return root
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"category folder {cat} not found (folders in {root}: {found}).\n{LAYOUT_HELP}"
        )
    return cat


def list_samples(root: str | Path, category: str, split: str) -> list[Sample]:
    """Samples of one split, sorted by defect type then file name. Non-image files are ignored
    with one warning that counts them. Raises :class:`DatasetError` naming the folder at fault."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} must be 'train' or 'test'")
    cat = category_dir(root, category)
    split_dir = cat / split
    if split == "train":
        good = split_dir / "good"
        if not good.is_dir():
            raise DatasetError(f"training folder {good} is missing.\n{LAYOUT_HELP}")
        defects = ["good"]
    else:
        if not split_dir.is_dir():
            raise DatasetError(f"test folder {split_dir} is missing.\n{LAYOUT_HELP}")
        defects = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        defects = (["good"] if "good" in defects else []) + [d for d in defects if d != "good"]
    samples, ignored, missing_masks = [], [], []
    for defect in defects:
        files, skipped = _image_files(split_dir / defect)
        ignored += skipped
        for f in files:
            mask = None
            if defect != "good":
                mask = cat / "ground_truth" / defect / f"{f.stem}_mask.png"
                if not mask.is_file():
                    alt = cat / "ground_truth" / defect / f"{f.stem}.png"
                    mask = alt if alt.is_file() else None
                if mask is None:
                    missing_masks.append(f)
            samples.append(Sample(f, split, defect, mask))
    if ignored:
        warnings.warn(
            f"ignored {len(ignored)} non-image file(s) under {split_dir}, e.g. {ignored[0].name}",
            stacklevel=2,
        )
    if split == "train" and not samples:
        raise DatasetError(f"training folder {split_dir / 'good'} holds no images.\n{LAYOUT_HELP}")
    if split == "test" and missing_masks and (cat / "ground_truth").is_dir():
        warnings.warn(
            f"{len(missing_masks)} defective test image(s) have no mask, e.g. "
            f"{missing_masks[0]}; pixel metrics skip them",
            stacklevel=2,
        )
    return samples


# --------------------------------------------------------------------------- decoding
def load_image(path: str | Path) -> np.ndarray:
    """Decode any common image file to RGB uint8 [H, W, 3]: grayscale, RGBA (composited on black),
    palette, 16-bit and float images are all converted the same way. Truncated or corrupt files
    raise :class:`ImageReadError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = _to_rgb8(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f"cannot read image {path}: {exc}. Remove or replace the file, or "
            "set skip_bad_images=True to skip unreadable files."
        ) from exc
    return arr


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


def load_mask(path: str | Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Binary mask (bool [H, W]) resized with nearest neighbour to ``shape`` when it differs;
    None (with a warning naming the file) when it is missing or unreadable."""
    if path is None:
        return None
    try:
        arr = load_image(path)[..., 0]
    except ImageReadError as exc:
        warnings.warn(f"mask skipped: {exc}", stacklevel=2)
        return None
    if arr.shape != tuple(shape):
        warnings.warn(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}; resized with nearest neighbour",
            stacklevel=2,
        )
        arr = cv2.resize(arr, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return arr > 127


def masks_like(samples: list[Sample], maps: list) -> list[np.ndarray | None]:
    """Ground-truth masks of test ``samples`` at each map's size: all False for good images,
    None where the map is None or a defective image has no readable mask."""
    out = []
    for s, amap in zip(samples, maps):
        if amap is None:
            out.append(None)
        elif s.defect == "good":
            out.append(np.zeros(amap.shape, bool))
        else:
            out.append(load_mask(s.mask_path, amap.shape) if s.mask_path is not None else None)
    return out


# --------------------------------------------------------------------------- CLAHE
def apply_clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on the L channel of LAB (RGB uint8 in and
    out)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(
        clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid))
    )
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


# --------------------------------------------------------------------------- geometry
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

    def from_original(self, yx: tuple[float, float]) -> tuple[float, float]:
        """Original pixel (y, x) -> input (crop) pixel (y, x), pixel-centre convention."""
        sy, sx = self.res_h / self.orig_h, self.res_w / self.orig_w
        return ((yx[0] + 0.5) * sy - 0.5 - self.top, (yx[1] + 0.5) * sx - 0.5 - self.left)


class Preprocessor:
    """RGB uint8 image -> normalised float tensor [3, crop, crop] and its :class:`Geometry`."""

    def __init__(
        self,
        input_size: int,
        resize: int,
        *,
        clahe: bool = False,
        clahe_clip_limit: float = 2.0,
        clahe_tile_grid: int = 8,
    ):
        self.input_size, self.resize = input_size, resize
        self.clahe, self.clip, self.tiles = clahe, clahe_clip_limit, clahe_tile_grid

    @classmethod
    def from_config(cls, cfg) -> Preprocessor:
        return cls(
            cfg.input_size,
            cfg.resize,
            clahe=cfg.clahe,
            clahe_clip_limit=cfg.clahe_clip_limit,
            clahe_tile_grid=cfg.clahe_tile_grid,
        )

    def crop_rgb(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """CLAHE (if on), resize and centre crop: RGB uint8 [crop, crop, 3]."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}"
            )
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


def denormalize(x: torch.Tensor) -> np.ndarray:
    """Normalised tensor [3, H, W] -> RGB uint8 [H, W, 3] (for figures)."""
    arr = x.detach().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(arr * 255 + 0.5, 0, 255).astype(np.uint8)
