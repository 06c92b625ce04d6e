"""What every stage shares: the repository paths, params.yaml loading and validation, atomic writes, and the
one-line error exit.  Validation runs before any work, so a bad value costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"

#: training settings accepted under datasets.<name>.train, with their types and lower bounds
TRAIN_KEYS: dict[str, tuple[type, float | None]] = {
    "steps": (int, 1),
    "batch_size": (int, 1),
    "learning_rate": (float, 0.0),
    "eval_every": (int, 1),
    "eval_batch_size": (int, 1),
    "clip_norm": (float, 0.0),
    "patience": (int, 0),
    "max_val": (int, 1),
    "logit_alpha": (float, 0.0),
    "checkpoint_every": (int, 0),
    "keep_checkpoints": (int, 1),
    "jit_compile": (bool, None),
    "steps_per_call": (int, 0),
    "mixed_precision": (bool, None),
    "deterministic": (bool, None),
}
TOP_KEYS = {"seed", "flow", "dataset", "grid", "flows", "datasets", "data", "figures"}
FIGURE_KEYS = {"energy_layers": 16, "energy_steps": 500}


class ParamsError(ValueError):
    """A value in params.yaml is wrong; the message names the key, the value and what is accepted."""


class StageError(RuntimeError):
    """A stage cannot run (missing input, bad file); the message says which and what to do."""


def _expected_errors() -> tuple[type, ...]:
    """The exceptions that mean bad input rather than a bug: reported in one line, without a traceback."""
    errors = [ParamsError, StageError, OSError, ValueError, TypeError, FloatingPointError]
    downloader = sys.modules.get("flows.datasets.downloader")  # imported by every stage that downloads
    if downloader is not None:
        errors.append(downloader.DownloadError)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # "[Errno 13] Permission denied: 'x'" -> "x: Permission denied" (the file first, as the other messages)
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{where}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def run_main(main):
    """Run a stage's main(); turn expected errors into one line on stderr and exit status 2."""
    try:
        main()
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise  # a bug: keep the traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)  # one line, whatever the message contained
        sys.exit(2)


# --------------------------------------------------------------------------------------------- params
def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def _fail(key: str, value: Any, expected: str, file: str = PARAMS_FILE):
    raise ParamsError(f"{file}: {key} = {value!r} is invalid: {expected}")


def _accepted(names) -> str:
    return ", ".join(sorted(names))


def load_params(path: str | os.PathLike | None = None) -> dict:
    """Read and validate params.yaml; returns the dict with every section completed by the defaults."""
    import flows
    import flows.datasets as fd
    from flows._options import size_problem

    path = Path(path) if path else Path.cwd() / PARAMS_FILE
    name = path.name
    if not path.exists():
        raise StageError(f"{path} not found: run the stage from the repository root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{name}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        _fail("<top level>", raw, "a mapping of sections", name)
    unknown = set(raw) - TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ParamsError(f"{name}: unknown key {key!r}; accepted: {_accepted(TOP_KEYS)}")

    seed = raw.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        _fail("seed", seed, "a non-negative integer", name)

    flow_names, ds_names = set(flows.FLOWS), set(fd.DATASETS)

    def check_flow(key, value):
        if not isinstance(value, str) or value not in flow_names:
            _fail(key, value, f"accepted flows: {_accepted(flow_names)}", name)

    def check_dataset(key, value):
        if not isinstance(value, str) or value not in ds_names:
            _fail(key, value, f"accepted datasets: {_accepted(ds_names)}", name)

    check_flow("flow", raw.get("flow"))
    check_dataset("dataset", raw.get("dataset"))

    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or set(grid) - {"flows", "datasets"}:
        _fail("grid", grid, "a mapping with keys flows and datasets (lists of names)", name)
    for sub, check in (("flows", check_flow), ("datasets", check_dataset)):
        items = grid.get(sub, [])
        if not isinstance(items, list) or not items:
            _fail(f"grid.{sub}", items, "a non-empty list of names", name)
        if len(set(items)) != len(items):
            _fail(f"grid.{sub}", items, "names must not repeat", name)
        for i, item in enumerate(items):
            check(f"grid.{sub}[{i}]", item)

    flow_sections = raw.get("flows") or {}
    if not isinstance(flow_sections, dict):
        _fail("flows", flow_sections, "a mapping flow name -> hyper-parameters", name)
    full_flows = {}
    for fname, hp in flow_sections.items():
        if fname not in flow_names:
            check_flow(f"flows.{fname}", fname)
        if hp is not None and not isinstance(hp, dict):
            _fail(f"flows.{fname}", hp, "a mapping of hyper-parameters", name)
        try:
            full_flows[fname] = flows.check_hparams(fname, hp or {}, where=f"{name}: flows.{fname}")
        except ValueError as exc:
            raise ParamsError(str(exc)) from None
    for fname in flow_names:
        full_flows.setdefault(fname, flows.check_hparams(fname, {}))

    ds_sections = raw.get("datasets") or {}
    if not isinstance(ds_sections, dict):
        _fail("datasets", ds_sections, "a mapping dataset name -> {data, train}", name)
    full_ds = {}
    for dname in ds_names | set(ds_sections):
        section = ds_sections.get(dname) or {}
        key = f"datasets.{dname}"
        if dname not in ds_names:
            _fail(key, dname, f"accepted datasets: {_accepted(ds_names)}", name)
        allowed = {"data", "train", "overrides"}
        if not isinstance(section, dict) or set(section) - allowed:
            bad = sorted(set(section) - allowed) if isinstance(section, dict) else section
            _fail(key, bad, "a mapping with keys data (preparation), train (training settings) and "
                  "overrides (per-flow hparams/train)", name)
        try:
            data = fd.check_params(dname, section.get("data") or {})
        except ValueError as exc:
            raise ParamsError(f"{name}: {key}.data: {' '.join(str(exc).split())}") from None
        for k, v in (section.get("data") or {}).items():  # sizes (n_train, ...): positive
            problem = size_problem(k, fd.DATASETS[dname].defaults[k], v)
            if problem:
                _fail(f"{key}.data.{k}", v, problem, name)
        train = check_train(section.get("train") or {}, f"{key}.train", name)
        overrides = section.get("overrides") or {}
        if not isinstance(overrides, dict):
            _fail(f"{key}.overrides", overrides, "a mapping flow name -> {hparams, train}", name)
        full_over = {}
        for fname, over in overrides.items():
            okey = f"{key}.overrides.{fname}"
            if fname not in flow_names:
                _fail(okey, fname, f"accepted flows: {_accepted(flow_names)}", name)
            if not isinstance(over, dict) or set(over) - {"hparams", "train"}:
                _fail(okey, over, "a mapping with keys hparams and train", name)
            try:
                flows.check_hparams(fname, over.get("hparams") or {}, where=f"{name}: {okey}.hparams")
            except ValueError as exc:
                raise ParamsError(str(exc)) from None
            check_train(over.get("train") or {}, f"{okey}.train", name)
            full_over[fname] = {"hparams": dict(over.get("hparams") or {}), "train": dict(over.get("train") or {})}
        full_ds[dname] = {"data": data, "train": train, "overrides": full_over}

    data = raw.get("data") or {}
    if not isinstance(data, dict) or set(data) - {"mirror"}:
        _fail("data", data, "a mapping with the key mirror (a directory or URL, or empty)", name)
    mirror = data.get("mirror") or ""
    if not isinstance(mirror, str):
        _fail("data.mirror", mirror, "a directory path or URL string (empty for none)", name)

    figures = raw.get("figures") or {}
    if not isinstance(figures, dict):
        _fail("figures", figures, f"a mapping with keys {_accepted(FIGURE_KEYS)}", name)
    for k, v in figures.items():
        if k not in FIGURE_KEYS:
            raise ParamsError(f"{name}: figures has no setting {k!r}; accepted: {_accepted(FIGURE_KEYS)}")
        if not _is_int(v) or v < 1:
            _fail(f"figures.{k}", v, "a positive integer", name)

    return {
        "seed": seed,
        "figures": {**FIGURE_KEYS, **figures},
        "flow": raw["flow"],
        "dataset": raw["dataset"],
        "grid": {"flows": list(grid["flows"]), "datasets": list(grid["datasets"])},
        "flows": full_flows,
        "datasets": full_ds,
        "data": {"mirror": mirror},
    }


def check_train(section: dict, key: str, file: str = PARAMS_FILE) -> dict:
    """Validate a datasets.<name>.train section against :data:`TRAIN_KEYS`; returns it with defaults filled."""
    from flows.training import TrainConfig

    if not isinstance(section, dict):
        _fail(key, section, "a mapping of training settings", file)
    out = {f.name: f.default for f in fields(TrainConfig) if f.name != "seed"}
    out["logit_alpha"] = 1e-6
    for k, v in section.items():
        if k not in TRAIN_KEYS:
            raise ParamsError(f"{file}: {key} has no setting {k!r}; accepted: {_accepted(TRAIN_KEYS)}")
        typ, low = TRAIN_KEYS[k]
        if typ is bool:
            if not isinstance(v, bool):
                _fail(f"{key}.{k}", v, "true or false", file)
        elif typ is int:
            if not _is_int(v) or v < low:
                _fail(f"{key}.{k}", v, f"an integer >= {low}" if low else "a non-negative integer", file)
        else:
            if not _is_num(v) or v < low or (k in ("learning_rate",) and v <= 0):
                _fail(f"{key}.{k}", v, "a positive number" if k == "learning_rate" else f"a number >= {low}", file)
            if k == "logit_alpha" and not v < 0.5:
                _fail(f"{key}.{k}", v, "a number in [0, 0.5)", file)
            v = float(v)
        out[k] = v
    return out


def cell_settings(params: dict, flow: str, dataset: str) -> tuple[dict, dict]:
    """(hyper-parameters, training settings) of one cell: the flow's and the data set's sections, with the data
    set's ``overrides.<flow>`` on top (paper-scale architectures differ per data set)."""
    import flows

    ds = params["datasets"][dataset]
    over = ds["overrides"].get(flow, {})
    hparams = flows.check_hparams(flow, {**params["flows"][flow], **over.get("hparams", {})})
    train = {**ds["train"], **over.get("train", {})}
    return hparams, train


# --------------------------------------------------------------------------------------------- paths
def cell_name(flow: str, dataset: str) -> str:
    return f"{flow}-{dataset}"


def raw_dir(dataset: str) -> Path:
    return Path("data") / "raw" / dataset


def processed_dir(dataset: str) -> Path:
    return Path("data") / "processed" / dataset


def load_checked_splits(dataset: str):
    """The prepared splits of ``dataset`` (data/processed/<dataset>), checked for use: present, the data set's
    event shape, and finite values.  Raises :class:`StageError` (one line naming the file and the problem)."""
    import flows.datasets as fd

    path = processed_dir(dataset)
    if not (path / "manifest.json").exists():
        raise StageError(f"{path} is missing: prepare it first (dvc repro prepare@{dataset})")
    splits = fd.load_splits(path)
    check_splits(splits, dataset, path)
    return splits


def check_splits(splits, dataset: str, path, chunk_rows: int = 1 << 16) -> None:
    """Raise :class:`StageError` if a split of ``splits`` has not the shape [n, *event_shape] of ``dataset``, has
    no rows, or holds NaN or Inf (float splits; read in chunks, so a memory-mapped split is never loaded whole)."""
    import numpy as np

    import flows.datasets as fd

    spec = fd.DATASETS[dataset]
    want = [int(d) for d in spec.event_shape]
    again = f"prepare it again (dvc repro -f prepare@{dataset})"
    for split in ("train", "val", "test"):
        arr = getattr(splits, split)
        file = Path(path) / f"{split}.npy"
        if arr.ndim != len(want) + 1 or list(arr.shape[1:]) != want:
            raise StageError(f"{file}: wrong dimensions: shape {list(arr.shape)}, expected [n, {', '.join(map(str, want))}] "
                             f"for {dataset}; {again}")
        if arr.shape[0] == 0:
            raise StageError(f"{file}: no rows; {again}")
        if np.issubdtype(arr.dtype, np.floating):
            for start in range(0, arr.shape[0], chunk_rows):
                block = np.asarray(arr[start:start + chunk_rows])
                bad = ~np.isfinite(block)
                if bad.any():
                    row = start + int(np.flatnonzero(bad.reshape(len(block), -1).any(axis=1))[0])
                    kinds = " and ".join(k for k, m in (("NaN", np.isnan(block)), ("Inf", np.isinf(block))) if m.any())
                    raise StageError(f"{file}: {kinds} in the data (first at row {row}); {again}")


# --------------------------------------------------------------------------------------------- writing
@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; on success rename it onto ``path`` (a file or a directory)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise StageError(f"cannot write {path}: {why} ({path.parent} is not a writable directory)") from None
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        import shutil

        shutil.rmtree(tmp.parent, ignore_errors=True)


def _settings_text(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def is_stamped(stamp: Path, settings: dict) -> bool:
    """Whether the stamp file ``stamp`` records exactly ``settings`` (see :func:`reset_unless_stamped`)."""
    stamp = Path(stamp)
    return stamp.exists() and stamp.read_text() == _settings_text(settings)


def reset_unless_stamped(directory: Path, stamp: Path, settings: dict, what: str) -> None:
    """Resumable work (partial downloads, training checkpoints) in ``directory`` is kept only if ``stamp`` says it
    was written with the same ``settings``; otherwise it is deleted (saying so on stderr). Then ``stamp`` records
    ``settings`` (written atomically), so a later run can resume."""
    directory, stamp = Path(directory), Path(stamp)
    if directory.exists() and not is_stamped(stamp, settings):
        print(f"discarding {directory}: {what} with other settings", file=sys.stderr)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not is_stamped(stamp, settings):
        tmp = stamp.with_name(stamp.name + ".tmp")
        tmp.write_text(_settings_text(settings))
        os.replace(tmp, stamp)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")
