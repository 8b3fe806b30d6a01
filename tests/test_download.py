"""helpers.data.download, offline: small archives in the MVTec AD layout served from a local HTTP
server (with Range support), fake openers or local files; resume, checksums, refusals, hostile
archives (nothing written outside), and only the category extracted."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.data import download
from helpers.data.download import DownloadError

CATEGORY_FILES = (
    "train/good/000.png",
    "train/good/001.png",
    "test/good/000.png",
    "test/scratch/000.png",
    "ground_truth/scratch/000_mask.png",
)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path: Path, members: dict[str, bytes | tarfile.TarInfo], mode="w:xz") -> Path:
    """A .tar.xz (or ``mode``); a member given as TarInfo is added as is (links, devices)."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            if isinstance(data, tarfile.TarInfo):
                tar.addfile(data)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def mvtec_members(prefix: str = "") -> dict:
    """The whole-archive layout: several categories side by side plus licence files."""
    png = png_bytes()
    folder = tarfile.TarInfo(f"{prefix}metal_nut")
    folder.type = tarfile.DIRTYPE
    members = {f"{prefix}license.txt": b"CC BY-NC-SA 4.0", f"{prefix}metal_nut": folder}
    members.update({f"{prefix}bottle/train/good/000.png": png})
    members.update({f"{prefix}metal_nut/{f}": png for f in CATEGORY_FILES})
    members.update({f"{prefix}screw/train/good/000.png": png})
    return members


@pytest.fixture
def archive(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    return make_archive(tmp_path / "src" / "mvtec_anomaly_detection.tar.xz", mvtec_members())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_mvtec_layout(dest: Path) -> None:
    for f in CATEGORY_FILES:
        assert (dest / "metal_nut" / f).is_file(), f
    assert sorted(p.name for p in dest.iterdir()) == ["metal_nut"], "only the category lands"


class Server:
    """A local HTTP server for one file, honouring Range; ``cut_first`` stops the first reply
    after that many bytes (a dropped connection)."""

    def __init__(self, data: bytes, cut_first: int | None = None):
        self.data, self.cut_first, self.ranges = data, cut_first, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                body = server.data[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Type", "application/x-xz")
                self.send_header("Content-Length", str(len(body)))
                if header:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}"
                    )
                self.end_headers()
                if server.cut_first is not None:
                    body, server.cut_first = body[: server.cut_first], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mvtec_anomaly_detection.tar.xz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(data: bytes, cut_first: int | None = None) -> Server:
        servers.append(Server(data, cut_first))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, headers: dict | None = None, status: int = 200):
        super().__init__(data)
        self.headers, self.status = headers or {"Content-Length": str(len(data))}, status


def fetch(dest: Path, **kwargs) -> Path:
    """One category into ``dest`` as a run asks for it (download when missing)."""
    return download.prepare_dataset(dest, "metal_nut", download_missing=True, **kwargs)


# ------------------------------------------------------------------ sources


def test_pinned_source_is_the_maintained_whole_archive():
    assert download.MVTEC_AD_URL == (
        "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
        "420938113-1629960298/mvtec_anomaly_detection.tar.xz"
    )
    assert download.MVTEC_AD_SHA256 == (
        "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    )


def test_http_end_to_end_extracts_only_the_category(archive, tmp_path, serve, capsys):
    server = serve(archive.read_bytes())
    dest, cache = tmp_path / "mvtec", tmp_path / "cache"
    assert fetch(dest, url=server.url, sha256=sha(archive), cache_dir=cache) == dest
    assert_mvtec_layout(dest)
    assert not list(cache.iterdir()), "the archive is deleted after extraction"
    out = capsys.readouterr()
    assert "verified" in out.out and "extract metal_nut" in out.err  # tqdm bars on stderr
    from helpers.data.mvtec import list_samples

    assert len(list_samples(dest, "metal_nut", "train")) == 2
    assert len(list_samples(dest, "metal_nut", "test")) == 2
    fetch(dest, url=server.url, cache_dir=cache, progress=False)
    assert len(server.ranges) == 1, "already there: no second download"


def test_default_source_is_the_whole_archive_with_its_pinned_checksum(
    archive, tmp_path, monkeypatch, capsys
):
    data, calls = archive.read_bytes(), []

    def opener(request, timeout):
        calls.append(request.full_url)
        return FakeResponse(data)

    monkeypatch.setattr(download, "MVTEC_AD_SHA256", sha(archive))
    dest = fetch(tmp_path / "d", opener=opener, cache_dir=tmp_path / "c", progress=False)
    assert calls == [download.MVTEC_AD_URL]
    assert_mvtec_layout(dest)
    assert f"sha256 {sha(archive)}: verified" in capsys.readouterr().out


def test_the_pinned_checksum_is_checked_on_the_default_source(archive, tmp_path):
    data = archive.read_bytes()  # not the real 4.9 GB archive: its digest differs from the pin
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        fetch(
            tmp_path / "d", opener=lambda r, timeout: FakeResponse(data), cache_dir=tmp_path / "c"
        )
    assert download.MVTEC_AD_SHA256 in str(err.value)
    assert not (tmp_path / "d" / "metal_nut").exists()


@pytest.mark.parametrize("prefix", ["", "./", "mvtec_anomaly_detection/"])
@pytest.mark.parametrize("mode", ["w:xz", "w:gz", "w:bz2", "w"])
def test_local_archives_in_any_compression_and_folder(tmp_path, prefix, mode):
    archive = make_archive(tmp_path / "a.tar", mvtec_members(prefix), mode)
    dest = fetch(tmp_path / "d", url=archive.as_uri(), cache_dir=tmp_path / "c", progress=False)
    assert_mvtec_layout(dest)
    assert (dest / "metal_nut" / CATEGORY_FILES[0]).read_bytes() == png_bytes()
    assert not (tmp_path / "c").exists(), "a local archive is read in place, not copied"
    assert archive.exists(), "the user's archive is never deleted"


def test_local_archive_path_is_used_in_place(archive, tmp_path):
    assert_mvtec_layout(fetch(tmp_path / "d", url=str(archive), sha256=sha(archive)))
    assert archive.exists()


def test_missing_local_archive_is_named(tmp_path):
    with pytest.raises(DownloadError, match="download_url=.*nope.tar.xz.*no such file"):
        fetch(tmp_path / "d", url=str(tmp_path / "nope.tar.xz"))


def test_prepare_dataset_downloads_only_when_asked(archive, tmp_path):
    root = download.prepare_dataset(tmp_path / "d", "metal_nut", url=str(archive))
    assert root == tmp_path / "d" and not root.exists()
    root = download.prepare_dataset(
        tmp_path / "d", "metal_nut", download_missing=True, url=str(archive)
    )
    assert download.has_category(root, "metal_nut")


# ------------------------------------------------------------------ checksums


def test_wrong_checksum_fails_clearly_and_leaves_nothing(archive, tmp_path, serve):
    server = serve(archive.read_bytes())
    dest, cache = tmp_path / "mvtec", tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        fetch(dest, url=server.url, sha256="0" * 64, cache_dir=cache, progress=False)
    text = str(err.value)
    assert "checksum mismatch" in text and "mvtec_anomaly_detection.tar.xz" in text
    assert "0" * 64 in text and sha(archive) in text and "\n" not in text
    assert not (dest / "metal_nut").exists() and not list(dest.glob(".*partial*"))
    assert not list(cache.iterdir()), "neither the corrupt download nor a .partial is kept"


def test_wrong_checksum_of_a_local_archive_extracts_nothing(archive, tmp_path):
    dest = tmp_path / "mvtec"
    with pytest.raises(DownloadError, match="checksum mismatch.*expected sha256 0{64}"):
        fetch(dest, url=str(archive), sha256="0" * 64, progress=False)
    assert not dest.exists() or not list(dest.iterdir())
    assert archive.exists(), "the user's archive is never deleted"


def test_the_checksum_covers_the_whole_file(tmp_path):
    """tarfile stops reading at the end-of-archive blocks; the bytes after them count too."""
    plain = make_archive(tmp_path / "a.tar", mvtec_members(), "w")
    longer = tmp_path / "longer.tar"
    longer.write_bytes(plain.read_bytes() + bytes(3 * download.BLOCK))  # more than tarfile reads
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download.extract_category(longer, tmp_path / "d", sha256=sha(plain), progress=False)
    download.extract_category(longer, tmp_path / "d", sha256=sha(longer), progress=False)
    assert_mvtec_layout(tmp_path / "d")


def test_the_checksum_is_checked_before_anything_is_extracted(tmp_path):
    """A wrong sha256 refuses the archive before tar reads a member: a hostile one with a wrong
    checksum is refused for its checksum, and no folder is made."""
    hostile = make_archive(tmp_path / "bad.tar.xz", {**mvtec_members(), "../evil.txt": b"x"})
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download.extract_category(hostile, tmp_path / "d", sha256="0" * 64, progress=False)
    assert not (tmp_path / "d").exists() and not list(tmp_path.rglob("evil*"))


# ------------------------------------------------------------------ resume


def test_a_cut_download_resumes_with_a_range_request(archive, tmp_path, serve):
    data = archive.read_bytes()
    server = serve(data, cut_first=len(data) // 3)
    dest = download.download(server.url, tmp_path / "a.tar.xz", progress=False)
    assert dest.read_bytes() == data
    assert server.ranges == [None, f"bytes={len(data) // 3}-"]
    assert not (tmp_path / "a.tar.xz.partial").exists()


def test_a_cut_download_says_how_to_resume_and_the_next_call_does(archive, tmp_path, serve):
    data = archive.read_bytes()
    server = serve(data, cut_first=100)
    with pytest.raises(DownloadError, match=r"Run the same cell again: it resumes from .*partial"):
        download.download(server.url, tmp_path / "a.tar.xz", retries=1, progress=False)
    assert (tmp_path / "a.tar.xz.partial").read_bytes() == data[:100]
    download.download(server.url, tmp_path / "a.tar.xz", progress=False)
    assert server.ranges == [None, "bytes=100-"] and (tmp_path / "a.tar.xz").read_bytes() == data


def test_a_cut_during_a_run_is_resumed_and_the_result_verified(archive, tmp_path, serve):
    data = archive.read_bytes()
    server = serve(data, cut_first=len(data) // 2)
    dest = fetch(tmp_path / "d", url=server.url, sha256=sha(archive), cache_dir=tmp_path / "c")
    assert_mvtec_layout(dest)
    assert server.ranges == [None, f"bytes={len(data) // 2}-"]


def test_a_connection_reset_midway_is_resumed(archive, tmp_path):
    data, requests = archive.read_bytes(), []

    class Resetting(FakeResponse):
        def read(self, size=-1):
            if self.tell() >= 50:
                raise ConnectionResetError("Connection reset by peer")
            return super().read(min(size, 50 - self.tell()))

    def opener(request, timeout):
        requests.append(request.get_header("Range"))
        if len(requests) == 1:
            return Resetting(data)
        start = int(request.get_header("Range").split("=")[1].rstrip("-"))
        headers = {"Content-Length": str(len(data) - start)}
        return FakeResponse(data[start:], headers, status=206)

    dest = download.download("https://x/a.tar.xz", tmp_path / "a.tar.xz", opener=opener)
    assert requests == [None, "bytes=50-"] and dest.read_bytes() == data


def test_a_server_ignoring_range_restarts_from_zero(archive, tmp_path):
    data, ranges = archive.read_bytes(), []
    (tmp_path / "a.tar.xz.partial").write_bytes(b"garbage")

    def opener(request, timeout):
        ranges.append(request.get_header("Range"))
        return FakeResponse(data)  # 200 and the whole file, Range or not

    download.download("https://x/a.tar.xz", tmp_path / "a.tar.xz", opener=opener, progress=False)
    assert ranges == ["bytes=7-"] and (tmp_path / "a.tar.xz").read_bytes() == data


def test_a_partial_file_the_server_cannot_extend_is_restarted(archive, tmp_path):
    data, ranges = archive.read_bytes(), []
    (tmp_path / "a.tar.xz.partial").write_bytes(b"x" * (len(data) + 10))

    def opener(request, timeout):
        ranges.append(request.get_header("Range"))
        if request.get_header("Range"):
            raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", {}, None)
        return FakeResponse(data)

    download.download("https://x/a.tar.xz", tmp_path / "a.tar.xz", opener=opener, progress=False)
    assert ranges == [f"bytes={len(data) + 10}-", None]
    assert (tmp_path / "a.tar.xz").read_bytes() == data


# ------------------------------------------------------------------ refusals


def test_refused_download_says_what_to_do_in_one_line(tmp_path):
    def opener(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    with pytest.raises(DownloadError) as err:
        fetch(tmp_path / "d", opener=opener, cache_dir=tmp_path / "c", progress=False)
    text = str(err.value)
    assert "refused" in text and "HTTP 404" in text and "Drive" in text and "\n" not in text
    assert download.MVTEC_AD_URL in text and "download_url" in text and "dataset_path" in text


def test_no_connection_is_reported(tmp_path):
    def opener(request, timeout):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(DownloadError, match="x.tar.xz was refused: no connection"):
        download.download(
            "https://example.invalid/x.tar.xz", tmp_path / "x", opener=opener, progress=False
        )


def test_html_page_instead_of_archive_is_refused(tmp_path):
    opener = lambda request, timeout: FakeResponse(
        b"<html>licence form</html>", {"Content-Type": "text/html; charset=utf-8"}
    )
    with pytest.raises(DownloadError, match="https://x/a.tar.xz was refused: .*web page"):
        download.download(
            "https://x/a.tar.xz", tmp_path / "a.tar.xz", opener=opener, progress=False
        )
    assert not list(tmp_path.iterdir())


def test_an_archive_without_the_category_is_explained(tmp_path):
    other = make_archive(tmp_path / "o.tar.xz", {"bottle/train/good/000.png": png_bytes()})
    with pytest.raises(DownloadError, match=r"o.tar.xz holds no metal_nut/train/good"):
        download.extract_category(other, tmp_path / "d", progress=False)
    assert not list((tmp_path / "d").iterdir())


def test_a_truncated_archive_is_refused_without_leftovers(archive, tmp_path):
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DownloadError, match="cut.tar.xz is not a complete tar archive"):
        download.extract_category(cut, tmp_path / "d", progress=False)
    assert not list((tmp_path / "d").iterdir())


def test_a_leftover_category_folder_is_not_overwritten_nor_downloaded_for(archive, tmp_path):
    (tmp_path / "d" / "metal_nut" / "test").mkdir(parents=True)
    with pytest.raises(DownloadError, match="exists but has no train/good"):
        fetch(tmp_path / "d", url=str(archive), progress=False)
    opener = lambda request, timeout: pytest.fail("no download for a folder that cannot be used")
    with pytest.raises(DownloadError, match="exists but has no train/good"):
        fetch(tmp_path / "d", opener=opener, cache_dir=tmp_path / "c")


def test_a_python_without_the_data_filter_is_refused(archive, tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(DownloadError, match="data filter.*extract metal_nut/ of .*yourself"):
        download.extract_category(archive, tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------ hostile archives


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


GOOD = "metal_nut/train/good/"


@pytest.mark.parametrize(
    "bad",
    [
        {"../evil.txt": b"x"},
        {"/tmp/evil.txt": b"x"},
        {"metal_nut/../../evil.txt": b"x"},
        {"../evil/metal_nut/train/good/0.png": b"x"},
        {"link": _link(GOOD + "link.png", "../../../../evil")},
        {"abs-link": _link(GOOD + "abs.png", "/tmp/evil")},
        {"sibling": _link(GOOD + "s.png", "../../../bottle/train/good/000.png")},
        {"hard": _link(GOOD + "hard.png", "/etc/passwd", tarfile.LNKTYPE)},
        {"hard-sibling": _link(GOOD + "h.png", "bottle/train/good/000.png", tarfile.LNKTYPE)},
        {"device": _link(GOOD + "dev", "", tarfile.CHRTYPE)},
        {"fifo": _link(GOOD + "fifo", "", tarfile.FIFOTYPE)},
    ],
    ids=[
        "dotdot",
        "absolute",
        "inner-dotdot",
        "dotdot-before-category",
        "symlink-out",
        "symlink-absolute",
        "symlink-to-another-category",
        "hardlink-absolute",
        "hardlink-to-another-category",
        "device",
        "fifo",
    ],
)
def test_hostile_members_refuse_the_archive_and_nothing_is_written(tmp_path, bad):
    members = {**mvtec_members(), **bad}
    hostile = make_archive(tmp_path / "bad.tar.xz", members)
    out = tmp_path / "out" / "data"
    with pytest.raises(DownloadError) as err:
        fetch(out, url=str(hostile), progress=False)
    text = str(err.value)
    assert "bad.tar.xz" in text and "unsafe member" in text and "refused" in text
    assert "\n" not in text
    assert not (out / "metal_nut").exists() and not list(out.glob(".*"))
    assert not list(tmp_path.rglob("evil*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.xz", "out"]


def test_links_inside_the_category_are_kept(tmp_path):
    members = mvtec_members()
    members["copy"] = _link("metal_nut/test/good/copy.png", "../../train/good/000.png")
    members["hard"] = _link("metal_nut/test/good/hard.png", GOOD + "001.png", tarfile.LNKTYPE)
    members["wrapped"] = _link(
        "metal_nut/test/good/hard2.png", "./metal_nut/train/good/000.png", tarfile.LNKTYPE
    )
    dest = download.extract_category(
        make_archive(tmp_path / "a.tar.xz", members), tmp_path / "d", progress=False
    )
    for name in ("copy.png", "hard.png", "hard2.png"):
        assert (dest / "metal_nut" / "test" / "good" / name).read_bytes() == png_bytes()


def test_drive_path_outside_colab_is_explained(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "google.colab", None)
    if Path("/content/drive/MyDrive").exists():
        pytest.skip("a Drive is mounted here")
    with pytest.raises(FileNotFoundError, match="dataset_path=.*not Colab"):
        download.prepare_dataset("/content/drive/MyDrive/mvtec")
    with pytest.raises(FileNotFoundError, match="download_url=.*not Colab"):
        download.prepare_dataset(
            "data", "metal_nut", download_missing=True, url="/content/drive/MyDrive/m.tar.xz"
        )
