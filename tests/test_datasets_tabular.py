"""GAS, HEPMASS, MINIBOONE and BSDS300: the MAF-archive and raw-UCI paths on small files in the upstream formats."""

import gzip
import hashlib
import io
import pickle
import tarfile
import types
import zipfile

import h5py
import numpy as np
import pytest

import flows.datasets as fd
from flows.datasets import downloader as dl
from flows.datasets import legacy_pickle, tabular

from test_datasets_download import server  # noqa: F401  (the 127.0.0.1 HTTP server fixture)


# ------------------------------------------------------------------------------------------ an old-pandas pickle
def _fake(module, name):
    def f(*a):
        raise AssertionError("never called")

    f._pd = (module, name)
    return f


class _LegacyPickler(pickle._Pickler):
    """Writes pandas globals by name, as pandas 0.2x's pickles do, without needing that pandas."""

    def save_global(self, obj, name=None):
        pd = getattr(obj, "_pd", None)
        if pd is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{pd[0]}\n{pd[1]}\n".encode())
        self.memoize(obj)

    def save_newobj(self, obj):  # cls.__new__(cls) then __setstate__(state): NEWOBJ + BUILD, as protocol 2 writes
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch = dict(pickle._Pickler.dispatch)


class _Obj:
    def __init__(self, cls, state):
        self.cls, self.state = cls, state


class _Idx:
    def __init__(self, cls, d):
        self.cls, self.d = cls, d

    def __reduce_ex__(self, proto):
        return _fake("pandas.core.indexes.base", "_new_Index"), (self.cls, self.d), None


_LegacyPickler.dispatch[_Obj] = _LegacyPickler.save_newobj
_LegacyPickler.dispatch[types.FunctionType] = _LegacyPickler.save_global


def legacy_dataframe_pickle(columns, values: np.ndarray) -> bytes:
    """A DataFrame pickle laid out as pandas 0.20 wrote it: one float block, an Index of names, a RangeIndex."""
    cols = _Idx(_fake("pandas.core.indexes.base", "Index"), {"data": np.array(columns, dtype=object), "name": None})
    rows = _Idx(_fake("pandas.core.indexes.range", "RangeIndex"), {"start": 0, "stop": len(values), "step": 1,
                                                                   "name": None})
    block = values.T.copy()
    mgr_state = ([cols, rows], [block], [cols],
                 {"0.14.1": {"axes": [cols, rows], "blocks": [{"values": block, "mgr_locs": slice(0, len(columns), 1)}]}})
    mgr = _Obj(_fake("pandas.core.internals", "BlockManager"), mgr_state)
    frame = _Obj(_fake("pandas.core.frame", "DataFrame"), {"_data": mgr, "_typ": "dataframe", "_metadata": []})
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(frame)
    return buf.getvalue()


def test_legacy_pickle_reader_reads_blocks_and_refuses_code(tmp_path):
    vals = np.random.default_rng(0).standard_normal((7, 3))
    (tmp_path / "df.pickle").write_bytes(legacy_dataframe_pickle(["Time", "Meth", "s1"], vals))
    cols, got = legacy_pickle.read_dataframe_pickle(tmp_path / "df.pickle")
    assert cols == ["Time", "Meth", "s1"] and np.array_equal(got, vals)
    (tmp_path / "evil.pickle").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="os.system is not allowed"):
        legacy_pickle.read_dataframe_pickle(tmp_path / "evil.pickle")


# ------------------------------------------------------------------------------------------ small upstream files
def _gas_sensors(n, rng):
    base = rng.standard_normal((n, 8))
    return np.concatenate([base + 0.001 * rng.standard_normal((n, 8)), base], 1)  # cols j and j+8 correlate


def _hepmass_csv(n, rng, extra_col):
    feats = rng.standard_normal((n, 27))
    feats[:, 20:26] = rng.integers(0, 3, (n, 6))  # 6 discrete features: their smallest value repeats > 5 times
    labels = (np.arange(n) % 2).astype(float)
    cols = ["# label"] + [f"f{i}" for i in range(26)] + ["mass"] + (["extra"] if extra_col else [])
    data = np.concatenate([labels[:, None], feats] + ([rng.standard_normal((n, 1))] if extra_col else []), 1)
    lines = [",".join(cols)] + [",".join(f"{v:.6f}" for v in row) for row in data]
    return ("\n".join(lines) + "\n").encode(), data


@pytest.fixture
def maf_archive(tmp_path):
    rng = np.random.default_rng(0)
    gas = np.concatenate([rng.standard_normal((300, 3)), _gas_sensors(300, rng)], 1)
    hep_train, hep_train_data = _hepmass_csv(400, rng, extra_col=False)
    hep_test, hep_test_data = _hepmass_csv(200, rng, extra_col=True)
    mini = rng.standard_normal((300, 43))
    h5 = io.BytesIO()
    with h5py.File(h5, "w") as f:
        for k, n in (("train", 100), ("validation", 20), ("test", 30)):
            f[k] = rng.standard_normal((n, 63))
    members = {
        "data/gas/ethylene_CO.pickle": legacy_dataframe_pickle(["Time", "Meth", "Eth"] + [f"s{i}" for i in range(16)], gas),
        "data/hepmass/1000_train.csv": hep_train,
        "data/hepmass/1000_test.csv": hep_test,
        "data/miniboone/data.npy": _npy(mini),
        "data/BSDS300/BSDS300.hdf5": h5.getvalue(),
        "data/power/data.npy": _npy(np.zeros((3, 8))),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue(), {"gas": gas, "mini": mini, "hep_train": hep_train_data, "hep_test": hep_test_data}


def _npy(arr):
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def test_maf_archive_paths(server, maf_archive, tmp_path, monkeypatch):  # noqa: F811
    blob, src = maf_archive
    server.files["data.tar.gz"] = blob
    monkeypatch.setattr(tabular, "MAF_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(tabular, "MAF_URLS", [server.url + "data.tar.gz"])
    # MINIBOONE: split by order, standardised with train + validation
    m = fd.prepare("miniboone", tmp_path / "raw_m", tmp_path / "out_m")
    assert m["sizes"] == {"train": 243, "val": 27, "test": 30}
    assert sorted(p.name for p in (tmp_path / "raw_m" / "data").iterdir()) == ["miniboone"]  # only what it needs
    s = fd.load_splits(tmp_path / "out_m")
    both = np.concatenate([s.train, s.val]).astype(np.float64)
    assert np.allclose(both.mean(0), 0, atol=1e-5) and np.allclose(s.test[0], (src["mini"][270] - src["mini"][:270].mean(0))
                                                                    / src["mini"][:270].std(0), atol=1e-5)
    # BSDS300 as is
    m = fd.prepare("bsds300", tmp_path / "raw_b", tmp_path / "out_b")
    assert m["sizes"] == {"train": 100, "val": 20, "test": 30}
    # GAS from the old-pandas pickle: 16 -> 8 columns, split by order
    m = fd.prepare("gas", tmp_path / "raw_g", tmp_path / "out_g", source="maf")
    assert m["notes"]["kept_sensor_columns"] == list(range(8, 16)) and m["sizes"] == {"train": 243, "val": 27, "test": 30}
    s = fd.load_splits(tmp_path / "out_g")
    kept = src["gas"][:, 3 + 8:]
    want = (kept - kept.mean(0)) / kept.std(0, ddof=1)
    assert np.allclose(s.test, want[-30:], atol=1e-5)
    # HEPMASS from the archive: 27 -> 21 features, test's last column dropped
    m = fd.prepare("hepmass", tmp_path / "raw_h", tmp_path / "out_h", source="maf")
    assert m["sizes"] == {"train": 180, "val": 20, "test": 100} and len(m["notes"]["kept_feature_columns"]) == 21
    # a corrupted archive (wrong MD5) is refused, naming the file
    monkeypatch.setattr(tabular, "MAF_MD5", "0" * 32)
    with pytest.raises(dl.DownloadError, match=r"data.tar.gz.*MD5"):
        fd.download("miniboone", tmp_path / "raw_x")


def _gas_zip(rng, n: int = 1000, extra: dict | None = None) -> bytes:
    """UCI's GAS data.zip: ethylene_CO.txt with ``n`` rows (time, CO, ethylene, 16 sensors), plus ``extra`` files."""
    table = np.concatenate([np.arange(n)[:, None] * 0.01, rng.random((n, 2)), _gas_sensors(n, rng)], 1)
    text = "Time (seconds), CO conc (ppm), Ethylene conc (ppm), Sensor readings (16 channels)\n" + "\n".join(
        "  ".join(f"{v:.4f}" for v in row) for row in table) + "\n"
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ethylene_CO.txt", text)
        for name, body in (extra or {}).items():
            zf.writestr(name, body)
    return z.getvalue()


def test_raw_uci_paths(server, maf_archive, tmp_path):  # noqa: F811
    rng = np.random.default_rng(5)
    server.files["data.zip"] = _gas_zip(rng, extra={"ethylene_methane.txt": "unused\n"})
    fd.download("gas", tmp_path / "raw_g", mirror=server.url)
    m = fd.prepare("gas", tmp_path / "raw_g", tmp_path / "out_g", seed=1)
    assert m["notes"]["rows_sampled"] == 250 and m["sizes"] == {"train": 203, "val": 22, "test": 25}
    assert m["notes"]["kept_sensor_columns"] == list(range(8, 16)) and "not MAF's rows" in m["notes"]["warning"]
    # HEPMASS raw: the same recipe on csv.gz gives the same result as the archive's csv
    _, src = maf_archive
    for name, data in (("1000_train.csv.gz", src["hep_train"]), ("1000_test.csv.gz", src["hep_test"])):
        cols = ["# label"] + [f"c{i}" for i in range(data.shape[1] - 1)]
        csv = "\n".join([",".join(cols)] + [",".join(f"{v:.6f}" for v in row) for row in data]) + "\n"
        server.files[name] = gzip.compress(csv.encode())
    fd.download("hepmass", tmp_path / "raw_h", mirror=server.url)
    m = fd.prepare("hepmass", tmp_path / "raw_h", tmp_path / "out_h")
    s = fd.load_splits(tmp_path / "out_h")
    sig_tr = src["hep_train"][src["hep_train"][:, 0] == 1][:, 1:]
    mu, sd = sig_tr.mean(0), sig_tr.std(0, ddof=1)
    keep = m["notes"]["kept_feature_columns"]
    assert keep == [i for i in range(27) if not 20 <= i <= 25]
    sig_te = src["hep_test"][src["hep_test"][:, 0] == 1][:, 1:-1]
    assert np.allclose(s.test, ((sig_te - mu) / sd)[:, keep], atol=1e-5)
    with pytest.raises(ValueError, match=r"datasets.miniboone.data.source = 'uci' is invalid: accepted: maf"):
        fd.download("miniboone", tmp_path / "raw_m", source="uci")


# ------------------------------------------------------------------------------------------ CelebA
def test_celeba_through_drive_confirmation_with_crop_and_partition(server, tmp_path, monkeypatch):  # noqa: F811
    from PIL import Image

    from flows.datasets import celeba

    rng = np.random.default_rng(0)
    z = io.BytesIO()
    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    with zipfile.ZipFile(z, "w") as zf:
        for name in names:
            img = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            b = io.BytesIO()
            Image.fromarray(img).save(b, format="JPEG", quality=95)
            zf.writestr(f"img_align_celeba/{name}", b.getvalue())
    partition = "".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 0, 1, 1, 2, 2]))
    blobs = {"img_align_celeba.zip": z.getvalue(), "list_eval_partition.txt": partition.encode()}

    def drive(path):
        for info_name, blob in blobs.items():
            if f"id=ID-{info_name}" in path:
                if "confirm=" in path or len(blob) < 1000:
                    return blob
                return b'<html><body><form><input name="confirm" value="yes1"></form> virus scan warning</body></html>'
        return b"<html>not found</html>"

    server.files["uc"] = drive
    monkeypatch.setattr(celeba, "_DRIVE", server.url + "uc?export=download&id=")
    monkeypatch.setattr(celeba, "FILES", {n: {"id": f"ID-{n}", "md5": hashlib.md5(b).hexdigest()} for n, b in blobs.items()})
    m = fd.prepare("celeba32", tmp_path / "raw", tmp_path / "out", progress=False)
    assert m["sizes"] == {"train": 3, "val": 2, "test": 2} and m["notes"]["partition_sizes"] == [3, 2, 2]
    s = fd.load_splits(tmp_path / "out", verify=True)
    assert s.train.shape == (3, 32, 32, 3) and s.train.dtype == np.uint8
    with zipfile.ZipFile(tmp_path / "raw" / "img_align_celeba.zip") as zf:
        first = np.asarray(Image.open(io.BytesIO(zf.read("img_align_celeba/000006.jpg"))).convert("RGB"))
    assert np.array_equal(s.test[0], celeba.crop_resize(first, 32))
    assert any("confirm=yes1" in p for p, _ in server.log)


def test_celeba_crop_resize_is_tf1_bilinear():
    img = np.zeros((218, 178, 3), np.uint8)
    img[40:188, 15:163] = np.arange(148, dtype=np.uint8)[None, :, None]  # a horizontal ramp inside the crop
    img[:40] = 255  # outside the crop: must not leak in
    from flows.datasets.celeba import crop_resize

    out = crop_resize(img, 64)
    # legacy TF1 sampling: column j reads source x = j * 148 / 64 (no half-pixel offset)
    assert out.shape == (64, 64, 3) and out[0, 0, 0] == 0 and out[:, 1, 0].tolist() == [2] * 64
    assert out[5, 10, 1] == round(10 * 148 / 64) and out.max() < 148
