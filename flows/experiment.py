"""A flow fitted to a data set: the glue between a dataset's kind (toy, tabular, image) and a flow.

* Tabular and toy rows are used as they are (float32).
* Images are stored as integer pixel levels; each batch is dequantised with fresh uniform noise and put in
  logit space (docs/benchmarks.md section 5).  The transform returns log|det dy/dx| so that log-likelihoods are
  those of x = (pixel + u) / levels in [0, 1]^D, from which bits/dim follow.
* Vector flows see images flattened; image flows (Glow, Real NVP's multi-scale form) see [h, w, c].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .datasets.images import bits_per_dim
from .io import load, save
from .registry import FLOWS, build_flow, check_hparams
from .options import OptionsError

__all__ = ["model_for_data", "model_kind", "cell_settings", "save_for_data", "load_for_data", "logit_transform",
           "bits_per_dim"]


def logit_transform(levels: int, alpha: float, flatten: bool):
    """Dequantise and logit-transform a batch of pixel levels with fresh noise per (seed) call.

    x = (pixel + u) / levels, u ~ U[0, 1);  s = alpha + (1 - 2 alpha) x;  y = logit(s)
    log|det dy/dx| = sum_i [log(1 - 2 alpha) - log s_i - log(1 - s_i)]          (nats, per example)
    (the formula lives in :func:`flows.datasets.images.tf_dequantize_logit`).
    The returned function also carries ``levels``, ``alpha`` and ``to_pixels(y)``, the inverse used to show samples.
    """
    from .datasets.images import tf_dequantize_logit

    def transform(batch, seed):
        noise = tf.random.stateless_uniform(tf.shape(batch), seed=seed, dtype=tf.float32)
        y, ldj = tf_dequantize_logit(batch, levels, alpha, noise=noise)
        if flatten:
            y = tf.reshape(y, [tf.shape(y)[0], -1])
        return y, ldj

    def to_pixels(y):
        """The inverse map for display: logit-space values (any shape) -> pixel levels 0..levels-1 (int)."""
        s = 1.0 / (1.0 + np.exp(-np.asarray(y, np.float64)))
        x = (s - alpha) / (1.0 - 2.0 * alpha)
        return np.clip(np.floor(x * levels), 0, levels - 1).astype(np.int64)

    transform.levels, transform.alpha, transform.flatten, transform.to_pixels = levels, alpha, flatten, to_pixels
    return transform


def model_for_data(flow_name: str, hparams: dict, kind: str, event_shape, levels: int | None = None,
                   logit_alpha: float = 1e-6, dtype="float32"):
    """Build ``flow_name`` for a data set of ``kind`` and ``event_shape``.

    Returns ``(flow, transform, model_shape)``: ``transform`` is None for toy and tabular data, and the
    dequantise-and-logit map for images.
    """
    event_shape = tuple(int(d) for d in event_shape)
    if kind == "image":
        if levels is None:
            raise ValueError("an image data set needs its number of pixel levels")
        image_ok = model_kind(flow_name, kind) == "image"
        model_shape = event_shape if image_ok else (int(np.prod(event_shape)),)
        transform = logit_transform(levels, logit_alpha, flatten=not image_ok)
    elif kind in ("toy", "tabular"):
        model_shape, transform = event_shape, None
    else:
        raise ValueError(f"unknown data kind {kind!r}; accepted: image, tabular, toy")
    return build_flow(flow_name, model_shape, dtype=dtype, **hparams), transform, model_shape


def model_kind(flow_name: str, data_kind: str) -> str:
    """The form of ``flow_name`` that models a data set of ``data_kind``: ``image`` for an image data set when the
    flow has an image form, else ``vector`` (images flattened)."""
    spec = FLOWS.get(flow_name)
    return "image" if data_kind == "image" and spec is not None and "image" in spec.kinds else "vector"


def cell_settings(flows_section: dict, dataset_section: dict, name: str, data_kind: str, seed: int = 0,
                  where: str = "", flow: str | None = None) -> tuple:
    """(hyper-parameters, :class:`~flows.training.TrainConfig`) of one model on one data set, validated: the
    model's section ``flows.<name>`` of params.yaml (for a flow with several forms, the section of the form this
    data set uses), with the data set's ``overrides.<name>`` (``hparams`` and ``train``) on top of it and of the
    data set's ``train``.  ``flow`` is the registered flow of a named configuration (default: ``name``)."""
    from .training import TrainConfig

    flow = flow or name
    kind = model_kind(flow, data_kind)
    section = {k: v for k, v in (flows_section.get(name) or {}).items() if k != "flow"}
    if FLOWS[flow].nested:
        section = dict(section.get(kind) or {})
    over = (dataset_section.get("overrides") or {}).get(name) or {}
    hparams = check_hparams(flow, {**section, **(over.get("hparams") or {})}, kind=kind,
                            where=where or f"flows.{name}")
    train = {**(dataset_section.get("train") or {}), **(over.get("train") or {})}
    return hparams, TrainConfig.from_options(train, "train", seed=seed)


def save_for_data(flow, path, dataset: str, transform=None, **metadata):
    """:func:`flows.save` with what :func:`load_for_data` needs to score raw rows of ``dataset`` again."""
    data = {"dataset": dataset}
    if transform is not None:
        data.update(levels=transform.levels, logit_alpha=transform.alpha, flatten=transform.flatten)
    return save(flow, path, {"data": data, **metadata})


def load_for_data(path):
    """(flow, transform, metadata) of a flow saved by :func:`save_for_data`; ``transform`` maps raw rows (pixel
    levels for images) to the flow's space with its log-Jacobian (None for toy and tabular data)."""
    flow = load(path)
    data = flow.metadata.get("data", {})
    transform = None
    if "levels" in data:
        transform = logit_transform(int(data["levels"]), float(data["logit_alpha"]), bool(data["flatten"]))
    return flow, transform, flow.metadata


def test_scores(flow, test, spec, transform=None, batch_size: int = 4096, seed: int = 0) -> dict:
    """The test log-likelihood of ``flow`` on the rows ``test`` of data set ``spec`` (a ``DatasetSpec``), in nats
    per example with its standard error; images add bits/dim of the discrete data, 2-D toy sets the true
    log-likelihood and KL(p || q) = E_p[log p - log q] estimated on the test rows.  A non-finite mean raises
    :class:`~flows.errors.NonFiniteError`."""
    import math

    from .errors import NonFiniteError
    from .training import evaluate

    result = evaluate(flow, test, batch_size=batch_size, transform=transform, seed=seed)
    if not math.isfinite(result["test_ll"]):
        raise NonFiniteError(f"test log-likelihood is {result['test_ll']} ({result['n_nonfinite']} non-finite rows)")
    scores = {**result, "units": "nats"}
    if spec.kind == "image":
        dims = int(np.prod(spec.event_shape))
        scores["bits_per_dim"] = bits_per_dim(result["test_ll"], dims, spec.levels)
        scores["bits_per_dim_se"] = result["test_ll_se"] / (dims * math.log(2.0))
        scores["units"] = "nats (density of dequantised pixels in [0,1]^D); bits/dim of the discrete data"
    if spec.kind == "toy":
        from .datasets import toy

        true_lp = np.asarray(toy.log_density(spec.name, np.asarray(test)), dtype=np.float64)
        scores["true_ll"] = float(np.mean(true_lp))
        scores["kl_to_truth"] = scores["true_ll"] - result["test_ll"]
    return scores
