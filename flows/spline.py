"""Neural Spline Flows: rational-quadratic splines, coupling and autoregressive."""

from __future__ import annotations

import math
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from .autoregressive import check_activation, made_network
from .base import Flow, FlowLayer, as_dtype
from .layers import BijectorLayer, Permutation, alternating_mask, check_hidden_units, check_positive_int, mlp
from .registry import register

tfb = tfp.bijectors

__all__ = ["rational_quadratic_spline", "SplineCoupling", "build_nsf", "FORMS"]

FORMS = ("coupling", "autoregressive")
#: smallest bin width / height (as a number, in units of x) and smallest knot derivative
MIN_BIN = 1e-3
MIN_SLOPE = 1e-3


def rational_quadratic_spline(params, num_bins: int, tail_bound: float) -> tfb.RationalQuadraticSpline:
    """Monotonic rational-quadratic spline with ``K = num_bins`` bins on ``[-B, B]`` and identity tails.

    "Neural Spline Flows", C. Durkan, A. Bekasov, I. Murray, G. Papamakarios, 2019,
    https://arxiv.org/abs/1906.04032

    ``params[..., 3K-1]`` are unconstrained: ``K`` widths and ``K`` heights (softmax, scaled to sum to ``2B``,
    each at least ``MIN_BIN``) and ``K-1`` interior knot derivatives (softplus, at least ``MIN_SLOPE``; the
    two boundary derivatives are 1 so the tails ``|x| > B`` join the identity smoothly).  In bin ``k`` with
    ``xi = (x - x_k) / w_k``, ``s_k = h_k / w_k`` and knot derivatives ``d_k, d_{k+1}``:

        y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)].

    All parameters zero give the identity (uniform bins, unit derivatives).
    """
    k = int(num_bins)
    dtype = params.dtype
    span = 2.0 * tail_bound
    w, h, s = params[..., :k], params[..., k:2 * k], params[..., 2 * k:]
    widths = tf.nn.softmax(w, axis=-1) * tf.constant(span - k * MIN_BIN, dtype) + tf.constant(MIN_BIN, dtype)
    heights = tf.nn.softmax(h, axis=-1) * tf.constant(span - k * MIN_BIN, dtype) + tf.constant(MIN_BIN, dtype)
    # softplus(0 + c) + MIN_SLOPE = 1, so zero parameters give unit derivatives
    c = tf.constant(math.log(math.expm1(1.0 - MIN_SLOPE)), dtype)
    slopes = tf.nn.softplus(s + c) + tf.constant(MIN_SLOPE, dtype)
    return tfb.RationalQuadraticSpline(widths, heights, slopes, range_min=tf.constant(-tail_bound, dtype))


class SplineCoupling(FlowLayer):
    """Rational-quadratic spline coupling layer (NSF, Durkan et al. 2019, arXiv:1906.04032).

    Data -> noise: the masked features ``b * x`` condition an MLP whose output parametrises one
    :func:`rational_quadratic_spline` per free feature,

        z = b * x + (1 - b) * RQS_theta(x),    theta = NN(b * x),
        log|det dz/dx| = sum_{i free} log RQS'_theta(x_i);

    noise -> data applies ``RQS^-1`` (an exact quadratic root).  Outside ``[-B, B]`` the map is the identity.
    The MLP's last layer starts at zero, so the layer starts as the identity.

    Arguments:
        mask: boolean array of length ``d``, True for the conditioning (unchanged) features.
        num_bins, tail_bound: ``K`` and ``B``.
        hidden_units, activation: the conditioner MLP.
        dtype: the flow's dtype.
    """

    def __init__(self, mask, num_bins: int, tail_bound: float, hidden_units, dtype="float32",
                 activation: str = "relu", name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        mask = np.asarray(mask, dtype=bool)
        self.d, self.num_bins, self.tail_bound = mask.shape[0], int(num_bins), float(tail_bound)
        self.kept = tf.constant(mask)
        self.mask = tf.constant(mask, self.dtype)
        self.net = mlp(self.d, self.d * (3 * self.num_bins - 1), hidden_units, self.dtype, activation)

    def _spline(self, kept):
        params = tf.reshape(self.net(kept), [-1, self.d, 3 * self.num_bins - 1])
        return rational_quadratic_spline(params, self.num_bins, self.tail_bound)

    def inverse(self, x, training: bool = False):
        spline = self._spline(x * self.mask)
        z = tf.where(self.kept, x, spline.forward(x))
        ldj = spline.forward_log_det_jacobian(x, event_ndims=0)
        return z, tf.reduce_sum((1 - self.mask) * ldj, axis=-1)

    def forward(self, z):
        spline = self._spline(z * self.mask)
        x = tf.where(self.kept, z, spline.inverse(z))
        ldj = spline.inverse_log_det_jacobian(z, event_ndims=0)
        return x, tf.reduce_sum((1 - self.mask) * ldj, axis=-1)


def _linear_layer(d, dtype, i, lu_linear):
    """An LU-parametrised linear layer (flows.glow.LULinear) or, without it, a fixed random permutation."""
    if lu_linear:
        try:
            from .glow import LULinear
        except ImportError:
            warnings.warn("nsf: flows.glow.LULinear is not available; using a random permutation instead")
        else:
            # NSF (after nflows): a random permutation with L = U = I at the start, then everything is learnt
            return LULinear(d, dtype, seed=i, init="identity", name=f"lu_linear_{i}")
    return Permutation(d, seed=i, dtype=dtype, name=f"permutation_{i}")


@register(
    "nsf",
    {"num_layers": 4, "form": "coupling", "num_bins": 8, "tail_bound": 3.0, "hidden_units": [64, 64],
     "lu_linear": True, "activation": "relu"},
    paper="Durkan, Bekasov, Murray, Papamakarios 2019, Neural Spline Flows, https://arxiv.org/abs/1906.04032",
)
def build_nsf(event_shape, dtype, num_layers=4, form="coupling", num_bins=8, tail_bound=3.0,
              hidden_units=(64, 64), lu_linear=True, activation="relu") -> Flow:
    """Neural Spline Flow (Durkan et al. 2019): rational-quadratic spline steps with linear mixing between them.

    ``form = "coupling"`` (RQ-NSF (C)): :class:`SplineCoupling` with alternating masks; one pass each way.
    ``form = "autoregressive"`` (RQ-NSF (AR)): TFP ``MaskedAutoregressiveFlow`` whose MADE outputs the spline
    parameters; density one pass, sampling ``d`` passes.  Between consecutive steps an LU-parametrised
    linear layer (``lu_linear``, ``flows.glow.LULinear``) or a fixed random permutation.
    ``num_bins`` = K bins on ``[-tail_bound, tail_bound]``; identity outside.
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
    check_activation(activation, "nsf")
    layers = []
    for i in range(num_layers):
        if i > 0:
            layers.append(_linear_layer(d, dtype, i, lu_linear))
        if form == "coupling":
            layers.append(SplineCoupling(alternating_mask(d, i), num_bins, tail_bound, units, dtype, activation,
                                         name=f"spline_coupling_{i}"))
        else:
            made = made_network(d, 3 * num_bins - 1, units, dtype, activation)

            def bijector_fn(y, _made=made, **condition_kwargs):
                return rational_quadratic_spline(_made(y), num_bins, tail_bound)

            layers.append(BijectorLayer(tfb.MaskedAutoregressiveFlow(bijector_fn=bijector_fn), event_ndims=1,
                                        modules=[made], name=f"spline_autoregressive_{i}"))
    return Flow(layers, event_shape, dtype, name="nsf")
