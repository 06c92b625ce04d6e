"""Neural Spline Flows: rational-quadratic splines, coupling and autoregressive."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .autoregressive import MaskedAutoregressive
from .base import Flow, FlowLayer, as_dtype
from .glow import LULinear
from .nn import (ACTIVATIONS, MLP, MaskedMLP, MaskSplit, Permutation, alternating_mask, check_hidden_units,
                 check_positive_int, in_xla_training, xla_barrier)
from .options import Option
from .registry import register

tfb = tfp.bijectors

__all__ = ["spline_knots", "rqs", "RQSBijectorFn", "SplineCoupling", "build_nsf", "FORMS"]

FORMS = ("coupling", "autoregressive")
#: smallest bin width / height (as a number, in units of x) and smallest knot derivative
MIN_BIN = 1e-3
MIN_SLOPE = 1e-3


def spline_knots(params, num_bins: int, tail_bound: float):
    """Unconstrained ``params[..., 3K-1]`` -> bin widths, heights ``[..., K]`` and knot derivatives ``[..., K+1]``.

    Widths and heights: softmax, scaled to sum to ``2B``, each at least ``MIN_BIN``.  Derivatives: softplus,
    at least ``MIN_SLOPE``, for the ``K-1`` interior knots; the two boundary derivatives are 1 so that the
    identity tails ``|x| > B`` join smoothly.  All parameters zero give the identity.
    """
    k = int(num_bins)
    w, h, s = params[..., :k], params[..., k:2 * k], params[..., 2 * k:]
    widths, heights, interior = _constrain(w, h, s, k, tail_bound)
    ones = tf.ones_like(interior[..., :1])
    return widths, heights, tf.concat([ones, interior, ones], axis=-1)


def _constrain(w, h, s, k, tail_bound):
    dtype = w.dtype
    scale = tf.constant(2.0 * tail_bound - k * MIN_BIN, dtype)
    widths = tf.nn.softmax(w, axis=-1) * scale + tf.constant(MIN_BIN, dtype)
    heights = tf.nn.softmax(h, axis=-1) * scale + tf.constant(MIN_BIN, dtype)
    c = tf.constant(math.log(math.expm1(1.0 - MIN_SLOPE)), dtype)  # softplus(0 + c) + MIN_SLOPE = 1
    return widths, heights, tf.nn.softplus(s + c) + tf.constant(MIN_SLOPE, dtype)


def _bin_parts(params, num_bins: int, tail_bound: float):
    """Per bin, ``[..., K]`` each: left x knot, width, left y knot, height, left and right knot derivatives.

    From ops that are cheap op by op: a split instead of slices (whose gradients are full-size scatters), the knots
    as one product with a triangular matrix instead of ``tf.cumsum`` (slow on small axes, and so is its gradient),
    the derivatives of both ends built directly."""
    k = int(num_bins)
    bound = tf.constant(tail_bound, params.dtype)
    widths, heights, interior = _constrain(*tf.split(params, [k, k, k - 1], axis=-1), k, tail_bound)
    ones = tf.ones_like(interior[..., :1])
    return (_exclusive_cumsum(widths) - bound, widths, _exclusive_cumsum(heights) - bound, heights,
            tf.concat([ones, interior], axis=-1), tf.concat([interior, ones], axis=-1))


def _exclusive_cumsum(x):
    """``[..., K]`` -> ``x_0 + ... + x_{i-1}`` at ``i`` (0 at 0): one product with a strictly upper-triangular
    matrix of ones, summed in index order like ``tf.cumsum``."""
    k = int(x.shape[-1])
    upper = tf.constant(np.triu(np.ones((k, k)), 1), x.dtype)
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, k]), upper), tf.shape(x))


def _bin(values, left, num_bins):
    """One-hot ``[..., K]`` of the bin of each value (``left``: the bins' left knots, ``[..., K]``; the edges are
    ``left[..., 1:]``), values inside the range."""
    idx = tf.reduce_sum(tf.cast(values[..., None] >= left[..., 1:num_bins], tf.int32), axis=-1)
    return tf.one_hot(idx, num_bins, dtype=values.dtype)


def _pick(onehot, table):
    """``table``'s entry in the bin of ``onehot``: ``sum(onehot * table)`` over the last axis."""
    return tf.reduce_sum(onehot * table, axis=-1)


def _in_bin(v, x_k, w_k, y_k, h_k, d_k, d_k1, inverse):
    """The spline inside one bin, elementwise (the formulas of :func:`rqs`): ``(outputs, log|d outputs / d v|)``."""
    s_k = h_k / w_k
    sum_d = d_k1 + d_k - 2 * s_k
    if inverse:
        dy = v - y_k
        a = h_k * (s_k - d_k) + dy * sum_d
        b = h_k * d_k - dy * sum_d
        c = -s_k * dy
        disc = tf.maximum(b * b - 4 * a * c, tf.zeros_like(b))
        xi = 2 * c / (-b - tf.sqrt(disc))
        out = xi * w_k + x_k
    else:
        xi = (v - x_k) / w_k
        out = y_k + h_k * (s_k * xi * xi + d_k * xi * (1 - xi)) / (s_k + sum_d * xi * (1 - xi))
    xi1 = xi * (1 - xi)
    denom = s_k + sum_d * xi1
    log_dy_dx = (2 * tf.math.log(s_k) + tf.math.log(d_k1 * xi * xi + 2 * s_k * xi1 + d_k * (1 - xi) ** 2)
                 - 2 * tf.math.log(denom))
    return out, (-log_dy_dx if inverse else log_dy_dx)


def rqs(inputs, params, num_bins: int, tail_bound: float, inverse: bool = False):
    """Monotonic rational-quadratic spline (NSF), elementwise: ``(outputs, log|d outputs / d inputs|)``.

    "Neural Spline Flows", C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, 2019,
    https://arxiv.org/abs/1906.04032 (eq. 4, appendix A)

    ``K`` bins on ``[-B, B]`` from :func:`spline_knots`; identity (log-det 0) outside.  In bin ``k`` with
    ``xi = (x - x_k) / w_k``, ``s_k = h_k / w_k`` and knot derivatives ``d_k, d_{k+1}``:

        y  = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)],
        dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [s_k + (...) xi (1 - xi)]^2,

    and the inverse is the root ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` of a quadratic (appendix A).
    Inputs are clipped into ``[-B, B]`` before the spline, so values and gradients stay finite for any input
    (``|x| = 1e4`` included); bins are found by comparison and one-hot selection (no gather).
    ``params[..., 3K-1]`` has one more axis than ``inputs``.  Inside a training call that XLA compiles
    (:func:`flows.nn.in_xla_training`) the same spline runs as :func:`_rqs_rows`.
    """
    if in_xla_training():
        return _rqs_rows(inputs, params, num_bins, tail_bound, inverse)
    bound = tf.constant(tail_bound, inputs.dtype)
    x_left, widths, y_left, heights, d_left, d_right = _bin_parts(params, num_bins, tail_bound)
    inside = tf.abs(inputs) < bound
    v = tf.clip_by_value(inputs, -bound, bound)
    onehot = _bin(v, y_left if inverse else x_left, num_bins)
    out, ldj = _in_bin(v, *(_pick(onehot, t) for t in (x_left, widths, y_left, heights, d_left, d_right)), inverse)
    return tf.where(inside, out, inputs), tf.where(inside, ldj, tf.zeros_like(ldj))


def _rqs_rows(inputs, params, num_bins: int, tail_bound: float, inverse: bool):
    """:func:`rqs` for XLA's CPU backend: the ``n`` values' parameters as rows (``[3K-1, n]``), a written gradient.

    XLA's CPU loops are fast over long contiguous rows and slow over a short last axis (``[..., K]``: scalar code
    with index arithmetic per element), and left to autodiff it fuses the spline's gradient into every consumer
    and recomputes it.  Here every per-bin op works on whole rows, the exclusive sums of the knots are unrolled
    row additions, and the gradient is written out: the in-bin formulas' gradient (autodiff on ``[1, n]`` rows),
    materialised once (:func:`flows.nn.xla_barrier`), then sent to the bins directly, using that the one-hot
    selection picks bin ``b``: a knot's position ``x_b = sum_{j<b} w_j`` passes its gradient to the widths of the
    bins left of ``b``, the softmax and softplus gradients follow in closed form.  Same values as :func:`rqs` to
    rounding (``tests/test_nn.py`` checks both directions and gradients to 1e-11 in float64).
    """
    k, dtype = int(num_bins), inputs.dtype
    bound = tf.constant(tail_bound, dtype)
    scale = tf.constant(2.0 * tail_bound - k * MIN_BIN, dtype)
    shift = tf.constant(math.log(math.expm1(1.0 - MIN_SLOPE)), dtype)  # as in _constrain
    bins = tf.range(k)[:, None]

    def softmax_rows(t):
        e = tf.exp(t - tf.reduce_max(t, axis=0, keepdims=True))
        return e / tf.reduce_sum(e, axis=0, keepdims=True)

    def exclusive_sums(rows, zeros):  # x_0 + ... + x_{i-1}, summed in index order like _exclusive_cumsum
        acc, out = None, [zeros]
        for i in range(k - 1):
            acc = rows[i:i + 1] if acc is None else acc + rows[i:i + 1]
            out.append(acc)
        return tf.concat(out, axis=0)

    @tf.custom_gradient
    def spline(x, t):  # x [1, n], t [3K-1, n]
        zeros, ones = tf.zeros_like(x), tf.ones_like(x)
        s_w, s_h = softmax_rows(t[:k]), softmax_rows(t[k:2 * k])
        widths = s_w * scale + tf.constant(MIN_BIN, dtype)
        heights = s_h * scale + tf.constant(MIN_BIN, dtype)
        interior = tf.nn.softplus(t[2 * k:] + shift) + tf.constant(MIN_SLOPE, dtype)
        x_left, y_left = exclusive_sums(widths, zeros) - bound, exclusive_sums(heights, zeros) - bound
        d_left, d_right = tf.concat([ones, interior], axis=0), tf.concat([interior, ones], axis=0)
        inside = tf.abs(x) < bound
        v = tf.clip_by_value(x, -bound, bound)
        b = tf.reduce_sum(tf.cast(v >= (y_left if inverse else x_left)[1:], tf.int32), axis=0, keepdims=True)
        onehot = tf.cast(tf.equal(bins, b), dtype)
        picked = [tf.reduce_sum(onehot * table, axis=0, keepdims=True)
                  for table in (x_left, widths, y_left, heights, d_left, d_right)]
        out, ldj = _in_bin(v, *picked, inverse)

        def grad(g_out, g_ldj):
            g_out = zeros if g_out is None else g_out
            g_ldj = zeros if g_ldj is None else g_ldj
            with tf.GradientTape() as tape:
                tape.watch([v] + picked)
                again = _in_bin(v, *picked, inverse)
            g_v, *g_picked = tape.gradient(again, [v] + picked, output_gradients=[g_out, g_ldj])
            g_x = tf.where(inside, g_v, g_out)  # outside: the identity; inside: through the clip
            g_x, g_xk, g_wk, g_yk, g_hk, g_dk, g_dk1 = tf.unstack(xla_barrier(tf.stack(
                [g_x] + [tf.where(inside, g, zeros) for g in g_picked], axis=-1)), axis=-1)
            at, left_of = tf.equal(bins, b), bins < b  # bin b itself; the bins whose widths sum to x_b
            zero = tf.zeros_like(widths)
            g_w = tf.where(at, g_wk, zero) + tf.where(left_of, g_xk, zero)
            g_h = tf.where(at, g_hk, zero) + tf.where(left_of, g_yk, zero)
            g_int = (tf.where(at[1:], g_dk, zero[1:])  # d_b = interior[b - 1]
                     + tf.where(at[:-1], g_dk1, zero[1:]))  # d_{b+1} = interior[b]
            return g_x, tf.concat([scale * s_w * (g_w - tf.reduce_sum(s_w * g_w, axis=0, keepdims=True)),
                                   scale * s_h * (g_h - tf.reduce_sum(s_h * g_h, axis=0, keepdims=True)),
                                   g_int * tf.sigmoid(t[2 * k:] + shift)], axis=0)

        return (tf.where(inside, out, x), tf.where(inside, ldj, zeros)), grad

    shape = tf.shape(inputs)
    out, ldj = spline(tf.reshape(inputs, [1, -1]), tf.transpose(tf.reshape(params, [-1, 3 * k - 1])))
    return tf.reshape(out, shape), tf.reshape(ldj, shape)


class RQSBijectorFn(tf.Module):
    """MADE output -> the spline of :func:`rqs` as a TFP ``RationalQuadraticSpline`` (same knots).

    TFP's bijector is used only for the sequential (sampling) direction of the autoregressive form, through
    ``tfb.MaskedAutoregressiveFlow``; ``one_pass`` is the fast density direction with :func:`rqs`.
    """

    def __init__(self, made, num_bins: int, tail_bound: float, name=None):
        super().__init__(name=name)
        self.made, self.num_bins, self.tail_bound = made, int(num_bins), float(tail_bound)

    def __call__(self, y, training: bool = False, **condition_kwargs):
        widths, heights, derivs = spline_knots(self.made(y, training=training), self.num_bins, self.tail_bound)
        return tfb.RationalQuadraticSpline(widths, heights, derivs[..., 1:-1],
                                           range_min=tf.constant(-self.tail_bound, y.dtype))

    def one_pass(self, y, training: bool = False):
        """``u = f_y^-1(y)`` and ``log|det du/dy|``: one network pass."""
        u, ldj = rqs(y, self.made(y, training=training), self.num_bins, self.tail_bound, inverse=True)
        return u, tf.reduce_sum(ldj, axis=-1)


class SplineCoupling(FlowLayer):
    """Rational-quadratic spline coupling layer (NSF, Durkan et al. 2019, arXiv:1906.04032).

    Data -> noise: the masked features ``b * x`` condition an MLP whose output parametrises one
    :func:`rqs` per free feature,

        z = b * x + (1 - b) * RQS_theta(x),    theta = NN(b * x),
        log|det dz/dx| = sum_{i free} log RQS'_theta(x_i);

    noise -> data applies ``RQS^-1`` (an exact quadratic root).  Outside ``[-B, B]`` the map is the identity.
    The MLP's last layer starts at zero, so the layer starts as the identity.  It has an output for every
    feature's ``3K - 1`` spline parameters (so that checkpoints keep their shapes), but only the free features'
    are computed (``MLP(..., columns=...)``), and the splines run on the free features only.

    Arguments:
        mask: boolean array of length ``d``, True for the conditioning (unchanged) features.
        num_bins, tail_bound: ``K`` and ``B``.
        hidden_units, activation: the conditioner MLP.
        dtype: the flow's dtype.
        residual_blocks, dropout: the MLP's residual blocks and dropout rate (:class:`flows.nn.MLP`; dropout
            acts in ``inverse(x, training=True)`` only).
    """

    def __init__(self, mask, num_bins: int, tail_bound: float, hidden_units, dtype="float32",
                 activation: str = "relu", residual_blocks: int = 0, dropout: float = 0.0, name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        mask = np.asarray(mask, dtype=bool)
        self.d, self.num_bins, self.tail_bound = mask.shape[0], int(num_bins), float(tail_bound)
        self.mask = tf.constant(mask, self.dtype)
        p = 3 * self.num_bins - 1
        self.net = MLP(self.d, self.d * p, hidden_units, self.dtype, activation=activation,
                       residual_blocks=residual_blocks, dropout=dropout)
        self.split = MaskSplit(mask)
        self.columns = (self.split.free[:, None] * p + np.arange(p)[None, :]).reshape(-1)

    def _apply(self, v, inverse, training=False):
        p = 3 * self.num_bins - 1  # the network gives every feature's p parameters; only the free ones' are used
        params = tf.reshape(self.net(v * self.mask, training=training, columns=self.columns),
                            [-1, len(self.split.free), p])
        kept, free = self.split.split(v)
        out, ldj = rqs(free, params, self.num_bins, self.tail_bound, inverse=inverse)
        return self.split.join(kept, out), tf.reduce_sum(ldj, axis=-1)

    def inverse(self, x, training: bool = False):
        return self._apply(x, inverse=False, training=training)

    def forward(self, z):
        return self._apply(z, inverse=True)


def _linear_layer(d, dtype, i, lu_linear):
    """An LU-parametrised linear layer (:class:`flows.glow.LULinear`) or, without it, a fixed random permutation."""
    if lu_linear:
        # NSF (after nflows): a random permutation with L = U = I at the start, then everything is learnt
        return LULinear(d, dtype, seed=i, init="identity", name=f"lu_linear_{i}")
    return Permutation(d, seed=i, dtype=dtype, name=f"permutation_{i}")


@register(
    "nsf",
    {"num_layers": 4, "form": Option("coupling", choices=FORMS), "num_bins": Option(8, low=2, doc="K bins"),
     "tail_bound": Option(3.0, low=0.0, positive=True), "hidden_units": [64, 64], "lu_linear": True,
     "activation": Option("relu", choices=tuple(sorted(ACTIVATIONS)), doc="hidden activation"),
     "residual_blocks": Option(0, low=0, doc="residual blocks of width hidden_units[0] per conditioner; 0: a plain "
                                             "MLP / MADE"),
     "dropout": Option(0.0, low=0.0, below=1.0, doc="dropout rate of the conditioners, in training only")},
    paper="Durkan, Bekasov, Murray, Papamakarios 2019, Neural Spline Flows, https://arxiv.org/abs/1906.04032",
)
def build_nsf(event_shape, dtype, *, num_layers, form, num_bins, tail_bound, hidden_units, lu_linear,
              activation, residual_blocks, dropout) -> Flow:
    """Neural Spline Flow (Durkan et al. 2019): rational-quadratic spline steps with linear mixing between them.

    ``form = "coupling"`` (RQ-NSF (C)): :class:`SplineCoupling` with alternating masks; one pass each way.
    ``form = "autoregressive"`` (RQ-NSF (AR)): TFP ``MaskedAutoregressiveFlow`` whose MADE outputs the spline
    parameters; density one pass, sampling ``d`` passes.  Between consecutive steps an LU-parametrised
    linear layer (``lu_linear``, ``flows.glow.LULinear``) or a fixed random permutation.
    ``num_bins`` = K bins on ``[-tail_bound, tail_bound]``; identity outside.

    Conditioners as the paper's (after nflows' ``ResidualNet`` and residual MADE; the paper's tabular models use
    "2 residual blocks of 256 units"): ``residual_blocks`` > 0 makes every conditioner (the coupling MLP, or the
    MADE, whose residual stream keeps the autoregressive masks) a linear stem to width ``hidden_units[0]``, that
    many residual blocks ``h + L2(dropout(act(L1(act(h)))))`` and the output layer (``hidden_units`` must then be
    all equal; only that width counts); ``dropout`` drops hidden units during training only (``log_prob(x,
    training=True)``, which training uses), so evaluation and sampling are deterministic.  0 and 0.0 (defaults):
    the plain MLP / MADE of ``hidden_units``.

    Example::

        >>> flow = flows.build_flow("nsf", [6], form="autoregressive", num_bins=8, tail_bound=3.0)
        >>> flow.log_prob(tf.fill([2, 6], 1e4)).numpy()   # finite: identity tails
    """
    if len(event_shape) != 1:
        raise ValueError(f"nsf: event shape {list(event_shape)} must be [d] (a vector)")
    d = int(event_shape[0])
    if form not in FORMS:
        raise ValueError(f"nsf: form = {form!r} is not known; accepted: {', '.join(FORMS)}")
    if d < 2:
        raise ValueError(f"nsf: event size d = {d} must be at least 2 for a {form} layer")
    dtype = as_dtype(dtype)
    num_layers = check_positive_int(num_layers, "num_layers", "nsf")
    num_bins = check_positive_int(num_bins, "num_bins", "nsf")
    if not tail_bound > 0:
        raise ValueError(f"nsf: tail_bound = {tail_bound!r} must be a positive number")
    if 2.0 * tail_bound <= num_bins * MIN_BIN:
        raise ValueError(f"nsf: tail_bound = {tail_bound!r} is too small for {num_bins} bins of width >= {MIN_BIN}")
    units = check_hidden_units(hidden_units, "nsf")
    if isinstance(residual_blocks, bool) or not isinstance(residual_blocks, int) or residual_blocks < 0:
        raise ValueError(f"nsf: residual_blocks = {residual_blocks!r} must be an integer >= 0")
    if residual_blocks and len(set(units)) != 1:
        raise ValueError(f"nsf: with residual_blocks = {residual_blocks} the conditioners' hidden width is that of "
                         f"the residual stream, so hidden_units must be all equal; got {list(units)}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"nsf: dropout = {dropout!r} must be in [0, 1)")
    layers = []
    for i in range(num_layers):
        if i > 0:
            layers.append(_linear_layer(d, dtype, i, lu_linear))
        if form == "coupling":
            layers.append(SplineCoupling(alternating_mask(d, i), num_bins, tail_bound, units, dtype, activation,
                                         residual_blocks=residual_blocks, dropout=dropout,
                                         name=f"spline_coupling_{i}"))
        else:
            made = MaskedMLP(d, 3 * num_bins - 1, units, dtype, activation=activation,
                             residual_blocks=residual_blocks, dropout=dropout)
            fn = RQSBijectorFn(made, num_bins, tail_bound)
            layers.append(MaskedAutoregressive(made, fn, one_pass=fn.one_pass, name=f"spline_autoregressive_{i}"))
    return Flow(layers, event_shape, dtype, name="nsf")
