"""Saving and loading a flow: its configuration (name, form, event shape, dtype, hyper-parameters) and weights.

    >>> flows.save(flow, "models/maf-moons", metadata={"dataset": "moons"})
    >>> flow = flows.load("models/maf-moons")      # the same density; flow.metadata is what was saved with it

A saved flow is a directory: ``config.json`` (the configuration and the caller's metadata, JSON) and
``weights.*`` (a ``tf.train.Checkpoint`` of every variable).  It is written to a temporary sibling directory and
renamed into place, so a kill never leaves a half-written model.  Only flows built by
:func:`flows.build_flow` (which records ``flow.config``) can be saved.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from .base import Flow
from .registry import build_flow

__all__ = ["save", "load", "read_config", "FORMAT"]

#: bump when the layout of a saved flow changes
FORMAT = 1
CONFIG_FILE = "config.json"


def save(flow: Flow, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``flow`` to the directory ``path`` (replaced if it exists) with JSON-serialisable ``metadata``."""
    config = getattr(flow, "config", None)
    if config is None:
        raise ValueError("this flow has no configuration to save: build it with flows.build_flow")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        record = {"format": FORMAT, **config, "metadata": metadata or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tf.train.Checkpoint(flow=flow).write(str(tmp / "weights"))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_config(path: str | os.PathLike) -> dict:
    """The configuration and metadata saved in ``path`` (no TensorFlow work)."""
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: {path} is not a saved flow (flows.save writes it)")
    record = json.loads(file.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{file}: format {record.get('format')!r} is not {FORMAT}; save the flow again")
    return record


def load(path: str | os.PathLike) -> Flow:
    """Rebuild the flow saved in ``path`` and restore every variable; ``flow.metadata`` holds its metadata."""
    record = read_config(path)
    flow = build_flow(record["flow"], record["event_shape"], record["dtype"], **record["hparams"])
    # one pass creates every variable (and ActNorm's data-dependent values, which the checkpoint overwrites)
    flow.initialize(tf.zeros([2, *record["event_shape"]], flow.dtype))
    tf.train.Checkpoint(flow=flow).read(str(Path(path) / "weights")).assert_existing_objects_matched()
    object.__setattr__(flow, "metadata", record["metadata"])
    return flow
