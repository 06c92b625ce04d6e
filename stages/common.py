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
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = "params.yaml"

TOP_KEYS = {"seed", "flow", "dataset", "grid", "flows", "datasets", "data", "figures"}


class ParamsError(ValueError):
    """A value in params.yaml is wrong; the message names the key, the value and what is accepted."""


class StageError(RuntimeError):
    """A stage cannot run (missing input, bad file); the message says which and what to do."""


def _expected_errors() -> tuple[type, ...]:
    """The exceptions that mean bad input rather than a bug: the project's own error types and ``OSError``,
    reported in one line without a traceback.  Anything else (a bug in flows/, TensorFlow, Keras) keeps its
    traceback and a non-zero exit."""
    from flows.errors import FlowsError

    return (ParamsError, StageError, FlowsError, OSError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # "[Errno 13] Permission denied: 'x'" -> "x: Permission denied" (the file first, as the other messages)
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{where}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def run_main(main):
    """Run a stage's main(); turn expected errors into one line on stderr and exit status 2.  TensorFlow is
    imported first, without its start-up notices (:func:`stages.quiet.start_tensorflow`)."""
    from stages.quiet import start_tensorflow

    try:
        start_tensorflow()
        main()
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise  # a bug: keep the traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)  # one line, whatever the message contained
        sys.exit(2)


# --------------------------------------------------------------------------------------------- params
def _fail(key: str, value: Any, expected: str, file: str = PARAMS_FILE):
    raise ParamsError(f"{file}: {key} = {value!r} is invalid: {expected}")


def _accepted(names) -> str:
    return ", ".join(sorted(names))


#: the overview stage's settings (params.yaml ``figures``)
FIGURES = {"energy_layers": 16, "energy_steps": 500}


def load_params(path: str | os.PathLike | None = None) -> dict:
    """Read and validate params.yaml; returns the dict with every section completed by the defaults.

    Every section is checked by the one validator, :func:`flows.options.check_options`, against its schema:
    ``flows.<name>`` by the flow's registered options, ``datasets.<name>.data`` by the data set's,
    ``datasets.<name>.train`` and each ``overrides.<flow>.train`` by :class:`flows.training.TrainConfig`, and
    ``overrides.<flow>.hparams`` by the options of the form of the flow that data set uses; every grid cell is
    resolved once, so a bad combination fails here, before any work.
    """
    path = Path(path) if path else Path.cwd() / PARAMS_FILE
    if not path.exists():
        raise StageError(f"{path} not found: run the stage from the repository root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path.name}: not valid YAML ({' '.join(str(exc).split())})") from None
    from flows.errors import OptionsError

    try:
        return _checked(raw)
    except OptionsError as exc:
        raise ParamsError(f"{path.name}: {exc}") from None


def _checked(raw) -> dict:
    import flows
    import flows.datasets as fd
    import numpy as np

    from flows.experiment import cell_settings, model_kind
    from flows.options import Option, OptionsError, check_options

    if not isinstance(raw, dict):
        raise OptionsError(f"<top level> = {raw!r} is invalid: a mapping of sections")
    top = check_options({"seed": 0, "flow": "", "dataset": "", "grid": {}, "flows": {}, "datasets": {}, "data": {},
                         "figures": {}}, raw, "")
    aliases = model_names(top["flows"])
    for key in ("flow", "dataset"):  # the messages the README shows: "flow = 'nope' is invalid: accepted flows: ..."
        if raw.get(key) not in (fd.DATASETS if key == "dataset" else aliases):
            names = fd.DATASETS if key == "dataset" else aliases
            raise OptionsError(f"{key} = {raw.get(key)!r} is invalid: accepted {key}s: {_accepted(names)}")
    seed = check_options({"seed": Option(0, low=0)}, {"seed": raw.get("seed", 0)}, "")["seed"]
    grid = check_options({"flows": Option([], min_len=1, doc="names"), "datasets": Option([], min_len=1, doc="names")},
                         top["grid"], "grid")
    for sub, names in (("flows", aliases), ("datasets", fd.DATASETS)):
        items = grid[sub]
        if len(set(items)) != len(items):
            raise OptionsError(f"grid.{sub} = {items!r} is invalid: names must not repeat")
        for i, item in enumerate(items):
            if item not in names:
                raise OptionsError(f"grid.{sub}[{i}] = {item!r} is invalid: accepted {sub}: {_accepted(names)}")
    flow_sections = check_options({n: Option({}, nullable=True) for n in aliases}, top["flows"], "flows")
    full_flows = {n: flows.check_hparams(aliases[n], {k: v for k, v in (hp or {}).items() if k != "flow"},
                                         where=f"flows.{n}") for n, hp in flow_sections.items()}
    ds_sections = check_options({n: Option({}, nullable=True) for n in fd.DATASETS}, top["datasets"], "datasets")
    full_ds = {}
    for dname, section in ds_sections.items():
        key = f"datasets.{dname}"
        from flows.training import TrainConfig

        for part, schema in (("data", fd.schema(dname)), ("train", TrainConfig.schema()), ("overrides", flows.FLOWS)):
            if isinstance(section, dict) and part in section and section[part] is None:  # null: refused, not defaulted
                check_options(schema, None, f"{key}.{part}", allow_none=False)
        parts = check_options({"data": {}, "train": {}, "overrides": {}}, section, key)
        overrides = check_options({n: Option({}) for n in aliases}, parts["overrides"], f"{key}.overrides")
        kind = fd.DATASETS[dname].kind
        for fname, over in overrides.items():
            okey = f"{key}.overrides.{fname}"
            over = check_options({"hparams": {}, "train": {}}, over, okey)
            cell_settings(full_flows, {"train": {}, "overrides": {fname: over}}, fname, kind,
                          where=f"{okey}.hparams", flow=aliases[fname])
        full_ds[dname] = {"data": fd.check_params(dname, parts["data"], f"{key}.data"),
                          "train": dict(parts["train"]),
                          "overrides": {f: {"hparams": dict(o.get("hparams") or {}), "train": dict(o.get("train") or {})}
                                        for f, o in overrides.items() if o}}
        TrainConfig.from_options(parts["train"], f"{key}.train")
        for fname, o in full_ds[dname]["overrides"].items():
            TrainConfig.from_options(o["train"], f"{key}.overrides.{fname}.train")
    data = check_options({"mirror": Option("", doc="a directory or URL, or empty"),
                          "extra": Option([], doc="data sets this file's own pipeline downloads and prepares")},
                         top["data"], "data")
    for i, name in enumerate(data["extra"]):
        if name not in fd.DATASETS:
            raise OptionsError(f"data.extra[{i}] = {name!r} is invalid: accepted datasets: {_accepted(fd.DATASETS)}")
    figures = check_options({k: Option(v, low=1) for k, v in FIGURES.items()}, top["figures"], "figures")
    params = {"seed": seed, "figures": figures, "flow": raw["flow"], "dataset": raw["dataset"],
              "grid": {"flows": list(grid["flows"]), "datasets": list(grid["datasets"])},
              "flows": full_flows, "datasets": full_ds, "data": data, "aliases": aliases}
    for f in grid["flows"]:  # every cell of the table resolves (its form's options, its data set's overrides)
        for d in grid["datasets"]:
            spec = fd.DATASETS[d]
            hparams, _ = cell_settings(full_flows, full_ds[d], f, spec.kind, seed, flow=aliases[f])
            image = model_kind(aliases[f], spec.kind) == "image"
            shape = spec.event_shape if image else [int(np.prod(spec.event_shape))]
            flows.registry.check_size(aliases[f], shape, hparams, where=f"flows.{f} (on {d})")
    return params


def model_names(sections) -> dict:
    """{model name: registered flow} for params.yaml's ``flows`` section: every registered flow under its own name,
    plus each named configuration (a section with a ``flow:`` key, e.g. ``maf10: {flow: maf, num_layers: 10}``,
    so that one table can hold MAF (5) and MAF (10))."""
    import re

    import flows
    from flows.options import OptionsError

    names = {n: n for n in flows.FLOWS}
    for name, section in (sections or {}).items() if isinstance(sections, dict) else ():
        if name in flows.FLOWS and not (isinstance(section, dict) and "flow" in section):
            continue
        target = section.get("flow") if isinstance(section, dict) else None
        if target not in flows.FLOWS:
            raise OptionsError(f"flows.{name} is invalid: accepted flows: {_accepted(flows.FLOWS)}, or a named "
                               f"configuration with a key flow: <one of them>")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)):
            raise OptionsError(f"flows.{name}: a configuration's name is lower-case letters, digits and _ only")
        names[name] = target
    return names


def flow_of(params: dict, name: str) -> str:
    """The registered flow of model ``name`` (a flow's own name, or a named configuration's ``flow``)."""
    return params["aliases"].get(name, name)


def cell_settings(params: dict, name: str, dataset: str):
    """(hyper-parameters, :class:`flows.training.TrainConfig`) of one cell (see :func:`flows.experiment.cell_settings`)."""
    import flows.datasets as fd
    from flows.experiment import cell_settings as resolve

    return resolve(params["flows"], params["datasets"][dataset], name, fd.DATASETS[dataset].kind, params["seed"],
                   flow=flow_of(params, name))


def params_arg(ap) -> None:
    """The ``--params`` option every stage takes: the params file (default params.yaml; the paper pipeline passes
    params-paper.yaml)."""
    ap.add_argument("--params", default=PARAMS_FILE, help="params file (default params.yaml)")


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


# --------------------------------------------------------------------------------------------- checkpoints
def prepare_checkpoints(path: Path, fingerprint: dict) -> str | None:
    """Keep ``path`` only if it was written by a run with the same ``fingerprint``; returns the checkpoint that
    training will resume from (None: a fresh start)."""
    import tensorflow as tf

    reset_unless_stamped(path, path / "fingerprint.json", fingerprint, "checkpoints written")
    return tf.train.latest_checkpoint(str(path))


def worker_resume_dir(path: Path, fingerprint: dict) -> str:
    """A non-chief worker's view of the chief's checkpoint directory, read-only: ``path`` when it holds a stamp
    of the same settings (a shared file system), otherwise a new empty temporary directory (a fresh start)."""
    if is_stamped(path / "fingerprint.json", fingerprint):
        return str(path)
    return tempfile.mkdtemp(prefix="flows-worker-resume-")


def data_fingerprint(dataset) -> str:
    import hashlib

    manifest = processed_dir(dataset) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else ""


def write_history(path, history) -> None:
    """The learning curve (nats per example) as CSV: step, train_loss, val_loss, seconds."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "train_loss", "val_loss", "seconds"])
    writer.writeheader()
    writer.writerows(history.rows())
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
