"""Figures and tables for the notebook series, one module per lesson (``viz_data`` and
``viz_clahe``: notebook 01, ``viz_features``: 02 and 03, ``viz_scores``: 04 and 05, shared parts
in ``viz_base``), gathered here so that notebooks write ``H.viz.<name>``. Every function returns a
matplotlib ``Figure`` (built without pyplot, so nothing is shown twice and tests need no display)
or a ``Table`` that renders as HTML in Jupyter and as aligned text elsewhere. Figures have titles,
axis labels and colour bars; anomaly maps are in the ORIGINAL image pixels, beside the image."""

from __future__ import annotations

from helpers.lessons.viz_base import (  # noqa: F401
    HEATMAP_CMAP,
    MASK_COLOUR,
    Table,
    heatmap,
    map_range,
)
from helpers.lessons.viz_clahe import (  # noqa: F401
    clahe_cases_figure,
    clahe_contrast,
    clahe_figure,
    clahe_grid,
)
from helpers.lessons.viz_data import (  # noqa: F401
    brightness_baseline,
    counts_figure,
    counts_table,
    examples,
    image_statistics,
    sample_grid,
)
from helpers.lessons.viz_features import (  # noqa: F401
    bank_megabytes,
    bank_size_figure,
    coreset_scatter,
    coverage_figure,
    pca_figure,
    pca_rgb,
    projection_figure,
    rotation_figure,
    turned_view,
)
from helpers.lessons.viz_scores import (  # noqa: F401
    confusion_counts,
    confusion_figure,
    gallery,
    map_steps,
    maps_preview,
    roc_figure,
    score_histogram,
    select_cases,
    verdict,
)
