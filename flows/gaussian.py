"""The full-covariance Gaussian: the baseline row of the MAF paper's density-estimation tables.

"Masked Autoregressive Flow for Density Estimation", G. Papamakarios, T. Pavlakou, I. Murray, 2017,
https://arxiv.org/abs/1705.07057 (the "Gaussian" row of Table 1).

    >>> import flows, tensorflow as tf
    >>> flow = flows.build_flow("gaussian", [3], dtype="float64")
    >>> flow.initialize(tf.random.normal([500, 3], dtype=tf.float64))   # the maximum-likelihood fit of that batch
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .base import Flow, FlowLayer, as_dtype
from .registry import register

__all__ = ["LowerTriangularAffine", "build_gaussian"]

PAPER = ("Papamakarios, Pavlakou, Murray 2017, Masked Autoregressive Flow for Density Estimation (the Gaussian "
         "baseline of Table 1), https://arxiv.org/abs/1705.07057")


class LowerTriangularAffine(FlowLayer):
    """``x = loc + L z`` with ``L`` lower-triangular and a positive diagonal: a standard normal ``z`` gives
    ``x ~ N(loc, L L^T)``, every full-covariance Gaussian.

    ``L = tril(lower, -1) + diag(exp(log_diag))``: the strictly lower part of the unconstrained ``[d, d]`` variable
    ``lower`` (its diagonal and upper part are never used and get zero gradient) and the exponential of
    ``log_diag``.  Data -> noise solves the triangular system, ``z = L^-1 (x - loc)``, with
    ``log|det dz/dx| = -sum(log_diag)``; noise -> data is ``x = loc + L z``, ``log|det dx/dz| = sum(log_diag)``.

    ``initialize(x)`` sets ``loc`` and ``L`` to the maximum-likelihood fit of the batch ``x``: its mean and the
    Cholesky factor of its covariance with ``ddof = 0`` (a jitter of ``10 * eps`` of the dtype times the mean
    variance is added to the diagonal, so that a degenerate batch still has a factor), then flips the
    ``initialized`` variable, as :class:`flows.glow.ActNorm` does: a restored model is never refitted.

    Arguments:
        event_size: number of features ``d``.
        dtype: float32 or float64.
    """

    def __init__(self, event_size: int, dtype="float32", name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        self.d = d = int(event_size)
        self.loc = tf.Variable(tf.zeros([d], self.dtype), name="loc")
        self.log_diag = tf.Variable(tf.zeros([d], self.dtype), name="log_diag")
        self.lower = tf.Variable(tf.zeros([d, d], self.dtype), name="lower")
        self.initialized = tf.Variable(False, trainable=False, name="initialized")
        self.jitter = 10.0 * float(np.finfo(self.dtype.as_numpy_dtype).eps)

    def scale_tril(self):
        """``L``: the strictly lower part of ``lower`` with ``exp(log_diag)`` on the diagonal."""
        return tf.linalg.set_diag(tf.linalg.band_part(self.lower, -1, 0), tf.exp(self.log_diag))

    def covariance(self):
        scale = self.scale_tril()
        return tf.matmul(scale, scale, transpose_b=True)

    def _fill(self, x, value):
        return tf.fill(tf.shape(x)[:1], value)

    def inverse(self, x, training: bool = False):
        centred = tf.transpose(x - self.loc)  # [d, batch]: one right-hand side per example
        z = tf.transpose(tf.linalg.triangular_solve(self.scale_tril(), centred, lower=True))
        return z, self._fill(x, -tf.reduce_sum(self.log_diag))

    def forward(self, z):
        x = tf.matmul(z, self.scale_tril(), transpose_b=True) + self.loc
        return x, self._fill(z, tf.reduce_sum(self.log_diag))

    def initialize(self, x):
        """The maximum-likelihood fit of ``x`` (mean, Cholesky of the ddof = 0 covariance), once."""
        x = tf.convert_to_tensor(x, self.dtype)
        mean = tf.reduce_mean(x, axis=0)
        centred = x - mean
        cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(tf.shape(x)[0], self.dtype)
        level = tf.reduce_mean(tf.linalg.diag_part(cov))
        level = tf.where(level > 0, level, tf.ones_like(level))  # an all-constant batch (flows.load's zeros)
        chol = tf.linalg.cholesky(cov + self.jitter * level * tf.eye(self.d, dtype=self.dtype))
        done = self.initialized
        self.loc.assign(tf.where(done, self.loc, mean))
        self.log_diag.assign(tf.where(done, self.log_diag, tf.math.log(tf.linalg.diag_part(chol))))
        strictly_lower = tf.linalg.set_diag(chol, tf.zeros([self.d], self.dtype))
        self.lower.assign(tf.where(done, self.lower, strictly_lower))
        self.initialized.assign(True)
        return self.inverse(x)[0]


@register("gaussian", {}, paper=PAPER)
def build_gaussian(event_shape, dtype) -> Flow:
    """Full-covariance Gaussian (the MAF paper's Gaussian baseline, Papamakarios et al. 2017, arXiv:1705.07057).

    One :class:`LowerTriangularAffine` layer on the standard normal: ``x = loc + L z``, so
    ``p(x) = N(x; loc, L L^T)``, exact in nats, with sampling and the inverse in one triangular solve.
    ``initialize(batch)`` (which training calls on its first batch) sets it to the maximum-likelihood fit of
    that batch (mean and Cholesky factor of the ddof = 0 covariance); training by maximum likelihood then refines
    it on the whole training set.  No options.

    Example::

        >>> flow = flows.build_flow("gaussian", [6])
        >>> flow.initialize(x_train[:1024]).log_prob(x_test).shape
    """
    if len(event_shape) != 1:
        raise ValueError(f"gaussian: event shape {list(event_shape)} must be [d] (a vector)")
    d = int(event_shape[0])
    if d < 1:
        raise ValueError(f"gaussian: event size d = {d} must be at least 1")
    dtype = as_dtype(dtype)
    return Flow([LowerTriangularAffine(d, dtype, name="gaussian")], event_shape, dtype, name="gaussian")
