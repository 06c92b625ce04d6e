"""The downloader and the download/prepare paths of each data set against a local HTTP server on 127.0.0.1."""

import gzip
import hashlib
import io
import struct
import tarfile
import zipfile

import numpy as np
import pytest

import flows.datasets as fd
from flows.datasets import downloader as dl
from flows.datasets import mnist, power
from helpers import LocalHTTPServer


class _Server(LocalHTTPServer):
    """Serves ``files`` {name: bytes}; Range requests; ``cut[name] = k`` sends only k bytes the next k-times."""

    def __init__(self):
        self.files, self.cut, self.log = {}, {}, []
        super().__init__()

    def handle_get(self, request):
        name = self.name_of(request)
        self.log.append((request.path, request.headers.get("Range")))
        if name not in self.files:
            request.send_error(404)
            return
        body = self.files[name]
        if callable(body):
            body = body(request.path)
        start = self.send_range_head(request, body)
        chunk = body[start:]
        if self.cut.get(name):
            chunk = chunk[: self.cut.pop(name)]  # then drop the connection: an interrupted transfer
            request.wfile.write(chunk)
            request.wfile.flush()
            request.close_connection = True
            return
        request.wfile.write(chunk)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


def test_fetch_verifies_and_renames_atomically(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    path = dl.fetch("a.bin", tmp_path, [server.url + "a.bin"], md5=md5, size=len(PAYLOAD), quiet=True)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    n = len(server.log)
    dl.fetch("a.bin", tmp_path, [server.url + "a.bin"], md5=md5, quiet=True)  # already there: no request
    assert len(server.log) == n


def test_resume_after_interrupted_transfer(server, tmp_path):
    server.files["a.bin"] = PAYLOAD
    server.cut["a.bin"] = 30000
    path = dl.fetch("a.bin", tmp_path, [server.url + "a.bin"], sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                    backoff=0.01, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert server.log[0][1] is None and server.log[1][1] == "bytes=30000-"


def test_truncated_file_is_rejected_and_never_left_in_place(server, tmp_path):
    server.files["a.bin"] = PAYLOAD[:5000]  # the server itself has a truncated copy
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch("a.bin", tmp_path, [server.url + "a.bin"], size=len(PAYLOAD), backoff=0.01, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and "a.bin" in msg and "size 5000 bytes, expected 102400" in msg
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_html_page_instead_of_zip(server, tmp_path):
    server.files["data.zip"] = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    with pytest.raises(dl.DownloadError, match=r"answered an HTML page, not the file"):
        dl.fetch("data.zip", tmp_path, [server.url + "data.zip"], quiet=True)
    assert not list(tmp_path.iterdir())


def test_google_drive_confirmation_page_is_followed(server, tmp_path):
    def drive(path):
        if "confirm=t0K3n" in path and "uuid=abc" in path:
            return PAYLOAD
        return (b'<!DOCTYPE html><html><form action="/uc"><input type="hidden" name="confirm" value="t0K3n">'
                b'<input type="hidden" name="uuid" value="abc"></form>Google Drive can\'t scan this file</html>')

    server.files["uc"] = drive
    path = dl.fetch("img.zip", tmp_path, [server.url + "uc?export=download&id=XYZ"], size=len(PAYLOAD), quiet=True)
    assert path.read_bytes() == PAYLOAD


def test_offline_error_is_one_line_naming_file_urls_and_remedy(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    urls = ["http://127.0.0.1:9/nothing/x.gz", "http://127.0.0.1:9/other/x.gz"]
    with pytest.raises(dl.DownloadError) as err:
        dl.fetch("x.gz", tmp_path, urls, mirror=str(tmp_path / "mirror"), retries=1, backoff=0.01, quiet=True)
    msg = str(err.value)
    assert "\n" not in msg and "could not fetch x.gz" in msg
    for u in urls:
        assert u in msg
    assert str(tmp_path / "mirror" / "x.gz") in msg and "FLOWS_DATA_MIRROR" in msg and "mirror=" in msg


def test_mirror_dir_and_env_url_are_tried_first(server, tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "b.bin").write_bytes(PAYLOAD)
    path = dl.fetch("b.bin", tmp_path / "d1", ["http://127.0.0.1:9/b.bin"], mirror=str(tmp_path / "m"), quiet=True)
    assert path.read_bytes() == PAYLOAD
    server.files["b.bin"] = PAYLOAD
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    path = dl.fetch("b.bin", tmp_path / "d2", ["http://127.0.0.1:9/b.bin"], quiet=True)
    assert path.read_bytes() == PAYLOAD and server.log[0][0] == "/b.bin"


def test_progress_line_has_no_control_chars_when_not_a_tty(server, tmp_path, capsys):
    server.files["a.bin"] = PAYLOAD
    dl.fetch("a.bin", tmp_path, [server.url + "a.bin"])
    err = capsys.readouterr().err
    assert "a.bin: " in err and "(100%)" in err and "\r" not in err and "\x1b" not in err


def test_extract_refuses_escaping_entries(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escape.txt", "bad")
    with pytest.raises(dl.DownloadError, match=r"'\.\./escape\.txt' would be written outside"):
        dl.extract(z, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "ok.txt").exists()
    t = tmp_path / "evil.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        info = tarfile.TarInfo("/etc/owned")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.extract(t, tmp_path / "out2")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("sub/a.txt", "A")
    assert [p.name for p in dl.extract(good, tmp_path / "out3")] == ["a.txt"]
    (tmp_path / "page.zip").write_bytes(b"<html>nope</html>")
    with pytest.raises(dl.DownloadError, match="neither a zip nor a tar"):
        dl.extract(tmp_path / "page.zip", tmp_path / "out4")


# ------------------------------------------------------------------------------------------ data sets
def _idx(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
    return gzip.compress(head + arr.tobytes())


def test_mnist_download_and_prepare_from_http_mirror(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    blobs = {"train-images-idx3-ubyte.gz": _idx(imgs), "train-labels-idx1-ubyte.gz": _idx(labels),
             "t10k-images-idx3-ubyte.gz": _idx(imgs[:20]), "t10k-labels-idx1-ubyte.gz": _idx(labels[:20])}
    server.files.update(blobs)
    monkeypatch.setattr(mnist, "FILES", {k: {"md5": hashlib.md5(v).hexdigest()} for k, v in blobs.items()})
    monkeypatch.setattr(mnist, "URLS", [])  # the mirror only: no attempt at the real internet
    rec = fd.download("mnist", tmp_path / "raw", mirror=server.url, progress=False)
    assert set(rec["files"]) == set(blobs) and (tmp_path / "raw" / "source.json").exists()
    m = fd.prepare("mnist", tmp_path / "raw", tmp_path / "out", n_val=10, classes=[2, 4, 7, 8])
    s = fd.load_splits(tmp_path / "out", verify=True)
    assert s.train.shape == (12, 28, 28, 1) and s.val.shape == (4, 28, 28, 1) and s.test.shape == (8, 28, 28, 1)
    assert s.train.dtype == np.uint8 and m["notes"]["label_counts"]["test"][2] == 2
    assert np.array_equal(s.train[0, ..., 0], imgs[2])
    # a wrong checksum on the server is refused
    server.files["t10k-labels-idx1-ubyte.gz"] = _idx(labels[:19])
    with pytest.raises(dl.DownloadError, match=r"t10k-labels-idx1-ubyte.gz.*MD5"):
        fd.download("mnist", tmp_path / "raw2", mirror=server.url, progress=False)


def test_power_uci_zip_path_with_missing_values(server, tmp_path):
    rows = ["Date;Time;Global_active_power;Global_reactive_power;Voltage;Global_intensity;"
            "Sub_metering_1;Sub_metering_2;Sub_metering_3"]
    rng = np.random.default_rng(1)
    n = 400
    for i in range(n):
        if i % 37 == 5:
            rows.append(f"16/12/2006;{(i // 60) % 24:02d}:{i % 60:02d}:00;?;?;?;?;?;?;")
        else:
            v = rng.random(7)
            rows.append(f"16/12/2006;{(i // 60) % 24:02d}:{i % 60:02d}:00;{v[0]:.3f};{v[1]:.3f};{230 + v[2]:.2f};"
                        f"{v[3]:.1f};{v[4]:.3f};{v[5]:.3f};{v[6]:.3f}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("household_power_consumption.txt", "\n".join(rows) + "\n")
    server.files[power.UCI_ZIP] = buf.getvalue()
    fd.download("power", tmp_path / "raw", mirror=server.url, source="uci")
    m = fd.prepare("power", tmp_path / "raw", tmp_path / "out", source="uci")
    missing = len([i for i in range(n) if i % 37 == 5])
    kept = n - missing
    assert m["notes"]["rows_kept"] == kept and m["notes"]["rows_dropped"] == missing
    n_test = int(0.1 * kept)
    n_val = int(0.1 * (kept - n_test))
    assert m["sizes"] == {"train": kept - n_test - n_val, "val": n_val, "test": n_test}
    s = fd.load_splits(tmp_path / "out")
    both = np.concatenate([s.train, s.val]).astype(np.float64)
    assert np.allclose(both.mean(0), 0, atol=1e-5) and np.allclose(both.std(0), 1, atol=1e-4)
