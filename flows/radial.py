"""Radial flow (Rezende & Mohamed, 2015), used from data to noise for exact density estimation."""

from __future__ import annotations

import tensorflow as tf

from .base import Flow, FlowLayer
from .options import Option
from .registry import register

__all__ = ["RadialLayer", "radial_flow"]

PAPER = (
    "Variational Inference with Normalizing Flows, D. J. Rezende and S. Mohamed, 2015, "
    "https://arxiv.org/abs/1505.05770"
)


class RadialLayer(FlowLayer):
    """A radial map ``f(x) = x + beta (x - z0) / (alpha + |x - z0|)``, invertible by ``beta > -alpha``.

    Paper: "Variational Inference with Normalizing Flows", D. J. Rezende and S. Mohamed, 2015,
    arXiv:1505.05770 (section 4.1 and appendix A.2).

    Mathematical details::

        f(x)  = x + beta h(alpha, r) (x - z0),   r = |x - z0|,   h(alpha, r) = 1 / (alpha + r)
        alpha = softplus(a) > 0,                 beta = -alpha + softplus(b) > -alpha
        log|det df/dx| = (d - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r)

    Both terms are computed in forms that stay positive in floating point:
    ``1 + beta h = (softplus(b) + r) / (alpha + r)`` and
    ``1 + beta h + beta h' r = (alpha softplus(b) + 2 alpha r + r^2) / (alpha + r)^2``.
    ``f`` has no closed-form inverse, so ``inverse`` (data -> noise) applies ``f`` and ``forward``
    raises :class:`~flows.base.NotInvertibleError`.

    Args:
        dim: the event size ``d``.
        dtype: float32 or float64; every variable is created in it.
        init_scale: standard deviation of the initial centre ``z0``.
        name: module name.

    Example::

        >>> import flows
        >>> flow = flows.build_flow("radial", [2], num_layers=4)
        >>> flow.log_prob([[0.5, -1.0]]).shape
        TensorShape([1])
    """

    can_sample = False

    def __init__(self, dim: int, dtype=tf.float32, init_scale: float = 0.1, name: str | None = None):
        super().__init__(name=name)
        self.dim = int(dim)
        self.dtype = tf.as_dtype(dtype)
        self.z0 = tf.Variable(tf.random.normal([self.dim], stddev=init_scale, dtype=self.dtype), name="z0")
        # softplus(0.5413) = 1: alpha starts at 1 and beta at 0 (near the identity), plus a small jitter.
        jitter = tf.random.normal([2], stddev=init_scale, dtype=self.dtype)
        self.a = tf.Variable(0.5413 + jitter[0], name="a")
        self.b = tf.Variable(0.5413 + jitter[1], name="b")

    def alpha_beta(self):
        """``(alpha, beta, alpha + beta)``: ``alpha = softplus(a) > 0``, ``beta = -alpha + softplus(b) > -alpha``.

        ``alpha + beta`` is returned as ``softplus(b)`` itself, never as the rounded sum, so it stays > 0
        even where ``beta`` rounds to ``-alpha`` (float32, ``b < -17``).
        """
        alpha = tf.nn.softplus(self.a)
        sp_b = tf.nn.softplus(self.b)
        return alpha, sp_b - alpha, sp_b

    def apply(self, x):
        """``(f(x), log|det df/dx|)`` for a batch ``x`` of shape ``[batch, d]``."""
        alpha, beta, sp_b = self.alpha_beta()
        diff = x - self.z0
        sq = tf.reduce_sum(tf.square(diff), axis=-1)
        # sqrt has an infinite derivative at 0: take it only where r > 0 so gradients stay finite at x = z0.
        pos = sq > 0
        r = tf.where(pos, tf.sqrt(tf.where(pos, sq, tf.ones_like(sq))), tf.zeros_like(sq))
        h = 1.0 / (alpha + r)
        y = x + (beta * h)[:, None] * diff
        d_minus_1 = tf.constant(self.dim - 1, self.dtype)
        log_det = d_minus_1 * (tf.math.log(sp_b + r) - tf.math.log(alpha + r)) + (
            tf.math.log(alpha * sp_b + 2.0 * alpha * r + tf.square(r)) - 2.0 * tf.math.log(alpha + r)
        )
        return y, log_det

    def inverse(self, x, training: bool = False):
        return self.apply(x)


@register("radial", {"num_layers": 16, "init_scale": Option(0.1, low=0.0, positive=True)}, can_sample=False, paper=PAPER)
def radial_flow(event_shape, dtype, *, num_layers: int, init_scale: float) -> Flow:
    """Radial flow: ``num_layers`` radial maps applied to the data; exact log-density, no sampling."""
    if num_layers < 1:
        raise ValueError(f"radial: num_layers = {num_layers} must be a positive integer")
    (dim,) = event_shape
    layers = [RadialLayer(dim, dtype, init_scale, name=f"radial_{k}") for k in range(num_layers)]
    return Flow(layers, event_shape, dtype, name="radial")
