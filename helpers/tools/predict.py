"""Score new images with a saved model: ``python -m helpers predict SOURCE IMAGES... --out OUT``,
or ``H.predict("runs/x", ["new_parts/"], out="runs/x/new")`` (``result.rows``, ``.scores``).

SOURCE: a run folder (the config in ``run.json``, the bank and good-only threshold in
``artifacts/``) or a bank file (the threshold in its header or the ``.threshold.json`` beside
it). IMAGES: files and folders (searched recursively). OUT gets ``predictions.csv`` (path, score,
verdict, threshold, error) and with ``--overlays`` each image with its map over it. An unreadable
image gets a row with its error; no source, a bank built with other settings or nothing scored:
one line, exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from helpers.core.images import ImageReadError, load_image
from helpers.core.model import PatchCore
from helpers.core.runtime import atomic_write_bytes, atomic_write_text
from helpers.data.mvtec import IMAGE_EXTS
from helpers.run.parameters import parse_value
from helpers.run.run import saved_model

COLUMNS = ("path", "score", "verdict", "threshold", "error")
THRESHOLD_NAMES = ("good_only", "max_of_good")


def threshold_arg(text: str) -> str | float:
    """``--threshold`` of predict and export: a saved threshold's name or a number."""
    try:
        return text if text in THRESHOLD_NAMES else float(text)
    except ValueError:
        why = f"{text!r}: a number or one of {THRESHOLD_NAMES}"
        raise argparse.ArgumentTypeError(why) from None


class PredictError(RuntimeError):
    """Nothing could be scored; the message (one line) says why and what to do."""


@dataclass
class Row:  # verdict: "defective", "good", "" (no threshold) or "error"
    path: str
    score: float | None = None
    verdict: str = ""
    threshold: float | None = None
    error: str = ""
    overlay: str = ""


@dataclass
class PredictResult:  # the rows, the threshold and where it came from, what was written
    rows: list[Row]
    threshold: float | None
    threshold_note: str
    csv: Path | None = None
    overlays: list[Path] = field(default_factory=list)

    @property
    def scores(self) -> np.ndarray:
        return np.array([np.nan if r.score is None else r.score for r in self.rows], np.float32)

    @property
    def n_scored(self) -> int:
        return sum(r.score is not None for r in self.rows)


def load_model(source: str | Path, **overrides) -> tuple[PatchCore, dict | None]:
    """(model, saved good-only threshold or None) of a run folder or bank file
    (:func:`helpers.run.run.saved_model`); a refusal is a :class:`PredictError`."""
    try:
        return saved_model(source, **overrides)
    except ValueError as exc:
        raise PredictError(str(exc)) from exc


def choose_threshold(saved: dict | None, wanted: str | float | None) -> tuple[float | None, str]:
    """(value, a note saying where it comes from). ``wanted``: None or "good_only" (the saved
    threshold at its false-alarm rate), "max_of_good", or a number."""
    if wanted is not None and not isinstance(wanted, str):
        return float(wanted), "given"
    name = wanted or "good_only"
    if name not in THRESHOLD_NAMES:
        raise PredictError(f"--threshold {name!r}: give a number or one of {THRESHOLD_NAMES}")
    if saved is None:
        return None, "no saved threshold (verdicts left empty; pass --threshold VALUE)"
    on = saved.get("computed_on", saved.get("method", ""))
    if name == "max_of_good":
        return float(saved["max_of_good"]), f"max of good ({on})"
    rate = saved["false_alarm_rate"]
    return float(saved["value"]), f"good-only at a {rate:g} false-alarm rate ({on})"


def list_images(items) -> list[tuple[Path, str]]:
    """(path, name for its overlay) of every image: files as given (one that is not an image gets
    an error row), folders searched recursively for image files; a missing path: PredictError."""
    found: list[tuple[Path, str]] = []
    image = lambda f: f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")
    for item in [items] if isinstance(items, (str, Path)) else items:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if image(f))
            if not files:
                raise PredictError(f"{p} holds no image files ({', '.join(IMAGE_EXTS)})")
            found += [(f, str(Path(p.name) / f.relative_to(p))) for f in files]
        elif p.is_file():
            found.append((p, str(Path(p.parent.name) / p.name)))
        else:
            raise PredictError(f"{p} does not exist")
    if not found:
        raise PredictError("no images given")
    return found


def _overlay_name(name: str, used: set[str]) -> str:
    stem = str(Path(name).with_suffix("")).replace("/", "__").replace("\\", "__")
    out, k = f"{stem}.png", 1
    while out in used:
        out, k = f"{stem}_{k}.png", k + 1
    used.add(out)
    return out


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float | None, text: str) -> np.ndarray:
    """RGB uint8: ``image`` half-covered by its map in JET colours from 0.5 (blue) to 1.5 (red) x
    the threshold (else the map's range), the region above it outlined in white, ``text``."""
    span = (float(amap.min()), float(amap.max()) or 1.0)
    lo, hi = (0.5 * threshold, 1.5 * threshold) if threshold else span
    level = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
    if threshold:
        mask = (amap >= threshold).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, image.shape[0] // 256))
    scale = max(0.4, image.shape[0] / 700)
    for colour, width in (((0, 0, 0), 4), ((255, 255, 255), 1)):  # white on a black edge
        cv2.putText(out, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    width)  # fmt: skip
    return out


def predict(source: str | Path | PatchCore, images, out: str | Path | None = None, *,
            overlays: bool = False, threshold: str | float | None = None, progress: bool = True,
            **overrides) -> PredictResult:  # fmt: skip
    """Score ``images`` (files, folders) with ``source`` (a run folder, a bank file or a fitted
    :class:`PatchCore`); with ``out``, write ``predictions.csv`` (and ``overlays`` in
    ``out/overlays/``) there. ``threshold``: "good_only" (default), "max_of_good" or a number;
    ``overrides``: runtime fields (device, batch_size...). Nothing scored: PredictError."""
    from tqdm.auto import tqdm

    if isinstance(source, PatchCore):
        model, saved = source, source.threshold
    else:
        model, saved = load_model(source, **overrides)
    value, note = choose_threshold(saved, threshold)
    items = list_images(images)
    out = None if out is None else Path(out).expanduser()
    if overlays and out is None:
        raise PredictError("overlays need an output folder (out=...)")
    rows, written, used, step = [], [], set(), model.config.batch_size
    kw = dict(desc="predict", unit="image", file=sys.stderr, disable=not progress)
    bar = tqdm(total=len(items), **kw)
    for start in range(0, len(items), step):
        chunk, arrays, keep = items[start : start + step], [], []
        for path, name in chunk:
            row = Row(str(path), threshold=value)
            rows.append(row)
            try:
                arrays.append(load_image(path))
                keep.append((row, name))
            except Exception as exc:  # unreadable, not an image: its row says so
                cause = exc.__cause__ if isinstance(exc, ImageReadError) else None
                text = f"cannot read image: {cause}" if cause else str(exc)
                row.verdict, row.error = "error", " ".join(text.split())
        if arrays:
            pred = model.predict(arrays, maps=overlays)
            for j, (row, name) in enumerate(keep):
                row.score = float(pred.scores[j])
                if value is not None:
                    row.verdict = "defective" if pred.scores[j] >= value else "good"
                if overlays:
                    target = out / "overlays" / _overlay_name(name, used)
                    text = f"{row.score:.3f} {row.verdict}".strip()
                    pic = overlay(arrays[j], pred.maps[j], value, text)
                    ok, png = cv2.imencode(".png", pic[..., ::-1])
                    if ok:
                        atomic_write_bytes(target, png.tobytes())
                        row.overlay = str(target)
                        written.append(target)
        bar.update(len(chunk))
    bar.close()
    result = PredictResult(rows, value, note, overlays=written)
    if out is not None:
        result.csv = write_csv(out / "predictions.csv", rows)
    if not result.n_scored:
        why = f"{rows[0].path}: {rows[0].error}"
        raise PredictError(f"none of the {len(rows)} image(s) could be scored; {why}")
    return result


def write_csv(path: Path, rows: list[Row]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    text = lambda v: "" if v is None else repr(v)
    w.writerows([r.path, text(r.score), r.verdict, text(r.threshold), r.error] for r in rows)
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (score and threshold as floats, None when empty)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    num = lambda text: float(text) if text else None
    return [{**r, "score": num(r["score"]), "threshold": num(r["threshold"])} for r in rows]


def main(argv: list[str] | None = None, prog: str = "python -m helpers predict") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Score new images with a saved model.")
    add = ap.add_argument
    add("source", help="run folder (python -m helpers run --out ...) or bank file")
    add("images", nargs="+", help="image files and folders (searched recursively)")
    add("--out", required=True, help="folder for predictions.csv (and overlays/)")
    add("--overlays", action="store_true", help="also write each image with its anomaly map")
    add("--threshold", type=threshold_arg, help="good_only (default), max_of_good, or a number")
    add("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="runtime setting (device, batch_size...); artifact settings must match")  # fmt: skip
    add("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    overrides = {name: parse_value(value) for name, value in args.param}
    kw = dict(overlays=args.overlays, threshold=args.threshold, progress=not args.quiet)
    try:
        result = predict(args.source, args.images, args.out, **kw, **overrides)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verdicts = [r.verdict for r in result.rows]
    errors = verdicts.count("error")
    value = "none" if result.threshold is None else f"{result.threshold:.6g}"
    unreadable = f", {errors} unreadable (see the error column)" if errors else ""
    pics = f" and {len(result.overlays)} overlays in {Path(args.out) / 'overlays'}"
    pics = pics if args.overlays else ""
    print(f"scored {result.n_scored} image(s): {verdicts.count('defective')} defective, "
          f"{verdicts.count('good')} good{unreadable}\nthreshold: {value} - "
          f"{result.threshold_note}\nwrote {result.csv}{pics}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
