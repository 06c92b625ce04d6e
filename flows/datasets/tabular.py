"""GAS, HEPMASS, MINIBOONE and BSDS300 with MAF's preprocessing, from the MAF archive or the raw UCI files.

Recipes: MAF (Papamakarios, Pavlakou, Murray, 2017, "Masked Autoregressive Flow for Density Estimation",
arXiv:1705.07057), code gpapamak/maf ``datasets/{gas,hepmass,miniboone,bsds300}.py``; see docs/benchmarks.md
sections 2-3. Sources (param ``source``):

* ``"maf"``: the preprocessed archive used by MAF, NSF, FFJORD and BNAF (Zenodo record 1161203,
  ``data.tar.gz``, MD5 9b9c9b0375315ad270eba4ce80c093ab); only the members a data set needs are extracted.
  GAS there is a pandas pickle written by pandas < 2; :mod:`flows.datasets.legacy_pickle` reads it with a
  restricted unpickler, without pandas.
* ``"uci"``: the raw UCI files. GAS: ``ethylene_CO.txt`` in 00322/data.zip; MAF's pickle is a random 25 %
  sample of it with an unknown seed, so the raw route draws its own sample (``fraction``, ``seed``) and cannot
  reproduce MAF's rows. HEPMASS: 00347/1000_{train,test}.csv.gz, the same rows and recipe as MAF.
  MINIBOONE: not offered raw: MAF removed 7 of its 50 columns by a rule that cannot be recovered with
  certainty from MiniBooNE_PID.txt, so only the archive reproduces the published data.
"""

from __future__ import annotations

from ..errors import DataError

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

from . import downloader as dl
from ._core import DatasetSpec, register_dataset, sha256_file

__all__ = ["maf_gas", "maf_hepmass", "maf_miniboone", "MAF_ARCHIVE", "MAF_URLS", "MAF_MD5"]

MAF_ARCHIVE = "data.tar.gz"
MAF_MD5 = "9b9c9b0375315ad270eba4ce80c093ab"
MAF_URLS = ["https://zenodo.org/record/1161203/files/data.tar.gz",
            "https://zenodo.org/records/1161203/files/data.tar.gz"]
UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/"
MEMBERS = {
    "gas": ["data/gas/ethylene_CO.pickle"],
    "hepmass": ["data/hepmass/1000_train.csv", "data/hepmass/1000_test.csv"],
    "miniboone": ["data/miniboone/data.npy"],
    "bsds300": ["data/BSDS300/BSDS300.hdf5"],
}
RAW = {
    "gas": {"data.zip": UCI + "00322/data.zip"},
    "hepmass": {"1000_train.csv.gz": UCI + "00347/1000_train.csv.gz", "1000_test.csv.gz": UCI + "00347/1000_test.csv.gz"},
}


def _split_by_order(data):
    """MAF's split: test = last int(0.1 N) rows; validation = last int(0.1 N') of the rest."""
    n_test = int(0.1 * len(data))
    rest = data[: len(data) - n_test]
    n_val = int(0.1 * len(rest))
    return rest[: len(rest) - n_val], rest[len(rest) - n_val:], data[len(data) - n_test:]


def maf_gas(table: np.ndarray):
    """MAF's GAS recipe on the 16 sensor columns (float64 [n, 16]); returns (train, val, test, kept columns).

    Repeatedly drop the first column whose Pearson correlation with another column exceeds 0.98; standardise
    with the whole table (ddof 1); split by order.
    """
    cols = list(range(table.shape[1]))
    while True:
        c = np.corrcoef(table[:, cols], rowvar=False)
        counts = (c > 0.98).sum(axis=1)
        over = np.flatnonzero(counts > 1)
        if len(over) == 0:
            break
        del cols[over[0]]
    data = table[:, cols]
    data = (data - data.mean(0)) / data.std(0, ddof=1)
    return (*_split_by_order(data), cols)


def maf_hepmass(train: np.ndarray, test: np.ndarray):
    """MAF's HEPMASS recipe on signal rows without labels; returns (train, val, test, kept columns).

    ``test`` arrives with its extra last column already removed. Standardise with training moments (ddof 1);
    drop every feature whose smallest value occurs more than 5 times in the training set; validation = last
    10 % of train.
    """
    mu, sd = train.mean(0), train.std(0, ddof=1)
    train, test = (train - mu) / sd, (test - mu) / sd
    keep = []
    for i, feature in enumerate(train.T):
        smallest = feature.min()
        if (feature == smallest).sum() <= 5:
            keep.append(i)
    train, test = train[:, keep], test[:, [k for k in keep if k < test.shape[1]]]
    n_val = int(0.1 * len(train))
    return train[: len(train) - n_val], train[len(train) - n_val:], test, keep


def maf_miniboone(data: np.ndarray):
    """MAF's MINIBOONE recipe on the archive's 43-column table: split by order, standardise with train + val (ddof 0)."""
    train, val, test = _split_by_order(data)
    both = np.concatenate([train, val])
    mu, sd = both.mean(0), both.std(0)
    return (train - mu) / sd, (val - mu) / sd, (test - mu) / sd


# ------------------------------------------------------------------------------------------ fetch / read
def _fetch_maf(name, raw_dir: Path, mirror, params):
    raw_dir = Path(raw_dir).resolve()  # extract() returns resolved paths: relative_to needs the same form
    archive = dl.fetch(MAF_ARCHIVE, raw_dir, MAF_URLS, mirror=mirror, md5=None if params["skip_md5"] else MAF_MD5,
                       how_to="download data.tar.gz from https://zenodo.org/record/1161203 into a directory and "
                              f"pass it as mirror= (or set {dl.MIRROR_ENV})")
    written = dl.extract(archive, raw_dir, members=MEMBERS[name])
    if len(written) != len(MEMBERS[name]):
        got = sorted(str(p.relative_to(raw_dir)) for p in written)
        raise dl.DownloadError(f"{archive} lacks {sorted(set(MEMBERS[name]) - set(got))}; is it the MAF archive?")
    files = {MAF_ARCHIVE: {"bytes": archive.stat().st_size, "sha256": sha256_file(archive), "md5": MAF_MD5}}
    for p in written:
        files[str(p.relative_to(raw_dir))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {"source": "MAF preprocessed archive (Zenodo 1161203)", "urls": MAF_URLS, "files": files}


def _fetch(name):
    def fetch(raw_dir: Path, mirror, params):
        if params["source"] == "maf":
            return _fetch_maf(name, raw_dir, mirror, params)
        if name not in RAW:
            raise DataError(f"dataset {name!r}: source = {params['source']!r}; accepted: maf")
        files = {}
        for fname, url in RAW[name].items():
            p = dl.fetch(fname, raw_dir, [url], mirror=mirror)
            files[fname] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        return {"source": "UCI machine learning repository", "urls": list(RAW[name].values()), "files": files}

    return fetch


def _hepmass_tables(raw_dir: Path, source):
    if source == "maf":
        opener = lambda n: open(raw_dir / "data" / "hepmass" / n, "rb")  # noqa: E731
        names = ("1000_train.csv", "1000_test.csv")
    else:
        opener = lambda n: gzip.open(raw_dir / n, "rb")  # noqa: E731
        names = ("1000_train.csv.gz", "1000_test.csv.gz")
    import pandas as pd

    with opener(names[0]) as f:
        train = pd.read_csv(f, index_col=False).to_numpy(np.float64)
    with opener(names[1]) as f:
        test = pd.read_csv(f, index_col=False).to_numpy(np.float64)
    # keep signal rows (label 1 in column 0), drop the label; the test file's last column goes too (as MAF)
    train = train[train[:, 0] == 1][:, 1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    return train, test


def _gas_table(raw_dir: Path, params, seed):
    if params["source"] == "maf":
        from .legacy_pickle import read_dataframe_pickle

        columns, values = read_dataframe_pickle(raw_dir / "data" / "gas" / "ethylene_CO.pickle")
        drop = {"Time", "Meth", "Eth"}
        keep = [i for i, c in enumerate(columns) if str(c) not in drop]
        if len(keep) != 16:
            raise DataError(f"GAS pickle has columns {columns}; expected Time, Meth, Eth and 16 sensors")
        return values[:, keep], {"rows_in_pickle": len(values)}
    import pandas as pd

    with zipfile.ZipFile(raw_dir / "data.zip") as zf:
        name = next(n for n in zf.namelist() if n.endswith("ethylene_CO.txt"))
        with zf.open(name) as f:
            table = pd.read_csv(io.TextIOWrapper(f), sep=r"\s+", skiprows=1, header=None,
                                dtype=np.float64).to_numpy(np.float64)
    if table.shape[1] != 19:
        raise DataError(f"ethylene_CO.txt has {table.shape[1]} columns; expected 19 (time, CO, ethylene, 16 sensors)")
    n = len(table)
    take = np.random.RandomState(seed).permutation(n)[: int(round(params["fraction"] * n))]
    return table[take, 3:], {"rows_in_file": n, "rows_sampled": len(take),
                             "warning": "a fresh random sample, not MAF's rows (its seed is unknown)"}


def _build(name):
    def build(raw_dir: Path, params, seed):
        raw_dir = Path(raw_dir)
        notes = {"source": params["source"], "recipe": f"MAF gpapamak/maf datasets/{name}.py"}
        if name == "gas":
            table, info = _gas_table(raw_dir, params, seed)
            train, val, test, cols = maf_gas(table)
            notes.update(info, kept_sensor_columns=cols)
        elif name == "hepmass":
            tr, te = _hepmass_tables(raw_dir, params["source"])
            train, val, test, cols = maf_hepmass(tr, te)
            notes.update(kept_feature_columns=cols, signal_rows_train=len(tr), signal_rows_test=len(te))
        elif name == "miniboone":
            train, val, test = maf_miniboone(np.load(raw_dir / "data" / "miniboone" / "data.npy"))
        else:  # bsds300: used as is
            import h5py

            with h5py.File(raw_dir / "data" / "BSDS300" / "BSDS300.hdf5", "r") as f:
                train, val, test = (np.asarray(f[k], dtype=np.float32) for k in ("train", "validation", "test"))
        notes["units"] = "standardised features; log-likelihoods in nats" if name != "bsds300" else \
            "8x8 patches, dequantised, scaled, mean-subtracted, last pixel dropped (as MAF); nats"
        return {"train": np.asarray(train, np.float32), "val": np.asarray(val, np.float32),
                "test": np.asarray(test, np.float32), "notes": notes}

    return build


for _name, _d, _src, _extra in (("gas", 8, "uci", {"fraction": 0.25}), ("hepmass", 21, "uci", {}),
                                ("miniboone", 43, "maf", {}), ("bsds300", 63, "maf", {})):
    register_dataset(DatasetSpec(
        name=_name, kind="tabular", event_shape=(_d,), offline=False,
        defaults={"source": _src, "skip_md5": False, **_extra}, fetch=_fetch(_name), build=_build(_name),
        choices={"source": ("maf", "uci") if _name in RAW else ("maf",)},
        description=f"{_name.upper()} with MAF's preprocessing ({_d}-D)", units="nats"))
