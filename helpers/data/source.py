"""Where a run's images come from: a synthetic set generated into the run folder, or an
MVTec-layout folder (downloaded first when asked). Lists the train and test samples once.

Usable on its own::

    source = DataSource(Config(dataset_path="/data/mvtec"), data_dir=Path("runs/x/data"))
    source.train_samples, source.test_samples
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from helpers.core.config import Config
from helpers.core.images import check_image_file
from helpers.data.mvtec import Sample, fingerprint, list_samples

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
        self._listed: dict[str, list[Sample]] = {}  # every image file of a split
        self._usable: dict[str, list[Sample]] = {}  # less the unreadable ones (skip_bad_images)
        self._fingerprints: dict[str, str] = {}
        self._unreadable: dict[str, list[tuple[Sample, str]]] = {}
        self.skipped: dict[str, list[tuple[Sample, str]]] = {}  # split -> [(sample, reason)]

    @property
    def is_synthetic(self) -> bool:
        return not self.config.dataset_path

    def data_id(self) -> str:
        """Where artifacts come from: the synthetic set's parameters or the data folder (what the
        files hold is :meth:`fingerprint`)."""
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

    def listed(self, split: str) -> list[Sample]:
        """Every image file of ``split`` ("train" or "test"), readable or not."""
        if split not in self._listed:
            self._listed[split] = list_samples(self.root, self.config.category, split)
        return self._listed[split]

    def unreadable(self, split: str) -> list[tuple[Sample, str]]:
        """(sample, reason) of each image of ``split`` that cannot be used (truncated, corrupt,
        too large): a header and checksum check, no decoding (see
        :func:`helpers.core.images.check_image_file`)."""
        if split not in self._unreadable:
            listed = self.listed(split)
            self._unreadable[split] = [
                (s, why) for s in listed if (why := check_image_file(s.path))
            ]
        return self._unreadable[split]

    def samples(self, split: str) -> list[Sample]:
        """The images of ``split`` a run uses: every listed one, or with ``skip_bad_images`` the
        readable ones (the others skipped with one counted warning, kept in ``skipped``)."""
        if split not in self._usable:
            listed = self.listed(split)
            if self.config.skip_bad_images:
                bad = self.unreadable(split)
                self.skipped[split] = bad
                if bad:
                    warnings.warn(
                        f"skipped {len(bad)} unreadable {split} image(s) (skip_bad_images), "
                        f"e.g. {bad[0][0].path}: {bad[0][1]}",
                        stacklevel=2,
                    )
                gone = {s.path for s, _ in bad}
                listed = [s for s in listed if s.path not in gone]
            self._usable[split] = listed
        return self._usable[split]

    @property
    def train_samples(self) -> list[Sample]:
        return self.samples("train")

    @property
    def test_samples(self) -> list[Sample]:
        return self.samples("test")

    def fingerprint(self, split: str) -> str:
        """What the artifacts of ``split`` are made from: ``"<n> files #<hex>"`` over the names,
        sizes and modification times of its files (:func:`helpers.data.mvtec.fingerprint`).
        ``split``: "train" (training images), "test" (test images) or "masks"."""
        if split not in self._fingerprints:
            if split == "masks":
                files = [s.mask_path for s in self.listed("test") if s.mask_path is not None]
            else:
                files = [s.path for s in self.listed(split)]
            self._fingerprints[split] = fingerprint(files, self.root)
        return self._fingerprints[split]

    def fingerprints(self) -> dict[str, str]:
        """Every split's :meth:`fingerprint` (generates the synthetic set when needed)."""
        return {split: self.fingerprint(split) for split in ("train", "test", "masks")}

    def record(self) -> dict:
        """The data entry of metrics.json."""
        out = (
            {"source": "synthetic", **self.synthetic}
            if self.is_synthetic
            else {"source": "folder", "path": str(self.root)}
        )
        out["files"] = self.fingerprints()
        if any(self.skipped.values()):
            out["skipped"] = {
                split: [str(s.path.relative_to(self.root)) for s, _ in bad]
                for split, bad in self.skipped.items()
                if bad
            }
        return out
