"""PatchCore for MVTec-style anomaly detection: the library behind the notebook series.

>>> from helpers import Config, PatchCore
>>> model = PatchCore(Config(backbone="mobilenet_v2")).fit(train_paths)
>>> pred = model.predict(test_paths)   # pred.scores, pred.maps (original pixels)
"""

__version__ = "0.1.0"

from .config import Config, ConfigError  # noqa: E402
from .model import BankMismatchError, PatchCore  # noqa: E402
from .prediction import Prediction  # noqa: E402

__all__ = ["Config", "ConfigError", "PatchCore", "Prediction", "BankMismatchError", "__version__"]
