"""A flow fitted to a data set: the glue between a dataset's kind (toy, tabular, image) and a flow.

* Tabular and toy rows are used as they are (float32).
* Images are stored as integer pixel levels; each batch is dequantised with fresh uniform noise and put in
  logit space (benchmarks.md section 5).  The transform returns log|det dy/dx| so that log-likelihoods are
  those of x = (pixel + u) / levels in [0, 1]^D, from which bits/dim follow.
* Vector flows see images flattened; image flows (Glow, Real NVP's multi-scale form) see [h, w, c].
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .datasets.images import bits_per_dim
from .registry import FLOWS, build_flow

__all__ = ["model_for_data", "logit_transform", "bits_per_dim"]


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
    spec = FLOWS[flow_name] if flow_name in FLOWS else None
    if kind == "image":
        if levels is None:
            raise ValueError("an image data set needs its number of pixel levels")
        image_ok = spec is not None and "image" in spec.kinds
        model_shape = event_shape if image_ok else (int(np.prod(event_shape)),)
        transform = logit_transform(levels, logit_alpha, flatten=not image_ok)
    elif kind in ("toy", "tabular"):
        model_shape, transform = event_shape, None
    else:
        raise ValueError(f"unknown data kind {kind!r}; accepted: image, tabular, toy")
    return build_flow(flow_name, model_shape, dtype=dtype, **hparams), transform, model_shape
