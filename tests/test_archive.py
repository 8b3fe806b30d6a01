"""helpers.data.archive: one category out of a tar archive, and nothing unsafe."""

import io
import tarfile

import pytest

from helpers.data.archive import DownloadError, extract_category


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_only_the_category_is_extracted(tmp_path):
    _tar(
        tmp_path / "a.tar.gz",
        {"metal_nut/train/good/000.png": b"x", "screw/train/good/0.png": b"y"},
    )
    root = extract_category(tmp_path / "a.tar.gz", tmp_path / "out", "metal_nut", progress=False)
    assert (root / "metal_nut" / "train" / "good" / "000.png").read_bytes() == b"x"
    assert not (tmp_path / "out" / "screw").exists()


def test_unsafe_member_is_refused(tmp_path):
    _tar(tmp_path / "b.tar.gz", {"../evil/metal_nut/train/good/0.png": b"x"})
    with pytest.raises(DownloadError):
        extract_category(tmp_path / "b.tar.gz", tmp_path / "out", "metal_nut", progress=False)
