"""Where a run's images come from: a synthetic set generated into the run folder, or an
MVTec-layout folder (downloaded first when asked). Lists the train and test samples once.

Usable on its own::

    source = DataSource(Config(dataset_path="/data/mvtec"), data_dir=Path("runs/x/data"))
    source.train_samples, source.test_samples
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers.core.config import Config
from helpers.data.mvtec import Sample, list_samples

# the synthetic set's parameters (the notebooks' synthetic_* parameters override them)
SYNTHETIC_DEFAULTS = dict(size=256, n_train=24, n_test_good=8, n_per_defect=6)


class DataSource:
    """The data of one config: ``config.dataset_path`` (None: the synthetic set, generated in
    ``data_dir`` with ``synthetic`` overriding :data:`SYNTHETIC_DEFAULTS`)."""

    def __init__(
        self,
        config: Config,
        data_dir: str | Path,
        *,
        synthetic: dict | None = None,
        download: bool = False,
        download_url: str = "",
        download_sha256: str = "",
    ):
        self.config = config
        self.data_dir = Path(data_dir)
        self.synthetic = {**SYNTHETIC_DEFAULTS, **(synthetic or {})}
        self.download, self.download_url, self.download_sha256 = (
            download,
            download_url,
            download_sha256,
        )
        self._root: Path | None = None
        self._train: list[Sample] | None = None
        self._test: list[Sample] | None = None

    @property
    def is_synthetic(self) -> bool:
        return not self.config.dataset_path

    def data_id(self) -> str:
        """What artifacts are made from: the synthetic set's parameters or the data folder."""
        if self.is_synthetic:
            return "synthetic:" + json.dumps(self.synthetic, sort_keys=True)
        folder = Path(self.config.dataset_path).expanduser().resolve()
        return f"folder:{folder}|{self.config.category}"

    @property
    def root(self) -> Path:
        """The MVTec-layout folder in use: generated (synthetic), downloaded or given."""
        if self._root is None:
            c = self.config
            if self.is_synthetic:
                from helpers.data.synthetic import generate_dataset

                self._root = generate_dataset(
                    self.data_dir, c.category, seed=c.seed, **self.synthetic
                )
            else:
                from helpers.data.download import prepare_dataset

                self._root = prepare_dataset(
                    c.dataset_path,
                    c.category,
                    download_missing=self.download,
                    url=self.download_url or None,
                    sha256=self.download_sha256 or None,
                )
        return self._root

    @property
    def train_samples(self) -> list[Sample]:
        if self._train is None:
            self._train = list_samples(self.root, self.config.category, "train")
        return self._train

    @property
    def test_samples(self) -> list[Sample]:
        if self._test is None:
            self._test = list_samples(self.root, self.config.category, "test")
        return self._test

    def record(self) -> dict:
        """The data entry of metrics.json."""
        if self.is_synthetic:
            return {"source": "synthetic", **self.synthetic}
        return {"source": "folder", "path": str(self.root)}
