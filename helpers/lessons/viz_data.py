"""Figures and tables of notebook 01: the dataset (counts, samples, image statistics); CLAHE in
``viz_clahe``."""

from __future__ import annotations

from collections import Counter

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from helpers.lessons.viz_base import Table, axes_off, mask_outline, new_figure


def examples(samples, per_defect: int = 1) -> list:
    """The first ``per_defect`` samples of each defect type, in the samples' order."""
    seen: Counter = Counter()
    out = []
    for s in samples:
        if seen[s.defect] < per_defect:
            out.append(s)
            seen[s.defect] += 1
    return out


def counts_table(train, test) -> Table:
    """Images per split and defect type, with how many have a ground-truth mask."""
    rows = [("train", "good", sum(1 for _ in train), 0)]
    by_defect = Counter(s.defect for s in test)
    masks = Counter(s.defect for s in test if s.mask_path is not None)
    rows += [("test", d, n, masks.get(d, 0)) for d, n in by_defect.items()]
    rows.append(("total", "", len(train) + len(test), sum(masks.values())))
    headers = ["split", "defect type", "images", "with mask"]
    return Table(rows, headers, "Images per split and defect type")


def counts_figure(train, test) -> Figure:
    by_defect = Counter(s.defect for s in test)
    names = ["train/good"] + [f"test/{d}" for d in by_defect]
    values = [len(train)] + list(by_defect.values())
    colours = ["tab:blue"] + ["tab:green" if d == "good" else "tab:red" for d in by_defect]
    fig = new_figure(max(6, 1.1 * len(names)), 3.6)
    ax = fig.add_subplot()
    bars = ax.bar(names, values, color=colours)
    ax.bar_label(bars)
    ax.set_ylabel("number of images")
    ax.set_xlabel("split / defect type")
    ax.set_title("Images per split and defect type")
    ax.tick_params(axis="x", rotation=30)
    kinds = (
        ("tab:blue", "training (good only)"),
        ("tab:green", "test, good"),
        ("tab:red", "test, defective"),
    )
    ax.legend(handles=[Patch(color=c, label=text) for c, text in kinds], fontsize=8)
    ax.margins(y=0.12)
    return fig


def sample_grid(samples, per_defect: int = 2) -> Figure:
    """Examples of each defect type (columns): each image as it is, and below it the same image
    with its ground-truth mask tinted red and outlined green (the tint hides what it covers, so
    the defect is seen in the plain copy)."""
    from helpers.core.images import load_image
    from helpers.data.mvtec import load_mask

    groups: dict[str, list] = {}
    for s in samples:
        groups.setdefault(s.defect, [])
        if len(groups[s.defect]) < per_defect:
            groups[s.defect].append(s)
    cols = list(groups)
    fig = new_figure(2.3 * len(cols), 4.6 * per_defect + 0.4)
    axes = fig.subplots(2 * per_defect, len(cols), squeeze=False)
    for j, d in enumerate(cols):
        for i in range(per_defect):
            top, below = axes[2 * i][j], axes[2 * i + 1][j]
            for ax in (top, below):
                axes_off(ax)
            if i >= len(groups[d]):
                top.set_axis_off()
                below.set_axis_off()
                continue
            s = groups[d][i]
            img = load_image(s.path)
            mask = load_mask(s.mask_path, img.shape[:2]) if s.mask_path else None
            top.imshow(img)
            top.set_title(f"{d}  ({s.path.name})", fontsize=9)
            tint = img.copy()
            if mask is not None:
                tint[mask] = (0.5 * tint[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
            below.imshow(tint)
            mask_outline(below, mask)
            below.set_title("its ground truth" if mask is not None else "no defect", fontsize=8)
    fig.suptitle(
        "Test images per defect type, each above its ground truth (tinted red, outlined green)"
    )
    return fig


def image_statistics(samples) -> tuple[Table, Figure]:
    """Image sizes, per-channel means and a brightness distribution per defect type."""
    from helpers.core.images import load_image

    sizes, rows, bright = Counter(), [], {}
    hist = {"good": np.zeros((3, 64)), "defective": np.zeros((3, 64))}
    for s in samples:
        img = load_image(s.path)
        sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
        bright.setdefault(s.defect, []).append(float(img.mean()))
        key = "good" if s.defect == "good" else "defective"
        for c in range(3):
            hist[key][c] += np.histogram(img[..., c], bins=64, range=(0, 256))[0]
    for d, values in bright.items():
        rows.append((d, len(values), float(np.mean(values)), float(np.std(values))))
    title = "Mean grey level (0-255) per defect type; sizes: "
    title += ", ".join(f"{k} ({v})" for k, v in sizes.items())
    headers = ["defect type", "images", "mean brightness", "std between images"]
    table = Table(rows, headers, title, floatfmt=".1f")
    fig = new_figure(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    names = list(bright)
    ax1.boxplot([bright[n] for n in names], tick_labels=names)
    ax1.set_title("Mean brightness per image")
    ax1.set_xlabel("defect type")
    ax1.set_ylabel("mean grey level (0-255)")
    ax1.tick_params(axis="x", rotation=30)
    centres = np.linspace(2, 254, 64)
    for c, colour in enumerate(("red", "green", "blue")):
        for key, style in (("good", "-"), ("defective", "--")):
            h = hist[key][c] / max(hist[key][c].sum(), 1)
            ax2.plot(centres, h, style, color=colour, label=f"{colour} ({key})")
    ax2.set_yscale("log")
    ax2.set_title("Pixel value histogram per channel")
    ax2.set_xlabel("pixel value")
    ax2.set_ylabel("fraction of pixels (log)")
    ax2.legend(fontsize=7, ncol=2)
    return table, fig


def brightness_baseline(samples, transform=None) -> Table:
    """A brightness-only detector as a baseline: the image AUROC of each test image's mean grey
    level, each defect type against the good test images (0.5: brightness says nothing; 1 or 0:
    it separates them, a shortcut in the data), in the table's ``aurocs`` too ({type: AUROC},
    with "all defects"). ``transform`` (RGB uint8 -> RGB uint8, e.g. CLAHE) is applied first."""
    from helpers.core.images import load_image
    from helpers.evaluation.metrics import image_auroc

    test = [s for s in samples if s.split == "test"]
    bright = {}
    for s in test:
        img = load_image(s.path)
        img = transform(img) if transform is not None else img
        bright.setdefault(s.defect, []).append(float(img.mean()))
    good = bright.get("good", [])
    rows = []
    groups = [(d, v) for d, v in bright.items() if d != "good"]
    groups.append(("all defects", [b for _, v in groups for b in v]))
    for name, values in groups:
        auroc = image_auroc([0] * len(good) + [1] * len(values), good + values) if good else None
        rows.append((name, len(values), float(np.mean(values)), auroc, _brightness_reading(auroc)))
    table = Table(
        rows,
        ["defect type", "images", "mean brightness", "AUROC (brighter = defective)", "reading"],
        f"Brightness-only detector: mean grey level vs the {len(good)} good test images "
        f"(their mean {np.mean(good) if good else float('nan'):.1f})",
        floatfmt=".2f",
    )
    table.aurocs = {row[0]: row[3] for row in rows}  # {defect type or "all defects": AUROC}
    return table


def _brightness_reading(auroc: float | None) -> str:
    if auroc is None:
        return "n/a (no good test images)"
    sep = max(auroc, 1 - auroc)  # a detector may also flag darker images
    side = "brighter" if auroc >= 0.5 else "darker"
    if sep >= 0.9:
        return f"separates: defective {side}"
    return f"partly: defective mostly {side}" if sep >= 0.7 else "little or no signal"
