"""Score new images with a saved model: ``python -m helpers predict SOURCE IMAGES... --out OUT``.

SOURCE is a run folder (its ``run.json`` names the config; the bank and the good-only threshold
are in ``artifacts/``) or a bank file (``PatchCore.save``; the threshold from its header or the
``.threshold.json`` beside it). IMAGES are image files and folders (searched recursively).
OUT gets ``predictions.csv`` (path, score, verdict at the threshold, threshold, error) and,
with ``--overlays``, each image with its anomaly map over it, in the image's own pixels.

An image that cannot be read gets a row with its error; nothing stops. A missing SOURCE or
IMAGES, a bank built with other settings, or no image scored at all: one line, exit status 1.

From Python, the same in one call::

    from helpers.tools.predict import predict
    result = predict("runs/x", ["new_parts/"], out="runs/x/new")   # result.rows, result.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from helpers.core.bank import BankMismatchError, bank_digest
from helpers.core.config import Config, ConfigError
from helpers.core.images import ImageReadError, load_image
from helpers.core.model import PatchCore
from helpers.core.runtime import atomic_write_bytes, atomic_write_text
from helpers.data.mvtec import IMAGE_EXTS
from helpers.run.cache import ArtifactCache
from helpers.run.parameters import config_from_params, parse_value
from helpers.run.stages import Stages, threshold_path

COLUMNS = ("path", "score", "verdict", "threshold", "error")
THRESHOLD_NAMES = ("good_only", "max_of_good")


def threshold_arg(text: str | None) -> str | float | None | bool:
    """``--threshold`` of predict and export: None, a saved threshold's name or a number; False
    (after one error line) for anything else."""
    if text is None or text in THRESHOLD_NAMES:
        return text
    try:
        return float(text)
    except ValueError:
        print(f"error: --threshold {text!r}: a number or one of {THRESHOLD_NAMES}")
        return False


class PredictError(RuntimeError):
    """Nothing could be scored; the message (one line) says why and what to do."""


@dataclass
class Row:
    path: str
    score: float | None = None
    verdict: str = ""  # "defective", "good", "" (no threshold) or "error"
    threshold: float | None = None
    error: str = ""
    overlay: str = ""


@dataclass
class PredictResult:
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


# --------------------------------------------------------------------------- the model
def _run_bank(run_dir: Path, overrides: dict) -> tuple[Path, Config]:
    state = json.loads((run_dir / "run.json").read_text())
    try:
        cfg = config_from_params({**state.get("parameters", {}), **overrides})
    except (ConfigError, TypeError) as exc:
        raise PredictError(
            f"{run_dir}/run.json: its parameters give no valid config ({exc})"
        ) from exc
    bank = Stages(ArtifactCache(run_dir / "artifacts", run_dir), None, cfg).path("bank")
    if not bank.is_file():
        raise PredictError(
            f"{run_dir} has no memory bank for its config ({bank.name} is missing): finish the "
            "run first (python -m helpers run ... --resume)"
        )
    return bank, cfg


def load_model(source: str | Path, **overrides) -> tuple[PatchCore, dict | None]:
    """(model, saved good-only threshold or None) from a run folder or a bank file. Runtime
    ``overrides`` (device, batch_size, ...) are allowed; an artifact setting that differs from
    the bank's is refused (:class:`PredictError` listing the differences)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise PredictError(f"{source} does not exist: give a run folder or a bank file")
    try:
        if source.is_dir():
            if not (source / "run.json").is_file():
                raise PredictError(
                    f"{source} is not a run folder (no run.json); give a run folder made by "
                    "python -m helpers run, or a .safetensors bank file"
                )
            bank, cfg = _run_bank(source, overrides)
            model = PatchCore.load(bank, cfg)
        else:
            bank = source
            model = PatchCore.load(bank, **overrides)
            if overrides:  # an artifact override must match the bank, as for a run folder
                PatchCore.load(bank, model.config)
    except BankMismatchError as exc:
        raise PredictError(" ".join(str(exc).split())) from exc
    except ConfigError as exc:
        raise PredictError(f"invalid setting: {exc}") from exc
    except ValueError as exc:  # not a safetensors file, truncated
        raise PredictError(str(exc).splitlines()[0]) from exc
    threshold = model.threshold
    side = threshold_path(bank)
    if side.is_file():  # the run's threshold, or one written beside a bank file
        threshold = json.loads(side.read_text())
    if threshold is not None:
        digest = bank_digest(model.memory_bank)
        if threshold.get("bank_sha256") not in (None, digest):
            raise PredictError(
                f"the saved threshold ({side if side.is_file() else bank}) was computed for "
                "another memory bank; recompute it (run the main job again, or "
                "PatchCore.calibrate) or pass --threshold VALUE"
            )
    return model, threshold


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
    return float(saved["value"]), (
        f"good-only at a {saved['false_alarm_rate']:g} false-alarm rate ({on})"
    )


# --------------------------------------------------------------------------- the images
def list_images(items) -> list[tuple[Path, str]]:
    """(path, name for its overlay) of every image: files as given (any extension: a file that
    is not an image gets an error row), folders searched recursively for image files. Raises
    :class:`PredictError` for a missing path or when no image is found."""
    if isinstance(items, (str, Path)):
        items = [items]
    found: list[tuple[Path, str]] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")
            )
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
    """RGB uint8: ``image`` half-covered by its anomaly map in the JET colours, from half the
    threshold (blue) to 1.5 x the threshold (red; without a threshold: the map's own range),
    the region at or above the threshold outlined in white, ``text`` at the top left."""
    lo, hi = (
        (0.5 * threshold, 1.5 * threshold)
        if threshold
        else (float(amap.min()), float(amap.max()) or 1.0)
    )
    level = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
    if threshold:
        mask = (amap >= threshold).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, image.shape[0] // 256))
    scale = max(0.4, image.shape[0] / 700)
    cv2.putText(out, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4)
    cv2.putText(
        out, text, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1
    )
    return out


# --------------------------------------------------------------------------- predict
def predict(
    source: str | Path | PatchCore,
    images,
    out: str | Path | None = None,
    *,
    overlays: bool = False,
    threshold: str | float | None = None,
    progress: bool = True,
    **overrides,
) -> PredictResult:
    """Score ``images`` (files, folders) with the model in ``source`` (a run folder, a bank
    file or a fitted :class:`PatchCore`); with ``out``, write ``predictions.csv`` there (and
    with ``overlays`` the overlays in ``out/overlays/``). ``threshold``: "good_only" (default),
    "max_of_good" or a number. ``overrides``: runtime fields (device, batch_size, ...). Raises
    :class:`PredictError` when nothing could be scored."""
    if isinstance(source, PatchCore):
        model, saved = source, source.threshold
    else:
        model, saved = load_model(source, **overrides)
    value, note = choose_threshold(saved, threshold)
    items = list_images(images)
    out = None if out is None else Path(out).expanduser()
    if overlays and out is None:
        raise PredictError("overlays need an output folder (out=...)")
    rows, written, used = [], [], set()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="predict", unit="image", file=sys.stderr)
    step = model.config.batch_size
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
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    result = PredictResult(rows, value, note, overlays=written)
    if out is not None:
        result.csv = write_csv(out / "predictions.csv", rows)
    if not result.n_scored:
        first = rows[0].error
        raise PredictError(
            f"none of the {len(rows)} image(s) could be scored; {rows[0].path}: {first}"
        )
    return result


def write_csv(path: Path, rows: list[Row]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        score = "" if r.score is None else repr(r.score)
        thr = "" if r.threshold is None else repr(r.threshold)
        w.writerow([r.path, score, r.verdict, thr, r.error])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a ``predictions.csv`` (score and threshold as floats, None when empty)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("score", "threshold"):
            r[k] = float(r[k]) if r[k] else None
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m helpers predict") -> int:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Score new images with a saved model (a run folder or a bank file).",
    )
    ap.add_argument("source", help="run folder (python -m helpers run --out ...) or bank file")
    ap.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    ap.add_argument("--out", required=True, help="folder for predictions.csv (and overlays/)")
    ap.add_argument(
        "--overlays", action="store_true", help="also write each image with its anomaly map"
    )
    ap.add_argument(
        "--threshold",
        default=None,
        help="good_only (default: the saved good-only threshold), max_of_good, or a number",
    )
    ap.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="runtime setting (device, batch_size, ...); artifact settings must match the bank",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    wanted = threshold_arg(args.threshold)
    if wanted is False:
        return 2
    overrides = {name: parse_value(value) for name, value in args.param}
    try:
        result = predict(
            args.source,
            args.images,
            args.out,
            overlays=args.overlays,
            threshold=wanted,
            progress=not args.quiet,
            **overrides,
        )
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verdicts = [r.verdict for r in result.rows]
    errors = verdicts.count("error")
    print(
        f"scored {result.n_scored} image(s): {verdicts.count('defective')} defective, "
        f"{verdicts.count('good')} good"
        + (f", {errors} unreadable (see the error column)" if errors else "")
        + f"\nthreshold: {'none' if result.threshold is None else f'{result.threshold:.6g}'}"
        f" - {result.threshold_note}\nwrote {result.csv}"
        + (
            f" and {len(result.overlays)} overlays in {Path(args.out) / 'overlays'}"
            if args.overlays
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
