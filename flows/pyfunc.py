"""A saved flow as an MLflow ``pyfunc`` model: per-row log-densities (nats) and, for flows that can, samples.

The evaluate stage logs every trained flow with :func:`log_flow_model` as the MLflow 3 LoggedModel ``flow`` of
its training run; anyone can then load it in a fresh process without this repository::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/<model_id>")          # or "models:/density-moons@best"
    log_p = model.predict(rows)                                      # [n] nats, float64
    x = model.predict(rows[:1], params={"method": "sample", "num_samples": 500, "seed": 0})  # [500, D]
    x = model.unwrap_python_model().sample(500, seed=0)              # the same, without input rows

**Input rows** are in the units and preprocessing of ``data/processed/<dataset>/<split>.npy`` exactly (a numpy
array or a pandas DataFrame, one column per dimension): toy and tabular sets as float32 ``[n, D]``; image sets
as their integer pixel levels (0 .. levels-1) flattened row-major to ``[n, h*w*c]`` (``test.reshape(n, -1)``).

**Output**: ``log p(x)`` per row in nats.  For images it is the density of the *dequantised* pixels
``x = (pixel + u) / levels`` in [0, 1]^D (u ~ U[0, 1), the noise drawn as the evaluate stage draws it: stateless,
from ``seed`` and the batch index, in batches of ``batch_size``), i.e. the number the evaluate stage reports in
nats; its mean over the test split is the stage's ``test_ll``.  Params (the signature's, all optional):
``method`` ("log_prob" or "sample"), ``num_samples`` and ``seed`` (sampling; images: the dequantisation seed,
default the evaluate stage's), ``batch_size``.  Samples come back in the units of the input rows (images: pixel
levels, flattened).  Planar and radial flows cannot sample: asking raises a one-line error that says so.

This module imports MLflow only when a model is built or logged, so ``flows`` stays usable without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

__all__ = ["FlowModel", "content_hash", "signature", "log_flow_model", "METHODS", "ARTIFACT"]

METHODS = ("log_prob", "sample")
#: the key of the saved flow's directory among the model's artifacts
ARTIFACT = "flow"


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a saved flow's directory: every file's relative path and bytes, in sorted order (the Model
    Registry reuses a version whose hash matches instead of adding a duplicate)."""
    root, h = Path(path), hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{root} holds no files: not a saved flow")
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


class _FlowDensity:
    """The behaviour of :class:`FlowModel` (``mlflow.pyfunc.PythonModel`` is mixed in on first use)."""

    def load_context(self, context):
        self.load(context.artifacts[ARTIFACT])

    def load(self, path):
        """Restore the flow saved in ``path`` (:func:`flows.experiment.save_for_data`); returns self."""
        from .experiment import load_for_data

        self.flow, self.transform, self.meta = load_for_data(path)
        return self

    # ------------------------------------------------------------------ predict
    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        method = params.get("method") or "log_prob"
        if method not in METHODS:
            raise ValueError(f"params method = {method!r} is invalid: accepted: {', '.join(METHODS)}")
        if method == "sample":
            return self.sample(int(params.get("num_samples") or 1), params.get("seed"))
        return self.log_prob(model_input, seed=params.get("seed"), batch_size=params.get("batch_size"))

    def _rows(self, model_input):
        import numpy as np

        arr = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        d = int(np.prod(self.flow.event_shape))
        if arr.ndim < 1 or arr.size % d or (arr.ndim >= 2 and int(np.prod(arr.shape[1:])) != d):
            raise ValueError(f"input of shape {list(arr.shape)} is invalid: accepted rows of {d} values "
                             f"([n, {d}], as data/processed/{self.meta['data']['dataset']})")
        return arr.reshape(-1, d)

    def log_prob(self, rows, seed=None, batch_size=None):
        """Per-row log-density in nats (float64, shape [n]) of ``rows`` (see the module's docstring)."""
        import numpy as np

        from .training import mean_log_prob

        x = self._rows(rows)
        if self.transform is None:
            x = x.astype(self.flow.dtype.as_numpy_dtype, copy=False)
        else:  # pixel levels, in the image shape the transform expects
            levels = self.transform.levels
            if (x < 0).any() or (x >= levels).any() or (x != np.floor(x)).any():
                raise ValueError(f"image rows must be integer pixel levels in 0..{levels - 1} (as in "
                                 f"data/processed/{self.meta['data']['dataset']})")
            x = x.reshape(-1, *self._image_shape())
        seed = self.meta["seed"] + 2 if seed is None else int(seed)  # the evaluate stage's dequantisation seed
        batch = int(batch_size or self.meta.get("train", {}).get("eval_batch_size") or 4096)
        return np.asarray(mean_log_prob(self.flow, x, batch, self.transform, seed), np.float64)

    def _image_shape(self):
        import flows.datasets as fd

        return [int(d) for d in fd.DATASETS[self.meta["data"]["dataset"]].event_shape]

    def sample(self, n: int, seed=None):
        """``n`` samples (numpy, [n, D]) in the units of the input rows: toy/tabular values, or flattened pixel
        levels for images.  A flow that cannot sample (planar, radial) raises a one-line ``ValueError``."""
        import numpy as np

        if int(n) < 1:
            raise ValueError(f"num_samples = {n!r} is invalid: accepted: an integer >= 1")
        if not self.flow.can_sample:
            raise ValueError(f"flow {self.meta.get('name') or self.flow.name!r} ({self.flow.config['flow']}) cannot "
                             f"sample: it has no algebraic inverse (noise -> data); use method log_prob")
        y = np.asarray(self.flow.sample(int(n), seed=None if seed is None else int(seed)))
        if self.transform is not None:
            y = self.transform.to_pixels(y)
        return y.reshape(int(n), -1)


_CLASS = None


def _model_class():
    global _CLASS
    if _CLASS is None:
        from mlflow.pyfunc import PythonModel

        _CLASS = type("FlowModel", (_FlowDensity, PythonModel), {"__module__": __name__, "__qualname__": "FlowModel",
                                                                  "__doc__": _FlowDensity.__doc__})
    return _CLASS


def __getattr__(name):  # ``flows.pyfunc.FlowModel`` imports MLflow only when it is used (pickling finds it here)
    if name == "FlowModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def signature(dims: int, dtype: str):
    """The model signature: one unnamed tensor [-1, dims] of ``dtype``, log-densities [-1] float64 out, and the
    params of :meth:`FlowModel.predict`."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(dtype), (-1, int(dims)))]),
        outputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]),
        params=ParamSchema([ParamSpec("method", "string", "log_prob"), ParamSpec("num_samples", "long", 1),
                            ParamSpec("seed", "long", None), ParamSpec("batch_size", "long", None)]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("tensorflow", "tensorflow-probability", "tf-keras", "numpy", "pandas", "mlflow"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return out


def log_flow_model(model_dir, input_rows, name: str = "flow", tags: dict | None = None):
    """Log the saved flow ``model_dir`` as a LoggedModel ``name`` of the active MLflow run; ``input_rows`` (a
    few rows of the data set, as the model takes them) give the signature's dtype and width.  The package
    ``flows`` travels with it (``code_paths``).  Returns the ``ModelInfo`` (``model_id``, ``model_uri``)."""
    import mlflow
    import numpy as np

    rows = np.asarray(input_rows)
    rows = rows.reshape(len(rows), -1)
    with _without_advice():
        return mlflow.pyfunc.log_model(
            name=name, python_model=_model_class()(), artifacts={ARTIFACT: str(model_dir)},
            code_paths=[str(Path(__file__).resolve().parent)], signature=signature(rows.shape[1], rows.dtype.name),
            pip_requirements=_requirements(), tags={"content_hash": content_hash(model_dir), **(tags or {})})


#: MLflow's advice printed on every log_model call that does not apply here: the signature is given explicitly
#: (so no input example is needed to infer it), and the pickled object is this module's own class
_ADVICE = ("An input example was not provided", "Passing a Python object as `python_model`")


@contextlib.contextmanager
def _without_advice():
    """Drop exactly the two :data:`_ADVICE` messages (a Python warning and an MLflow log record) for one call."""
    import logging
    import warnings

    class _Drop(logging.Filter):
        def filter(self, record):
            return not record.getMessage().startswith(_ADVICE)

    logger, drop = logging.getLogger("mlflow.pyfunc"), _Drop()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*" + re.escape(_ADVICE[0]))
            yield
    finally:
        logger.removeFilter(drop)
