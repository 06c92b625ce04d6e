"""UCI optical recognition of handwritten digits (8 x 8, pixel levels 0..16), as shipped by scikit-learn.

Source: Alpaydin & Kaynak, UCI "Optical Recognition of Handwritten Digits" (1998); the 1,797 images of
``sklearn.datasets.load_digits``. A small real image set that works offline. Pixels keep their 17 levels
(uint8 0..16); dequantise at training time with ``images.dequantize_logit(pixels, levels=17, ...)``.
Split: a permutation drawn from ``numpy.random.default_rng(seed)``; the first ``n_test`` rows are the test
set, the next ``n_val`` the validation set, the rest the training set (after the optional class filter).
"""

from __future__ import annotations

from ..errors import DataError

from pathlib import Path

import numpy as np

from ._core import DatasetSpec, register_dataset, sha256_file

__all__ = ["load_raw"]

_RAW = "digits.npz"


def load_raw(raw_dir) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(raw_dir) / _RAW, allow_pickle=False) as z:
        return z["images"], z["labels"]


def _fetch(raw_dir: Path, mirror, params) -> dict:
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[..., None]
    if d.images.max() > 16 or not np.array_equal(images[..., 0], d.images):
        raise DataError("scikit-learn's digits are not integers 0..16 any more; refusing to cast them")
    tmp = Path(raw_dir) / (".tmp-" + _RAW)
    np.savez(tmp, images=images, labels=d.target.astype(np.int64))
    tmp.replace(Path(raw_dir) / _RAW)
    path = Path(raw_dir) / _RAW
    return {"source": f"scikit-learn {sklearn.__version__} load_digits (UCI optdigits test part, 1,797 images)",
            "files": {_RAW: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}}}


def _build(raw_dir: Path, params, seed) -> dict:
    images, labels = load_raw(raw_dir)
    classes = [int(c) for c in params["classes"]]
    bad = [c for c in classes if c not in range(10)]
    if bad:
        raise DataError(f"dataset 'digits': classes = {params['classes']!r} has {bad}; accepted: integers 0..9")
    if classes:
        keep = np.isin(labels, classes)
        images, labels = images[keep], labels[keep]
    n_test, n_val = params["n_test"], params["n_val"]
    if n_test < 1 or n_val < 1 or n_test + n_val >= len(images):
        raise DataError(f"dataset 'digits': n_test = {n_test}, n_val = {n_val} must be >= 1 and leave training "
                         f"rows out of {len(images)}")
    perm = np.random.default_rng(seed).permutation(len(images))
    te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return {"train": images[tr], "val": images[va], "test": images[te],
            "extra": {"train_labels": labels[tr], "val_labels": labels[va], "test_labels": labels[te]},
            "notes": {"levels": 17, "classes": classes or list(range(10)),
                      "units": "pixel levels 0..16; bits/dim use log2(17)"}}


register_dataset(DatasetSpec(
    name="digits", kind="image", event_shape=(8, 8, 1), offline=True, levels=17,
    defaults={"n_test": 360, "n_val": 180, "classes": []}, fetch=_fetch, build=_build,
    description="UCI handwritten digits 8x8 from scikit-learn", units="pixel levels 0..16"))
