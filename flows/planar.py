"""Planar flow (Rezende & Mohamed, 2015), used from data to noise for exact density estimation."""

from __future__ import annotations

import math

import tensorflow as tf

from .base import Flow, FlowLayer
from .options import Option
from .registry import register

__all__ = ["PlanarLayer", "planar_flow"]

PAPER = (
    "Variational Inference with Normalizing Flows, D. J. Rezende and S. Mohamed, 2015, "
    "https://arxiv.org/abs/1505.05770"
)


class PlanarLayer(FlowLayer):
    """A planar map ``f(x) = x + u_hat tanh(w.x + b)``, invertible by the constraint ``w.u_hat >= -1``.

    Paper: "Variational Inference with Normalizing Flows", D. J. Rezende and S. Mohamed, 2015,
    arXiv:1505.05770 (section 4.1 and appendix A.1).

    Mathematical details::

        f(x)        = x + u_hat h(w.x + b),                 h = tanh
        u_hat       = u + (m(w.u) - w.u) w / |w|^2,          m(a) = -1 + softplus(a)
        w.u_hat     = m(w.u) > -1                            (so f is invertible)
        log|det df/dx| = log|1 + u_hat.w h'(w.x + b)|
                       = log(tanh(a)^2 + h'(a) softplus(w.u)),   a = w.x + b   (as computed: no cancellation)

    ``f`` has no closed-form inverse, so ``inverse`` (data -> noise) applies ``f`` and ``forward``
    raises :class:`~flows.base.NotInvertibleError`.  :mod:`flows.energies` applies the same ``f`` from
    noise to data for variational inference.

    Args:
        dim: the event size ``d``.
        dtype: float32 or float64; every variable is created in it.
        init_scale: standard deviation of the initial ``w`` and of ``u_hat`` (``b`` starts at 0).
        name: module name.

    Example::

        >>> import flows
        >>> flow = flows.build_flow("planar", [2], num_layers=4)
        >>> flow.log_prob([[0.5, -1.0]]).shape
        TensorShape([1])
    """

    can_sample = False

    def __init__(self, dim: int, dtype=tf.float32, init_scale: float = 0.1, name: str | None = None):
        super().__init__(name=name)
        self.dim = int(dim)
        self.dtype = tf.as_dtype(dtype)
        init = tf.random.normal([2, self.dim], stddev=init_scale, dtype=self.dtype)
        w, u = init[0], init[1]
        # Start near the identity: pick w.u = log(e - 1), where m(w.u) = 0, so u_hat = the part of u orthogonal
        # to w.  A random u would give w.u_hat = m(w.u) ~ -0.3 and |u_hat| ~ 0.3 / |w|, a strong rescaling
        # along w for small w that compounds over the layers.
        w_sq = tf.reduce_sum(tf.square(w))
        u = u + (tf.constant(math.log(math.e - 1.0), self.dtype) - tf.reduce_sum(w * u)) * w / w_sq
        self.w = tf.Variable(w, name="w")
        self.u = tf.Variable(u, name="u")
        self.b = tf.Variable(tf.zeros([], self.dtype), name="b")

    def _constrained(self):
        """``(u_hat, 1 + w.u_hat)``; the second is ``softplus(w.u)``, exact even where ``w.u_hat`` rounds to -1."""
        wu = tf.reduce_sum(self.w * self.u)
        softplus_wu = tf.nn.softplus(wu)  # = 1 + m(w.u)
        w_sq = tf.reduce_sum(tf.square(self.w))
        # |w|^2, not |w|: only then is w.u_hat = m(w.u).  At w = 0 the correction vanishes and u_hat = u.
        ok = w_sq > 0.0
        u_hat = self.u + (softplus_wu - 1.0 - wu) * self.w / tf.where(ok, w_sq, tf.ones_like(w_sq))
        one_plus_wu_hat = tf.where(ok, softplus_wu, 1.0 + tf.reduce_sum(self.w * u_hat))
        return u_hat, one_plus_wu_hat

    def u_hat(self) -> tf.Tensor:
        """The constrained ``u``: ``u + (m(w.u) - w.u) w / |w|^2``, so that ``w.u_hat = m(w.u) > -1``."""
        return self._constrained()[0]

    def apply(self, x):
        """``(f(x), log|det df/dx|)`` for a batch ``x`` of shape ``[batch, d]``."""
        u_hat, one_plus_wu_hat = self._constrained()
        a = tf.linalg.matvec(x, self.w) + self.b  # [batch]
        t = tf.tanh(a)
        y = x + u_hat[None, :] * t[:, None]
        # det = 1 + h'(a) w.u_hat with h' = 1 - tanh^2, rewritten as tanh(a)^2 + h'(a) (1 + w.u_hat):
        # a sum of two non-negative terms, so it never cancels to 0 or below when w.u_hat is close to -1.
        log_det = tf.math.log(tf.square(t) + (1.0 - tf.square(t)) * one_plus_wu_hat)
        return y, log_det

    def inverse(self, x, training: bool = False):
        return self.apply(x)


@register("planar", {"num_layers": 16, "init_scale": Option(0.1, low=0.0, positive=True)}, can_sample=False, paper=PAPER)
def planar_flow(event_shape, dtype, *, num_layers: int, init_scale: float) -> Flow:
    """Planar flow: ``num_layers`` planar maps applied to the data; exact log-density, no sampling."""
    if num_layers < 1:
        raise ValueError(f"planar: num_layers = {num_layers} must be a positive integer")
    (dim,) = event_shape
    layers = [PlanarLayer(dim, dtype, init_scale, name=f"planar_{k}") for k in range(num_layers)]
    return Flow(layers, event_shape, dtype, name="planar")
