"""Figures and tables for the notebook series, one module per stage (:mod:`helpers.viz_data`,
:mod:`helpers.viz_features`, :mod:`helpers.viz_scores`, shared parts in :mod:`helpers.viz_base`),
gathered here so that notebooks write ``viz.<name>``. Every function returns a matplotlib ``Figure``
(built without pyplot, so nothing is shown twice and tests need no display) or a :class:`Table`
that renders as HTML in Jupyter and as aligned text elsewhere. Figures have titles, axis labels
and colour bars; anomaly maps are drawn over the ORIGINAL image pixels."""

from __future__ import annotations

from .viz_base import (  # noqa: F401
    HEATMAP_CMAP,
    MASK_COLOUR,
    Table,
    map_range,
    overlay,
)
from .viz_data import (  # noqa: F401
    brightness_baseline,
    clahe_figure,
    clahe_grid,
    counts_figure,
    counts_table,
    examples,
    image_statistics,
    sample_grid,
)
from .viz_features import (  # noqa: F401
    bank_megabytes,
    coreset_scatter,
    coverage_figure,
    pca_figure,
    pca_rgb,
    projection_figure,
    rotation_figure,
    turned_view,
)
from .viz_scores import (  # noqa: F401
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
