"""MNIST from the official IDX files (verified by MD5), with a class filter and a validation split.

Source: LeCun, Cortes, Burges, "The MNIST database of handwritten digits" (1998). Files and MD5s as in
torchvision (docs/benchmarks.md section 4); mirrors tried in order after ``mirror=`` / env ``FLOWS_DATA_MIRROR``.
Splits: the last ``n_val`` of the 60,000 training images are the validation set (MAF used 50,000 / 10,000),
the official 10,000 test images the test set; ``classes`` keeps only those labels (the seed used 2, 4, 7, 8).
Pixels stay uint8 0..255 [n, 28, 28, 1]; dequantise at training time (``images.dequantize_logit``, alpha 1e-6).
"""

from __future__ import annotations

from ..errors import DataError

import gzip
from pathlib import Path

import numpy as np

from . import downloader as dl
from ._core import DatasetSpec, register_dataset, sha256_file

__all__ = ["read_idx", "FILES", "URLS"]

FILES = {
    "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "size": 9912422},
    "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432"},
    "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3", "size": 1648877},
    "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c", "size": 4542},
}
URLS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/"]
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An IDX file (gzip or plain) as a numpy array: magic 0x0000 TT ND, ND big-endian int32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(f"{path}: {len(raw) - offset} data bytes for dims {dims.tolist()}, expected {expected}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


def _fetch(raw_dir: Path, mirror, params) -> dict:
    files = {}
    for name, check in FILES.items():
        path = dl.fetch(name, raw_dir, [u + name for u in URLS], mirror=mirror, md5=check["md5"],
                        size=None if params["skip_size_check"] else check.get("size"),
                        quiet=not params["progress"])
        files[name] = {"bytes": path.stat().st_size, "md5": check["md5"], "sha256": sha256_file(path)}
    return {"source": "MNIST IDX files (LeCun et al.)", "urls": URLS, "files": files}


def _build(raw_dir: Path, params, seed) -> dict:
    raw_dir = Path(raw_dir)
    x_tr = read_idx(raw_dir / "train-images-idx3-ubyte.gz")
    y_tr = read_idx(raw_dir / "train-labels-idx1-ubyte.gz")
    x_te = read_idx(raw_dir / "t10k-images-idx3-ubyte.gz")
    y_te = read_idx(raw_dir / "t10k-labels-idx1-ubyte.gz")
    for x, y, what in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"MNIST {what}: images {list(x.shape)} and labels {list(y.shape)} do not match")
    n_val = params["n_val"]
    if not 0 < n_val < len(x_tr):
        raise DataError(f"dataset 'mnist': n_val = {n_val} must be in 1..{len(x_tr) - 1}")
    x_va, y_va, x_tr, y_tr = x_tr[-n_val:], y_tr[-n_val:], x_tr[:-n_val], y_tr[:-n_val]
    classes = [int(c) for c in params["classes"]]
    bad = [c for c in classes if c not in range(10)]
    if bad:
        raise DataError(f"dataset 'mnist': classes = {params['classes']!r} has {bad}; accepted: integers 0..9")
    out = {}
    for split, x, y in (("train", x_tr, y_tr), ("val", x_va, y_va), ("test", x_te, y_te)):
        if classes:
            keep = np.isin(y, classes)
            x, y = x[keep], y[keep]
        out[split] = np.ascontiguousarray(x[..., None], dtype=np.uint8)
        out[f"{split}_labels"] = y.astype(np.int64)
    counts = {s: np.bincount(out[f"{s}_labels"], minlength=10).tolist() for s in ("train", "val", "test")}
    return {"train": out["train"], "val": out["val"], "test": out["test"],
            "extra": {f"{s}_labels": out[f"{s}_labels"] for s in ("train", "val", "test")},
            "notes": {"classes": classes or list(range(10)), "label_counts": counts,
                      "units": "pixel levels 0..255; bits/dim use log2(256) = 8"}}


register_dataset(DatasetSpec(
    name="mnist", kind="image", event_shape=(28, 28, 1), offline=False, levels=256,
    defaults={"n_val": 10000, "classes": [], "progress": True, "skip_size_check": False},
    fetch=_fetch, build=_build, description="MNIST 28x28 from the IDX files", units="pixel levels 0..255"))
