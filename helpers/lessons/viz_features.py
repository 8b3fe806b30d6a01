"""Figures of notebooks 02 and 03: patch features (PCA colours, the rotation test), the random
projection, the coreset (coverage radius, scatter) and the memory-bank size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from helpers.lessons.viz_data import axes_off, new_figure


def pca_rgb(fit_features, embeddings, seed: int = 0) -> list[np.ndarray]:
    """Patch embeddings [n, h, w, D] as RGB in [0, 1]: 3 principal components fitted on
    ``fit_features`` [N, D], scaled by the fitted features' 1st-99th percentiles."""
    from sklearn.decomposition import PCA

    fit = np.asarray(fit_features, dtype=np.float32)
    pca = PCA(n_components=3, random_state=seed).fit(fit)
    ref = pca.transform(fit)
    lo, hi = np.percentile(ref, 1, axis=0), np.percentile(ref, 99, axis=0)
    emb = np.asarray(embeddings, dtype=np.float32)
    out = pca.transform(emb.reshape(-1, emb.shape[-1])).reshape(*emb.shape[:-1], 3)
    return list(np.clip((out - lo) / np.maximum(hi - lo, 1e-8), 0, 1))


def pca_figure(crops: Sequence[np.ndarray], rgb: Sequence[np.ndarray], titles) -> Figure:
    """Network-input crops (top) and their patch features as PCA colours (bottom)."""
    fig = new_figure(max(8.0, 2.3 * len(crops)), 5.0)
    axes = fig.subplots(2, len(crops), squeeze=False)
    for top, below, crop, colours, title in zip(*axes, crops, rgb, titles):
        top.imshow(crop)
        top.set_title(title, fontsize=9)
        below.imshow(colours, interpolation="nearest")
        below.set_title(f"features {colours.shape[0]}x{colours.shape[1]}", fontsize=8)
        axes_off(top, below)
    axes[0][0].set_ylabel("input crop")
    axes[1][0].set_ylabel("3 principal\ncomponents as RGB")
    title = "Patch features as colours: similar colour, similar feature\n(3 principal "
    fig.suptitle(title + "components fitted on the good training patches)", fontsize=11)
    return fig


class TurnedView(NamedTuple):
    """One image and the same image turned by 90 degrees, embedded (:func:`turned_view`)."""

    crop: np.ndarray  # the network input (RGB uint8)
    crop_turned: np.ndarray  # the turned image's network input
    features: np.ndarray  # [h, w, D] patch embeddings of the image
    features_back: np.ndarray  # [h, w, D] of the turned image, turned back onto the image's grid
    cosine: np.ndarray  # [h, w] cosine similarity of the two at each spot


def turned_view(model, image: np.ndarray, quarter_turns: int = 1) -> TurnedView:
    """Embed ``image`` and the image turned by ``quarter_turns`` x 90 degrees (counter-clockwise,
    an exact pixel permutation), turn the second grid back and compare them spot by spot (a
    rotation-invariant feature: cosine similarity 1 everywhere)."""
    turned = np.ascontiguousarray(np.rot90(image, quarter_turns))
    grids = [b.embeddings.cpu().numpy() for b in model.embed_images([image, turned])]
    emb = np.concatenate(grids).astype(np.float32)
    a, back = emb[0], np.rot90(emb[1], -quarter_turns, axes=(0, 1))
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(back, axis=-1)
    cosine = (a * back).sum(-1) / np.maximum(norms, 1e-12)
    crops = [model.preprocess.crop_rgb(im)[0] for im in (image, turned)]
    return TurnedView(crops[0], crops[1], a, np.ascontiguousarray(back), cosine)


def rotation_figure(view: TurnedView, rgb: Sequence[np.ndarray], degrees: int = 90) -> Figure:
    """The rotation test: the image, the image turned, the PCA colours of both feature grids
    (``rgb``: [image, turned-and-turned-back], one basis) and their cosine similarity."""
    fig = new_figure(14, 3.6)
    axes = fig.subplots(1, 5, width_ratios=[1, 1, 1, 1, 1.2])
    panels = (
        (view.crop, "input crop", None),
        (view.crop_turned, f"the same image turned {degrees} degrees", None),
        (rgb[0], "features of the image", "nearest"),
        (rgb[1], f"features of the turned image,\nturned back {degrees} degrees", "nearest"),
    )
    for ax, (img, title, interpolation) in zip(axes, panels):
        ax.imshow(img, interpolation=interpolation)
        ax.set_title(title, fontsize=9)
    low = min(0.0, float(view.cosine.min()))  # 0 unless some spots point in opposite directions
    im = axes[4].imshow(view.cosine, cmap="viridis", vmin=low, vmax=1)
    median = f"median {np.median(view.cosine):.2f}"
    axes[4].set_title(f"cosine similarity at each spot\n({median}; invariant: 1)", fontsize=9)
    fig.colorbar(im, ax=axes[4], fraction=0.046, label="cosine similarity")
    axes_off(*axes)
    title = "Are patch features rotation-invariant? Same part, same spots, image turned "
    fig.suptitle(title + f"{degrees} degrees (PCA colours: one basis)", fontsize=11)
    return fig


def bank_megabytes(n_patches: int, dim: int, ratio: float) -> float:
    return max(1, int(n_patches * ratio)) * dim * 4 / 2**20


def _finish(axes, chosen, label: str, corners: Sequence[str]) -> None:
    """The chosen value as a dotted line, a grid and a legend on each of ``axes``."""
    for ax, corner in zip(axes, corners):
        if chosen:
            ax.axvline(chosen, color="gray", linestyle=":", label=label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc=corner)


def coverage_figure(cov: dict, dim: int, *, full_patches: int | None = None,
                    chosen: float | None = None, run_patches: int | None = None,
                    run_label: str | None = None, full_label: str | None = None,
                    max_rows: int = 0) -> Figure:  # fmt: skip
    """Notebook 03: coverage radius vs coreset ratio (greedy vs random, on the ``cov`` sample)
    and bank size vs ratio for ``run_patches`` (and the full set's ``full_patches``) patches;
    ``*_label``: those lines' legends; ``max_rows``: the bank's cap (0: none)."""
    r = np.asarray(cov["ratios"])
    fig = new_figure(11, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(r, cov["greedy_radius"], "o-", label="greedy coreset")
    ax1.plot(r, cov["random_radius"], "s--", label="random subset")
    ax1.set_xlabel("coreset ratio (fraction of training patches kept)")
    ax1.set_ylabel("coverage radius (max distance\nto nearest kept patch)")
    ax1.set_title(f"Coverage of {cov['n_patches']} training patches")
    run_patches = run_patches or cov["n_patches"]
    cap = bank_megabytes(max_rows, dim, 1.0) if max_rows else np.inf  # the bank never grows past it
    megabytes = lambda patches: [min(bank_megabytes(patches, dim, x), cap) for x in r]
    run_label = run_label or f"this run's training set ({run_patches} patches)"
    ax2.plot(r, megabytes(run_patches), "o-", label=run_label)
    if full_patches:
        full = full_label or f"full metal_nut train set ({full_patches} patches)"
        ax2.plot(r, megabytes(full_patches), "s--", label=full)
    if max_rows:
        label = f"cap: coreset_max_size = {max_rows} rows"
        ax2.axhline(cap, color="black", linestyle="-.", label=label)
    ax1.set_xscale("log")
    ax2.set(xscale="log", yscale="log", xlabel="coreset ratio", title="Memory-bank size")
    ax2.set_ylabel(f"memory bank size (MB, float32, D={dim})")
    # the radius falls to the right, the bank grows to the right: legends in the empty corners
    label = f"chosen ratio {chosen:g}" if chosen else ""
    _finish((ax1, ax2), chosen, label, ("upper right", "lower right"))
    return fig


def coreset_scatter(features, picked, n_show: int = 4000, seed: int = 0) -> Figure:
    """Training patches in 2-D (first two principal components): the greedy coreset vs a random
    subset of the same size (the greedy picks spread to the rare, outlying patches)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = np.asarray(picked)
    rand = rng.choice(len(x), size=len(picked), replace=False)
    show = rng.choice(len(x), size=min(n_show, len(x)), replace=False)
    xy = PCA(n_components=2, random_state=seed).fit(x).transform(x)
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, idx, name in ((axes[0], picked, "greedy coreset"), (axes[1], rand, "random subset")):
        ax.scatter(xy[show, 0], xy[show, 1], s=3, c="lightgray", label="training patches")
        ax.scatter(xy[idx, 0], xy[idx, 1], s=9, c="tab:red", label=f"{name} ({len(idx)})")
        ax.set(xlabel="principal component 1", ylabel="principal component 2", title=name)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Which patches are kept? (2-D PCA view of the patch features)")
    return fig


def projection_figure(features, projected, n_pairs: int = 3000, seed: int = 0) -> Figure:
    """Pairwise distances before vs after the random projection (Johnson-Lindenstrauss: kept up
    to a small relative error, so farthest-point selection can use the cheap copy)."""
    x = np.asarray(features, dtype=np.float32)
    p = np.asarray(projected, dtype=np.float32)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), n_pairs), rng.integers(0, len(x), n_pairs)
    keep = i != j
    d = np.linalg.norm(x[i[keep]] - x[j[keep]], axis=1)
    dp = np.linalg.norm(p[i[keep]] - p[j[keep]], axis=1)
    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.scatter(d, dp, s=4, alpha=0.4)
    top = float(max(d.max(), dp.max())) if len(d) else 1.0
    ax.plot([0, top], [0, top], "k--", lw=1, label="equal distance")
    ratio = dp / np.maximum(d, 1e-12)
    spread = f"5-95% {np.percentile(ratio, 5):.2f}-{np.percentile(ratio, 95):.2f}"
    title = f"Random projection {x.shape[1]} -> {p.shape[1]} dims\n"
    title += f"projected / original distance: median {np.median(ratio):.2f}, {spread}"
    ax.set_title(title, fontsize=9)
    ax.set(xlabel=f"distance between two patches ({x.shape[1]}-D)")
    ax.set(ylabel=f"distance after projection ({p.shape[1]}-D)")
    ax.legend(fontsize=8)
    return fig


def bank_size_figure(rows: Sequence[dict], chosen_rows: int | None = None) -> Figure:
    """Notebook 03's bank-size sweep: image and pixel AUROC and the ms per test image against the
    bank rows (``rows``: dicts with ``rows``, ``image_auroc``, ``pixel_auroc`` (None: not
    computed), ``ms_per_image``); ``chosen_rows``: this run's bank, marked."""
    n = np.array([r["rows"] for r in rows])
    fig = new_figure(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for key, style in (("image_auroc", "o-"), ("pixel_auroc", "s--")):
        values = [np.nan if r[key] is None else r[key] for r in rows]
        if any(r[key] is not None for r in rows):
            ax1.plot(n, values, style, label=key.replace("_auroc", " AUROC"))
    ax1.set(ylabel="AUROC on this run's test set", title="Accuracy vs memory-bank size")
    ax2.plot(n, [r["ms_per_image"] for r in rows], "o-", color="tab:green")
    ax2.set(yscale="log", ylabel="ms per test image (kNN + eq. 7)")
    ax2.set_title("Scoring time vs memory-bank size")
    every = "; rightmost: every training patch" if rows[-1].get("bank") == "every patch" else ""
    for ax in (ax1, ax2):
        ax.set(xscale="log", xlabel="memory-bank rows (log scale)" + every)
    label = f"this run's bank ({chosen_rows} rows)"
    _finish((ax1, ax2), chosen_rows, label, ("lower right", "lower right"))
    return fig
