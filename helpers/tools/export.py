"""Export a saved model (a run folder or bank file) to ONNX: ``python -m helpers export SOURCE
--out model.onnx --like IMAGE``. The file holds the whole scoring path, each step computed as
:class:`~helpers.core.model.PatchCore` does (OpenCV's resize as matrices, the backbone, the
patch pooling as fixed matrices, the nearest row of M, eq. 7, the map in the image's pixels, the
verdict at the saved threshold), and runs with onnxruntime and numpy alone::

    sess = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    image = np.asarray(PIL.Image.open("part.png").convert("RGB"))[None]  # uint8 [1, H, W, 3]
    score, amap, defective = sess.run(None, {"image": image})
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.core.images import IMAGENET_MEAN, IMAGENET_STD, Geometry, load_image
from helpers.core.knn import finish, prepare
from helpers.core.maps import patch_scores_to_maps
from helpers.run.parameters import parse_value
from helpers.tools.predict import PredictError, choose_threshold, load_model, threshold_arg

OPSET = 17


def _resize_operator(n_in: int, n_out: int, interpolation: int) -> np.ndarray:
    """[n_out, n_in]: OpenCV's resize along one axis as a matrix (from resizing the identity)."""
    eye = np.eye(n_in, dtype=np.float32)
    return cv2.resize(eye, (n_in, n_out), interpolation=interpolation)  # rows resized, cols kept


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_in, n_out]: ``F.adaptive_avg_pool1d`` from n_in to n_out values as a matrix."""
    eye = torch.eye(n_in).unsqueeze(1)  # [n_in, 1, n_in]: each basis vector
    return F.adaptive_avg_pool1d(eye, n_out)[:, 0, :]


class ScoringGraph(nn.Module):
    """``forward(image uint8 [N, H, W, 3]) -> (score [N], map [N, H, W][, defective [N]])``
    for a fitted :class:`~helpers.core.model.PatchCore` and one image size (H, W)."""

    def __init__(self, model, height: int, width: int, threshold: float | None = None):
        super().__init__()
        c = model.config
        if c.clahe:
            raise NotImplementedError(
                "clahe=True cannot be exported (a histogram operation): apply CLAHE to the images "
                "before the ONNX model, or export a model fitted without it"
            )
        if model.bank is None:
            raise RuntimeError("export needs a fitted model (fit or load first)")
        g = Geometry.for_shape(height, width, c.resize, c.input_size)
        self.geometry, self.threshold = g, threshold
        interp = cv2.INTER_AREA if g.res_h < g.orig_h else cv2.INTER_LINEAR
        same = (g.res_h, g.res_w) == (g.orig_h, g.orig_w)
        resize = lambda n_in, n_out, how: torch.from_numpy(_resize_operator(n_in, n_out, how))
        buffers = dict(
            rows_in=resize(height, g.res_h, interp), cols_in=resize(width, g.res_w, interp),
            mean=torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1),
            std=torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1),
            rows_out=None if same else resize(g.res_h, height, cv2.INTER_LINEAR),  # map back
            cols_out=None if same else resize(g.res_w, width, cv2.INTER_LINEAR),
        )  # fmt: skip
        for name, value in buffers.items():
            self.register_buffer(name, value)
        ext = model.extractor.cpu().float()
        self.body, self.layers, self.patch = ext.body, list(ext.layers), ext.patch_size
        with torch.no_grad():
            taps = ext.body(torch.zeros(1, 3, c.input_size, c.input_size))
        channels = [taps[name].shape[1] for name in self.layers]
        dims = [ext.pretrain_embed_dim or ch for ch in channels]
        self.pools = nn.ModuleList([self._local_pool(ch, dim) for ch, dim in zip(channels, dims)])
        total, target = sum(dims), ext.target_embed_dim or sum(dims)
        self.register_buffer("target", _pool_matrix(total, target) if target != total else None)
        scale = None if model.tap_weights is None else model.tap_scale().cpu()
        self.register_buffer("tap_scale", scale)  # balance_taps, as PatchCore.embed
        bank, feats = model.bank, model.bank.features.detach().float().cpu()
        self.distance, self.norm_floor = bank.distance, bank.norm_floor
        self.register_buffer("bank", feats)
        self.register_buffer("bank_prep", prepare(feats, bank.distance, bank.norm_floor))
        self.register_buffer("bank_sqn", (self.bank_prep**2).sum(1))
        self.k = k = min(c.num_neighbors, len(bank))
        if k > 1:  # N_b(m) of every bank row m, as PatchCore.score_embeddings finds it
            _, nb = bank.nearest(bank.features, k)
            self.register_buffer("neighbours", nb.cpu())
        self.sigma, self.size = float(c.sigma), c.input_size
        # the map back to the original pixels: pasted into the resized frame, then resized
        outside = torch.ones(g.res_h, g.res_w)
        outside[g.top : g.top + g.crop, g.left : g.left + g.crop] = 0
        self.register_buffer("outside", outside)

    def _local_pool(self, channels: int, dim: int) -> nn.Module:
        """The 3x3 neighbourhood's C*9 values (channel-major) pooled to ``dim``: a fixed conv."""
        p = self.patch
        conv = nn.Conv2d(channels, dim, p, padding=(p - 1) // 2, bias=False).requires_grad_(False)
        weights = _pool_matrix(channels * p * p, dim)  # [C*p*p, dim]
        conv.weight.data = weights.T.reshape(dim, channels, p, p).contiguous()
        return conv

    # ------------------------------------------------------------------ the steps
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised crops [N, 3, S, S] (as helpers.core.images)."""
        g = self.geometry
        x = image.permute(0, 3, 1, 2).float()
        x = torch.matmul(torch.matmul(self.rows_in, x), self.cols_in.T)
        x = torch.round(x).clamp(0, 255)  # uint8, as OpenCV stores the resized image
        x = x[:, :, g.top : g.top + g.crop, g.left : g.left + g.crop]
        return (x / 255.0 - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised crops -> patch embeddings [N, h, w, D] (as helpers.core.backbones)."""
        taps = self.body(x)
        maps = [taps[name].float() for name in self.layers]
        h, w = maps[0].shape[-2:]
        pooled = [pool(fmap) for fmap, pool in zip(maps, self.pools)]
        size = dict(size=(h, w), mode="bilinear", align_corners=False)
        pooled = [e if e.shape[-2:] == (h, w) else F.interpolate(e, **size) for e in pooled]
        emb = torch.cat(pooled, dim=1).permute(0, 2, 3, 1)
        if self.target is not None:
            emb = torch.matmul(emb, self.target)
        return emb if self.tap_scale is None else emb * self.tap_scale

    def score(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [N, h, w, D] -> (s [N], patch-score grid [N, h, w]) (as PatchCore)."""
        n, h, w, d = emb.shape
        patches = emb.reshape(n, h * w, d)
        q = prepare(patches, self.distance, self.norm_floor)
        # |b|^2 - 2 q.b + |q|^2 in the order of helpers.core.knn (addmm, then + |q|^2)
        d2 = (self.bank_sqn - 2 * torch.matmul(q, self.bank_prep.T)) + (q * q).sum(-1, keepdim=True)
        d2min, nn_idx = d2.min(dim=2)
        dist = finish(d2min, self.distance)
        s_star, pos = dist.max(dim=1)
        m_test = torch.gather(patches, 1, pos.view(n, 1, 1).expand(n, 1, d))  # [N, 1, D]
        m_star = torch.gather(nn_idx, 1, pos.view(n, 1)).view(n)
        if self.k == 1:
            return s_star, dist.view(n, h, w)
        n_b = torch.cat([m_star.view(n, 1), self.neighbours[m_star][:, 1:]], dim=1)  # [N, k]
        m_prep = prepare(m_test, self.distance, self.norm_floor)
        b_prep = prepare(self.bank[n_b], self.distance, self.norm_floor)
        d_n = finish(((m_prep - b_prep) ** 2).sum(-1), self.distance)  # [N, k]
        weight = 1 - torch.softmax(d_n.double(), dim=1)[:, 0].float()
        return weight * s_star, dist.view(n, h, w)

    def to_original(self, grid: torch.Tensor) -> torch.Tensor:
        """Patch-score grids [N, h, w] -> maps [N, H, W] in the original pixels."""
        g = self.geometry
        amap = patch_scores_to_maps(grid, self.size, self.sigma)  # [N, S, S]
        low = amap.amin(dim=(1, 2)).view(-1, 1, 1)
        pad = (g.left, g.res_w - g.left - g.crop, g.top, g.res_h - g.top - g.crop)
        canvas = F.pad(amap, pad) + self.outside * low  # the crop, the rest at the map's minimum
        if self.rows_out is None:
            return canvas
        return torch.matmul(torch.matmul(self.rows_out, canvas), self.cols_out.T)

    def forward(self, image: torch.Tensor):
        s, grid = self.score(self.embed(self.preprocess(image)))
        amap = self.to_original(grid)
        return (s, amap) if self.threshold is None else (s, amap, s >= self.threshold)


def export_onnx(model, path: str | Path, height: int, width: int, threshold: dict | None = None,
                metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``model``'s scoring path for RGB uint8 images of ``height`` x ``width`` to ``path``
    (ONNX, opset 17). ``threshold``: a good-only threshold dict (``value`` is compared) or None.
    Returns the path. Needs the ``onnx`` package (``pip install onnx``; see requirements)."""
    import onnx

    value = None if threshold is None else float(threshold["value"])
    graph = ScoringGraph(model, height, width, value).eval()
    path, example = Path(path), torch.zeros(1, height, width, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = ["score", "map"] + ([] if value is None else ["defective"])
    tmp = path.with_name(f".{path.name}.tmp")
    kwargs = dict(opset_version=OPSET, input_names=["image"], output_names=outputs,
                  dynamic_axes={name: {0: "n"} for name in ["image", *outputs]})  # fmt: skip
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant folding
        try:  # the TorchScript exporter (torch >= 2.5 defaults to the dynamo one)
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, **kwargs)
        except TypeError:  # torch < 2.5: no dynamo argument, TorchScript is the only exporter
            torch.onnx.export(graph, (example,), str(tmp), **kwargs)
    proto = onnx.load(str(tmp))
    meta = dict(config=json.dumps(model.config.to_dict(), sort_keys=True),
                config_hash=model.config.hash(),
                threshold=json.dumps(threshold, sort_keys=True) if threshold else "",
                input=f"RGB uint8 [N, {height}, {width}, 3]",
                rule="defective when score >= threshold", bank_rows=str(len(model.bank)),
                **(metadata or {}))  # fmt: skip
    for key, text in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def export(source, out: str | Path, size: tuple[int, int] | None = None,
           like: str | Path | None = None, threshold: str | float | None = None,
           **overrides) -> Path:  # fmt: skip
    """Export ``source`` (run folder or bank file) for images of ``size`` (H, W) or the size of
    the image ``like``; ``threshold`` as for :func:`helpers.tools.predict.predict`."""
    if size is None and like is None:
        raise PredictError("give the image size: --size H W, or --like IMAGE")
    size = size or load_image(like).shape[:2]
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
    add = ap.add_argument
    add("source", help="run folder or bank file")
    add("--out", required=True, help="the .onnx file to write")
    add("--size", nargs=2, type=int, metavar=("H", "W"), help="input image size")
    add("--like", help="an image whose size the exported model takes")
    add("--threshold", type=threshold_arg, help="good_only (default), max_of_good, or a number")
    add("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "V"))
    args = ap.parse_args(argv)
    overrides = {k: parse_value(v) for k, v in args.param}
    try:
        path = export(args.source, args.out, args.size, args.like, args.threshold, **overrides)
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
