"""PatchCore for MVTec-style anomaly detection: the library behind the notebook series, in six
layers, each importing only the ones before it (``tests/test_layers.py``): ``core`` (the
algorithm, closed), ``data`` (MVTec layout, synthetic set, download), ``evaluation`` (metrics,
``metrics.json``), ``run`` (:class:`Run`: a run folder and its cached stages), ``lessons``
(figures, widgets, timing, the Colab setup) and ``tools`` (``python -m helpers ...``).

>>> import helpers as H
>>> model = H.PatchCore(H.Config(backbone="mobilenet_v2")).fit(train_paths)
>>> pred = model.predict(test_paths)   # pred.scores, pred.maps (original pixels)
"""

from __future__ import annotations

import importlib

from helpers.core import __version__  # noqa: E402, F401

# loaded on first use: ``import helpers`` loads no torch, so ``python -m helpers run`` starts the
# first notebook's kernel before it loads torch itself (helpers/tools/kernels.py)
_LAZY = {
    "Config": ("helpers.core.config", "Config"),
    "ConfigError": ("helpers.core.config", "ConfigError"),
    "PatchCore": ("helpers.core.model", "PatchCore"),
    "Prediction": ("helpers.core.model", "Prediction"),
    "BankMismatchError": ("helpers.core.model", "BankMismatchError"),
    "Run": ("helpers.run.run", "Run"),
    "viz": ("helpers.lessons.viz", None),
    "widgets": ("helpers.lessons.widgets", None),
    "setup": ("helpers.lessons.colab", "setup"),
    "predict": ("helpers.tools.predict", "predict"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
