"""Image helpers: dequantisation with the logit transform, its log-determinant, and bits per dimension.

Real NVP (Dinh, Sohl-Dickstein, Bengio, 2016, "Density estimation using Real NVP", arXiv:1605.08803) and
MAF (Papamakarios, Pavlakou, Murray, 2017, arXiv:1705.07057) model y = logit(s) of dequantised pixels:

    x = (pixel + u) / L,   u ~ U[0, 1)^D,   L = levels (256 for MNIST, 17 for UCI digits)
    s = alpha + (1 - 2 alpha) x
    y = logit(s) = log s - log(1 - s)
    log|det dy/dx| = sum_i -log(s_i (1 - s_i)) + D log(1 - 2 alpha)

so log p_x(x) = log p_y(y) + log|det dy/dx| (nats), and the discrete model of pixels has

    bits/dim = -log p_x(x) / (D ln 2) + log2(L).

``dequantize_logit`` works on numpy arrays and, given a ``tf.Tensor``, with TensorFlow ops (usable inside
``tf.data`` and ``tf.function``); ``tf_dequantize_logit`` is the TensorFlow version by name.
"""

from __future__ import annotations

from ..errors import DataError

import math

import numpy as np

__all__ = ["dequantize_logit", "tf_dequantize_logit", "logit_to_unit", "bits_per_dim", "uniform_noise"]


def _check(levels, alpha):
    if not (isinstance(levels, (int, np.integer)) and levels >= 2):
        raise DataError(f"levels = {levels!r} must be an integer >= 2 (256 for 8-bit images, 17 for UCI digits)")
    if not (0.0 <= float(alpha) < 0.5):
        raise DataError(f"alpha = {alpha!r} must be in [0, 0.5) (MNIST 1e-6, Real NVP 0.05)")


def uniform_noise(shape, seed=None, dtype=np.float32):
    """u ~ U[0, 1) of ``shape`` (numpy)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float64).astype(dtype)


def dequantize_logit(pixels, levels: int = 256, alpha: float = 1e-6, noise=None, dtype=np.float32):
    """(y, log_det): y = logit(alpha + (1 - 2 alpha)(pixel + noise)/levels), log_det = log|det dy/dx| [batch].

    ``pixels`` [batch, ...] holds integer levels 0..levels-1; ``noise`` (same shape, in [0, 1)) defaults to
    fresh U[0, 1) noise; pass 0.5 for the deterministic centre of each bin.
    """
    _check(levels, alpha)
    if type(pixels).__module__.startswith("tensorflow"):
        return tf_dequantize_logit(pixels, levels, alpha, noise)
    dtype = np.dtype(dtype)
    p = np.asarray(pixels)
    if noise is None:
        noise = uniform_noise(p.shape, dtype=dtype)
    x = (p.astype(dtype) + np.asarray(noise, dtype=dtype)) / dtype.type(levels)
    s = dtype.type(alpha) + dtype.type(1 - 2 * alpha) * x
    y = np.log(s) - np.log1p(-s)
    axes = tuple(range(1, p.ndim))
    d = int(np.prod(p.shape[1:]))
    log_det = -np.sum(np.log(s) + np.log1p(-s), axis=axes) + dtype.type(d * math.log(1 - 2 * alpha))
    return y.astype(dtype), log_det.astype(dtype)


def tf_dequantize_logit(pixels, levels: int = 256, alpha: float = 1e-6, noise=None, dtype="float32", seed=None):
    """The TensorFlow version of :func:`dequantize_logit` (same formula, tf ops, inside ``tf.data`` too)."""
    import tensorflow as tf

    _check(levels, alpha)
    dtype = tf.as_dtype(dtype)
    p = tf.cast(pixels, dtype)
    if noise is None:
        noise = tf.random.uniform(tf.shape(p), dtype=dtype, seed=seed)
    x = (p + tf.cast(noise, dtype)) / tf.constant(levels, dtype)
    s = tf.constant(alpha, dtype) + tf.constant(1 - 2 * alpha, dtype) * x
    y = tf.math.log(s) - tf.math.log1p(-s)
    axes = tf.range(1, tf.rank(p))
    d = tf.cast(tf.reduce_prod(tf.shape(p)[1:]), dtype)
    log_det = -tf.reduce_sum(tf.math.log(s) + tf.math.log1p(-s), axis=axes) + d * tf.constant(
        math.log(1 - 2 * alpha), dtype)
    return y, log_det


def logit_to_unit(y, alpha: float = 1e-6):
    """The inverse map: x = (sigmoid(y) - alpha) / (1 - 2 alpha), clipped to [0, 1] (numpy), for display."""
    y = np.asarray(y)
    return np.clip((1 / (1 + np.exp(-y)) - alpha) / (1 - 2 * alpha), 0.0, 1.0)


def bits_per_dim(log_px_nats, num_dims: int, levels: int = 256):
    """bits/dim = -log p_x(x) / (D ln 2) + log2(levels), with p_x the density of x in [0, 1]^D (nats)."""
    return -np.asarray(log_px_nats, dtype=np.float64) / (int(num_dims) * math.log(2)) + math.log2(levels)
