"""Export a saved model to ONNX: ``python -m helpers export SOURCE --out model.onnx --like IMAGE``.

SOURCE is a run folder or a bank file, as for ``predict``. The ONNX file takes RGB uint8 images
of one size (``--size H W``, or that of ``--like IMAGE``) and returns the score, the anomaly map
in those pixels and, with a saved threshold, the verdict (:mod:`helpers.core.export`). Run it
with onnxruntime alone::

    import numpy as np, onnxruntime as ort
    from PIL import Image
    sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    image = np.asarray(Image.open("part.png").convert("RGB"))[None]
    score, amap, defective = sess.run(None, {"image": image})
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers.core.images import load_image
from helpers.tools.predict import (
    PredictError,
    choose_threshold,
    load_model,
    threshold_arg,
)


def export(
    source,
    out: str | Path,
    size: tuple[int, int] | None = None,
    like: str | Path | None = None,
    threshold: str | float | None = None,
    **overrides,
) -> Path:
    """Export ``source`` (run folder or bank file) for images of ``size`` (H, W) or the size of
    the image ``like``; ``threshold`` as for :func:`helpers.tools.predict.predict`."""
    from helpers.core.export import export_onnx

    if size is None:
        if like is None:
            raise PredictError("give the image size: --size H W, or --like IMAGE")
        size = load_image(like).shape[:2]
    model, saved = load_model(source, **overrides)
    value, note = choose_threshold(saved, threshold)
    chosen = None if value is None else {**(saved or {}), "value": value, "chosen": note}
    chosen = {k: v for k, v in (chosen or {}).items() if k != "held_out_scores"} or None
    try:
        return export_onnx(model, out, int(size[0]), int(size[1]), chosen)
    except NotImplementedError as exc:
        raise PredictError(str(exc)) from exc


def main(argv: list[str] | None = None, prog: str = "python -m helpers export") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="run folder or bank file")
    ap.add_argument("--out", required=True, help="the .onnx file to write")
    ap.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="input image size")
    ap.add_argument("--like", help="an image whose size the exported model takes")
    ap.add_argument(
        "--threshold", default=None, help="good_only (default), max_of_good, or a number"
    )
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "V"))
    args = ap.parse_args(argv)
    wanted = threshold_arg(args.threshold)
    if wanted is False:
        return 2
    from helpers.run.parameters import parse_value

    overrides = {k: parse_value(v) for k, v in args.param}
    try:
        path = export(args.source, args.out, args.size, args.like, wanted, **overrides)
    except ImportError as exc:
        print(f"error: {exc}; pip install onnx onnxruntime", file=sys.stderr)
        return 1
    except (PredictError, OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
