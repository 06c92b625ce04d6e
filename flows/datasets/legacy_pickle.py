"""Read a pandas DataFrame pickle written by an old pandas (< 2) without pandas: a restricted unpickler.

MAF's GAS file (``ethylene_CO.pickle`` in the Zenodo archive) is a DataFrame pickled by pandas 0.2x, which
pandas >= 2 cannot read. A DataFrame pickle is a tree of a few pandas classes around numpy arrays:

    DataFrame.__setstate__({"_data": BlockManager, ...})
    BlockManager.__setstate__((axes, block_values, block_items, {"0.14.1": {"axes": axes,
                               "blocks": [{"values": 2-D array [items, rows], "mgr_locs": indexer}]}}))
    _new_Index(IndexClass, {"data": array, "name": ...}) / RangeIndex {"start", "stop", "step"}

This reader maps every pandas global to an inert stub that only records its state, allows from numpy only
what rebuilds arrays and dtypes, refuses every other global (so no code from the file runs), and assembles
the float table from the blocks.
"""

from __future__ import annotations

from ..errors import DataError

import pickle

import numpy as np

__all__ = ["read_dataframe_pickle"]


class _Stub:
    """Any pandas object: remembers its class name, construction arguments and state."""

    def __init__(self, *args, **kwargs):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


def _stub_class(name):
    return type(name, (_Stub,), {})


class _NewIndex:
    def __init__(self, cls, d=None, *rest):
        self.cls, self.d = getattr(cls, "__name__", str(cls)), d or {}


def _new_index(cls, d=None, *rest):
    return _NewIndex(cls, d, *rest)


def _latin1_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed; only latin1")
    return text.encode("latin1")


_NUMPY = {
    "_reconstruct": np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct,
    "scalar": np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar,
    "dtype": np.dtype,
    "ndarray": np.ndarray,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in _NUMPY:
            return _NUMPY[name]
        if module.split(".")[0] == "pandas":
            if name == "_new_Index":
                return _new_index
            return _stub_class(name)
        if (module, name) in (("builtins", "slice"), ("__builtin__", "slice")):
            return slice
        if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
            return lambda cls, base, state: cls()
        if (module, name) in (("builtins", "object"), ("__builtin__", "object")):
            return object
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes (numpy's raw data)
            return _latin1_encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a DataFrame pickle")


def _index_values(index):
    if isinstance(index, _NewIndex):
        d = index.d
        if "data" in d:
            return list(np.asarray(d["data"]).tolist())
        if "start" in d:
            return list(range(d["start"], d["stop"], d.get("step", 1)))
    if isinstance(index, np.ndarray):
        return index.tolist()
    raise DataError(f"unsupported index in the pickle: {type(index).__name__}")


def read_dataframe_pickle(path) -> tuple[list, np.ndarray]:
    """(column names, float64 values [rows, columns]) of an old-pandas DataFrame pickle at ``path``."""
    with open(path, "rb") as f:
        frame = _Unpickler(f, encoding="latin1").load()
    state = getattr(frame, "state", None)
    if not isinstance(state, dict) or "_data" not in state:
        raise DataError(f"{path} does not hold a pandas DataFrame pickle")
    mgr = state["_data"].state
    axes, extra = mgr[0], mgr[3] if len(mgr) > 3 else None
    columns, rows = _index_values(axes[0]), _index_values(axes[1])
    if isinstance(extra, dict) and "0.14.1" in extra:
        blocks = [(b["values"], b["mgr_locs"]) for b in extra["0.14.1"]["blocks"]]
    else:  # the pre-0.14.1 layout: (axes, block values, block items)
        blocks = [(v, [columns.index(c) for c in _index_values(items)]) for v, items in zip(mgr[1], mgr[2])]
    out = np.full((len(rows), len(columns)), np.nan)
    for values, locs in blocks:
        values = np.asarray(values)
        if values.dtype.kind not in "fiub":
            raise DataError(f"{path}: a block of dtype {values.dtype} is not numeric")
        idx = np.arange(len(columns))[locs] if isinstance(locs, slice) else np.asarray(locs)
        out[:, idx] = values.reshape(len(idx), len(rows)).T
    if np.isnan(out).all(axis=0).any():
        raise DataError(f"{path}: some columns were in no block")
    return [c.decode() if isinstance(c, bytes) else c for c in columns], out
