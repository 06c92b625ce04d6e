"""Neural Autoregressive Flow: a deep sigmoidal transformer conditioned by a MADE.

Neural Autoregressive Flows, C.-W. Huang, D. Krueger, A. Lacoste and A. Courville, 2018,
https://arxiv.org/abs/1804.00779.  Density exact; sampling by numerical inversion (bisection), D MADE passes.

    >>> import flows
    >>> flow = flows.build_flow("naf", [2], num_layers=1, hidden_units=[16], num_sigmoids=4)
    >>> flow.log_prob([[0.0, 0.0]]).shape
    TensorShape([1])
"""

from __future__ import annotations

import tensorflow as tf

from .base import Flow, FlowLayer, as_dtype
from .nn import ACTIVATIONS, MaskedMLP, Reverse
from .options import Option
from .registry import register

__all__ = ["DeepSigmoidalTransform", "dsf", "dsf_invert", "build_naf"]

#: minimum slope of each sigmoid (a_k = softplus(raw + 0.5413) + A_MIN): keeps log a_k finite
A_MIN = 1e-3


def dsf(x, log_a, b, log_w):
    """Deep sigmoidal flow transformer (NAF eq. 8), elementwise, with its log-derivative, all in log space.

        y = logit(S),  S = sum_k w_k sigma(a_k x + b_k),  w = softmax(log_w),  a_k > 0
        dy/dx = sum_k w_k a_k sigma_k (1 - sigma_k) / (S (1 - S))

    ``log S`` and ``log(1 - S)`` are log-sum-exps of ``log w_k + log sigma(+-u_k)``, so neither 0 nor 1 is
    ever rounded to and no clipping is needed (this replaces the paper's epsilon-clipped logit):
    |x| = 1e4 gives finite y and log-derivative.  Shapes: x [..., 1 or d], parameters [..., K].
    """
    u = tf.exp(log_a) * x[..., None] + b
    log_sig, log_1msig = tf.math.log_sigmoid(u), tf.math.log_sigmoid(-u)
    log_s = tf.reduce_logsumexp(log_w + log_sig, axis=-1)
    log_1ms = tf.reduce_logsumexp(log_w + log_1msig, axis=-1)
    y = log_s - log_1ms
    log_dsdx = tf.reduce_logsumexp(log_w + log_a + log_sig + log_1msig, axis=-1)
    return y, log_dsdx - log_s - log_1ms


@tf.function(reduce_retracing=True)
def dsf_invert(y, log_a, b, log_w, doublings: int = 40, iterations: int = 80):
    """Solve ``dsf(x) = y`` for x by bracketing (doubling [-1, 1]) then bisection; the map is increasing."""
    one = tf.ones_like(y)

    def expand(i, lo, hi):
        lo = tf.where(dsf(lo, log_a, b, log_w)[0] > y, 2 * lo, lo)
        hi = tf.where(dsf(hi, log_a, b, log_w)[0] < y, 2 * hi, hi)
        return i + 1, lo, hi

    def bisect(i, lo, hi):
        mid = 0.5 * (lo + hi)
        above = dsf(mid, log_a, b, log_w)[0] > y
        return i + 1, tf.where(above, lo, mid), tf.where(above, mid, hi)

    _, lo, hi = tf.while_loop(lambda i, *_: i < doublings, expand, (0, -one, one))
    _, lo, hi = tf.while_loop(lambda i, *_: i < iterations, bisect, (0, lo, hi))
    return 0.5 * (lo + hi)


class DeepSigmoidalTransform(FlowLayer):
    """One NAF step: a DSF transformer per dimension whose (a, b, w) come from a MADE of the preceding dimensions.

    Data -> noise: ``z_i = DSF(x_i; a, b, w = MADE(x_{<i}))``, ``log|det dz/dx| = sum_i log dz_i/dx_i``.
    Noise -> data (``forward``): ``d`` passes; pass i computes ``MADE(x)`` from the dimensions solved so far
    and solves ``z_i = DSF(x_i)`` for ``x_i`` by bracketing and bisection (``dsf_invert``), to bisection
    precision.  Slow (d MADE calls and ~160 scalar transformer evaluations per dimension), but exact,
    and differentiable: each pass ends with a Newton step from the (stop-gradient) root, which carries the
    implicit-function gradient, so ``sample`` can be trained through (e.g. by reverse KL).

    Args:
        num_features: d; hidden_units: MADE widths; num_sigmoids: K; dtype; activation: MADE activation; seed.
    """

    def __init__(self, num_features, hidden_units, num_sigmoids, dtype, activation="relu", seed=0, name=None):
        super().__init__(name=name)
        self.dtype, self.d, self.k = as_dtype(dtype), int(num_features), int(num_sigmoids)
        if self.k < 1:
            raise ValueError(f"naf: num_sigmoids = {num_sigmoids} must be >= 1")
        # MADE with numpy-seeded Glorot weights and degrees cycling over 1..d-1
        self.made = MaskedMLP(self.d, 3 * self.k, hidden_units, self.dtype, activation=activation,
                              hidden_degrees="cyclic", zero_last=False, backend="numpy", seed=seed)

    def _params(self, x):
        raw = self.made(x)  # [b, d, 3K]
        a_raw, b, w_raw = tf.split(raw, 3, axis=-1)
        log_a = tf.math.log(tf.nn.softplus(a_raw + tf.constant(0.5413, self.dtype)) + tf.constant(A_MIN, self.dtype))
        return log_a, b, tf.nn.log_softmax(w_raw, axis=-1)

    def inverse(self, x, training: bool = False):
        z, log_dz = dsf(x, *self._params(x))
        return z, tf.reduce_sum(log_dz, axis=-1)

    def forward(self, z):
        x = tf.zeros_like(z)
        iters = 80 if self.dtype == tf.float64 else 50
        for i in range(self.d):  # dimension i needs x_{<i} only, which earlier passes made exact
            params = [p[:, i:i + 1] for p in self._params(x)]
            z_i = z[:, i:i + 1]
            x_star = tf.stop_gradient(dsf_invert(z_i, *params, iterations=iters))
            # one Newton step at the root: the same value, but differentiable with the implicit-function
            # gradients dx/dz = 1 / DSF'(x), dx/dparams = -(dDSF/dparams) / DSF'(x)
            y, log_dy = dsf(x_star, *params)
            x_i = x_star - (y - z_i) * tf.exp(-log_dy)
            x = x + x_i * tf.one_hot(i, self.d, dtype=self.dtype)  # x[:, i] is still 0 here
        _, log_dz = dsf(x, *self._params(x))
        return x, -tf.reduce_sum(log_dz, axis=-1)


NAF_DEFAULTS = {"num_layers": 2, "hidden_units": [64, 64], "num_sigmoids": 8, "activation": Option("relu", choices=tuple(sorted(ACTIVATIONS)), doc="hidden activation")}


@register("naf", NAF_DEFAULTS, can_sample=True,
          paper="Huang, Krueger, Lacoste & Courville 2018, Neural Autoregressive Flows, arXiv:1804.00779")
def build_naf(event_shape, dtype, *, num_layers, hidden_units, num_sigmoids, activation) -> Flow:
    """NAF with deep sigmoidal flows: ``num_layers`` DSF steps (MADE ``hidden_units``, ``num_sigmoids`` sigmoids),
    the feature order reversed between steps.  Sampling inverts each step by bisection (d MADE passes a step).
    """
    dtype = as_dtype(dtype)
    (d,) = event_shape
    if int(num_layers) < 1:
        raise ValueError(f"naf: num_layers = {num_layers} must be >= 1")
    layers = []
    for i in range(int(num_layers)):
        if i:
            layers.append(Reverse(d, dtype))
        layers.append(DeepSigmoidalTransform(d, hidden_units, num_sigmoids, dtype, activation, seed=i))
    return Flow(layers, tuple(event_shape), dtype, name="naf")
