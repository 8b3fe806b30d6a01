"""The download helper on a tiny tar.xz built here: file:// URLs, checksums, refusals, unsafe
archives; no network."""
from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import download
from helpers.download import DownloadError


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path) -> Path:
    png = png_bytes()
    return make_archive(tmp_path / "metal_nut.tar.xz", {
        "metal_nut/train/good/000.png": png, "metal_nut/test/good/000.png": png,
        "metal_nut/test/scratch/000.png": png, "metal_nut/ground_truth/scratch/000_mask.png": png})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, headers: dict):
        super().__init__(data)
        self.headers = headers


def test_fetch_from_file_url_with_checksum(archive, tmp_path):
    dest = tmp_path / "mvtec"
    root = download.fetch_mvtec(dest, url=archive.as_uri(), sha256=sha(archive), progress=False)
    assert root == dest and (dest / "metal_nut" / "train" / "good" / "000.png").is_file()
    assert not list(dest.glob("*.tar.xz")) and not list(dest.glob("*.partial"))
    from helpers.data import list_samples
    assert len(list_samples(dest, "metal_nut", "test")) == 2


def test_wrong_checksum_keeps_nothing(archive, tmp_path):
    dest = tmp_path / "mvtec"
    with pytest.raises(DownloadError, match="does not match"):
        download.fetch_mvtec(dest, url=archive.as_uri(), sha256="0" * 64, progress=False)
    assert not (dest / "metal_nut").exists() and not list(dest.iterdir())


def test_refused_download_says_what_to_do(tmp_path):
    def opener(url, timeout):
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)
    with pytest.raises(DownloadError) as err:
        download.fetch_mvtec(tmp_path / "d", opener=opener, progress=False)
    text = str(err.value)
    assert "refused" in text and "HTTP 403" in text and "Drive" in text and download.METAL_NUT_URL in text


def test_no_connection_is_reported(tmp_path):
    def opener(url, timeout):
        raise urllib.error.URLError("Name or service not known")
    with pytest.raises(DownloadError, match="no connection"):
        download.download("https://example.invalid/x.tar.xz", tmp_path / "x", opener=opener, progress=False)


def test_html_page_instead_of_archive_is_refused(tmp_path):
    opener = lambda url, timeout: FakeResponse(b"<html>licence form</html>", {"Content-Type": "text/html"})
    with pytest.raises(DownloadError, match="web page"):
        download.download("https://x/metal_nut.tar.xz", tmp_path / "a.tar.xz", opener=opener, progress=False)
    assert not list(tmp_path.iterdir())


def test_cut_download_is_refused(tmp_path):
    opener = lambda url, timeout: FakeResponse(b"12345", {"Content-Length": "10"})
    with pytest.raises(DownloadError, match="cut"):
        download.download("https://x/a", tmp_path / "a", opener=opener, progress=False)
    assert not list(tmp_path.iterdir())


def test_monkeypatched_opener_and_known_checksum(archive, tmp_path, monkeypatch):
    data = archive.read_bytes()
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return FakeResponse(data, {"Content-Length": str(len(data)), "Content-Type": "application/x-xz"})
    monkeypatch.setitem(download.KNOWN_SHA256, download.METAL_NUT_URL, sha(archive))
    dest = download.fetch_mvtec(tmp_path / "d", opener=opener, progress=False)
    assert calls == [download.METAL_NUT_URL] and download.has_category(dest, "metal_nut")
    # already there: no second download
    download.fetch_mvtec(tmp_path / "d", opener=opener, progress=False)
    assert len(calls) == 1


def test_unsafe_archive_member_is_refused(tmp_path):
    bad = make_archive(tmp_path / "bad.tar.xz", {"../evil.txt": b"x"})
    with pytest.raises(DownloadError, match="unsafe"):
        download.extract(bad, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_local_archive_path_and_category_folder(archive, tmp_path):
    dest = download.fetch_mvtec(tmp_path / "d", url=str(archive), progress=False)
    assert archive.exists()                       # a local archive is not deleted
    assert download.has_category(dest / "metal_nut", "metal_nut")


def test_prepare_dataset_downloads_only_when_asked(archive, tmp_path):
    root = download.prepare_dataset(tmp_path / "d", "metal_nut")
    assert root == tmp_path / "d" and not root.exists()
    root = download.prepare_dataset(tmp_path / "d", "metal_nut", True, archive.as_uri())
    assert download.has_category(root, "metal_nut")


def test_drive_path_outside_colab_is_explained(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "google.colab", None)
    if Path("/content/drive/MyDrive").exists():
        pytest.skip("a Drive is mounted here")
    with pytest.raises(FileNotFoundError, match="not Colab"):
        download.mount_drive("/content/drive/MyDrive/mvtec")
