"""Autoregressive flows: MAF and IAF with TFP's MaskedAutoregressiveFlow and a MADE (:class:`flows.nn.MaskedMLP`)."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from .base import Flow, FlowLayer, as_dtype
from .nn import ACTIVATIONS, BatchNorm, MaskedMLP, Reverse, check_hidden_units, check_positive_int, soft_clamp
from .options import Option
from .registry import register

tfb = tfp.bijectors

__all__ = ["AffineBijectorFn", "MaskedAutoregressive", "build_maf", "build_iaf"]

#: bound of the log-scale of one autoregressive layer: log_scale = 3 tanh(raw / 3)
LOG_SCALE_BOUND = 3.0


class AffineBijectorFn(tf.Module):
    """MADE output -> elementwise affine bijector ``u -> u * exp(log_scale) + shift``, log-scale in (-3, 3)."""

    def __init__(self, made: MaskedMLP, name=None):
        super().__init__(name=name)
        self.made = made

    def __call__(self, y, training: bool = False, **condition_kwargs):
        shift, raw = tf.unstack(self.made(y, training=training), axis=-1)
        return tfb.Chain([tfb.Shift(shift), tfb.Scale(log_scale=soft_clamp(raw, LOG_SCALE_BOUND))])


class MaskedAutoregressive(FlowLayer):
    """One masked autoregressive layer (MAF, or IAF with ``invert``) around TFP's ``MaskedAutoregressiveFlow``.

    ``bijector_fn(y)`` maps the data-side vector ``y`` to an elementwise bijector ``f`` whose parameters for
    feature ``i`` depend on ``y_<i`` only (a MADE).  TFP's convention: ``y = f(u)`` is the sequential
    direction (``d`` passes, done by ``tfb.MaskedAutoregressiveFlow.forward``) and ``u = f^-1(y)`` the
    one-pass direction, computed here directly so that its log-determinant reuses the same network pass:

        u = f_y^-1(y),    log|det du/dy| = sum_i log|d f_y^-1 / d y_i|.

    MAF (``invert=False``): data ``x = y``, noise ``z = u``: density in one pass, sampling in ``d``.
    IAF (``invert=True``): noise ``z = y``, data ``x = u``: sampling in one pass, density in ``d``.

    Arguments:
        made: the MADE network (kept for variable tracking).
        bijector_fn: ``y -> tfb.Bijector`` acting elementwise, as in ``tfb.MaskedAutoregressiveFlow``.
        invert: IAF instead of MAF.
        one_pass: optional ``(y, training) -> (u, log|det du/dy|)``, a faster implementation of the one-pass
            direction.
    """

    def __init__(self, made, bijector_fn, invert: bool = False, one_pass=None, name=None):
        super().__init__(name=name)
        self.made = made
        self.bijector_fn = bijector_fn
        self.invert = bool(invert)
        self.one_pass = one_pass
        self.maf = tfb.MaskedAutoregressiveFlow(bijector_fn=bijector_fn)

    def _one_pass(self, y, training=False):  # training: the MADE's dropout, if it has any
        if self.one_pass is not None:  # a faster implementation of the same map (splines)
            return self.one_pass(y, training=training)
        f = self.bijector_fn(y, training=training)
        return f.inverse(y), f.inverse_log_det_jacobian(y, event_ndims=1)

    def _sequential(self, u):
        u = tf.identity(u)  # a fresh tensor: TFP's bijector cache must never answer (it breaks gradients)
        y = self.maf.forward(u)
        return y, self.bijector_fn(y).forward_log_det_jacobian(u, event_ndims=1)

    def inverse(self, x, training: bool = False):
        return self._sequential(x) if self.invert else self._one_pass(x, training)

    def forward(self, z):
        return self._one_pass(z) if self.invert else self._sequential(z)


#: accepted values of the ``init`` hyper-parameter of MAF and IAF
INITS = ("fan_in", "identity")


def _autoregressive_layers(name, event_shape, dtype, num_layers, hidden_units, batch_norm, activation, invert,
                           init="fan_in"):
    """The flow of MAF (or IAF with ``invert``) on the standard normal."""
    return Flow(_autoregressive_stack(name, event_shape, dtype, num_layers, hidden_units, batch_norm, activation,
                                      invert, init), event_shape, dtype, name=name)


def _autoregressive_stack(name, event_shape, dtype, num_layers, hidden_units, batch_norm, activation, invert,
                          init="fan_in"):
    """The layers (data to noise) of MAF, or of IAF with ``invert``."""
    if len(event_shape) != 1:
        raise ValueError(f"{name}: event shape {list(event_shape)} must be [d] (a vector)")
    d = int(event_shape[0])
    if d < 2:
        raise ValueError(f"{name}: event size d = {d} must be at least 2 for an autoregressive network")
    dtype = as_dtype(dtype)
    num_layers = check_positive_int(num_layers, "num_layers", name)
    units = check_hidden_units(hidden_units, name)
    if init not in INITS:
        raise ValueError(f"{name}: init = {init!r} is not accepted; accepted: {', '.join(INITS)}")
    layers = []
    for i in range(num_layers):
        if i > 0:
            if batch_norm:
                layers.append(BatchNorm(d, dtype=dtype, name=f"batch_norm_{i}"))
            layers.append(Reverse(d, dtype=dtype, name=f"reverse_{i}"))
        # fan_in: PyTorch-style initialisation, output layer included (a layer does not start as the identity);
        # identity: Glorot kernels, zero biases and a zero output layer. Measured (benchmarks/maf_init.py): fan_in
        # is better on POWER and moons, identity on the 8x8 digits
        made = MaskedMLP(d, 2, units, dtype, activation=activation, zero_last=init == "identity",
                         init="fan_in" if init == "fan_in" else "glorot")
        layers.append(MaskedAutoregressive(made, AffineBijectorFn(made), invert=invert, name=f"{name}_{i}"))
    return layers


#: defaults shared by ``maf`` and ``iaf`` (laptop scale; the papers' values live in params-paper.yaml)
AUTOREGRESSIVE_DEFAULTS = {"num_layers": 5, "hidden_units": [64, 64], "batch_norm": False,
                           "activation": Option("relu", choices=tuple(sorted(ACTIVATIONS)), doc="hidden activation"),
                           "init": Option("fan_in", choices=("fan_in", "identity"), doc="MADE initialisation")}


#: ``maf``'s options: those of both, and the MADE MoG base of "MAF MoG"
MAF_OPTIONS = {**AUTOREGRESSIVE_DEFAULTS,
               "mog_components": Option(0, low=2, also=(0,), doc="0: a standard-normal base; K: a MADE MoG base "
                                                                "with K components per conditional")}


@register(
    "maf",
    MAF_OPTIONS,
    paper="Papamakarios, Pavlakou, Murray 2017, Masked Autoregressive Flow for Density Estimation, "
          "https://arxiv.org/abs/1705.07057",
)
def build_maf(event_shape, dtype, *, num_layers, hidden_units, batch_norm, activation, init, mog_components) -> Flow:
    """Masked Autoregressive Flow (Papamakarios et al. 2017, arXiv:1705.07057).

    Each layer is an affine autoregressive map conditioned by a MADE (:class:`flows.nn.MaskedMLP`):

        z_i = (x_i - mu_i(x_<i)) * exp(-alpha_i(x_<i)),    log|det dz/dx| = -sum_i alpha_i,
        x_i = z_i * exp(alpha_i(x_<i)) + mu_i(x_<i)        (sampling: feature after feature),

    with ``alpha = 3 tanh(raw / 3)``.  Density (data -> noise) takes ONE network pass; sampling (noise -> data)
    takes ``d`` sequential passes.  The feature order is reversed between layers, with a batch norm there
    too when ``batch_norm``.

    ``init``: ``"fan_in"`` (default) draws every MADE layer, the output layer included, uniform in
    +-1/sqrt(fan_in) (PyTorch's default, as in zuko), so an untrained MAF is not the identity; ``"identity"``
    uses Glorot kernels, zero biases and a zero output layer, so every layer starts as the identity and the
    untrained flow is the standard normal.  Measured after a fixed budget (benchmarks/maf_init.py, test
    log-likelihood, mean of 3 seeds): ``fan_in`` is better on POWER (-0.558 vs -0.657 nats), ``identity`` on the
    8x8 digits (78.6 vs 77.2 nats).

    ``mog_components``: 0 (default) keeps the standard-normal base; ``K >= 2`` makes the base a MADE MoG
    (:class:`flows.made.MADEBaseFlow`, the paper's "MAF MoG", whose "MAF MoG (5)" is ``num_layers = 5``,
    ``mog_components = 10``): ``K`` Gaussian components per conditional, the same ``hidden_units`` and
    ``activation`` as the MAF's MADEs, input order the reverse of the last MAF layer's, trained jointly with the
    layers.  Its density stays exact (one pass more); sampling draws the base feature by feature (``d`` passes).
    1 is refused (a Gaussian MADE base is one more MAF layer: use ``num_layers``).

    Hyper-parameters: ``num_layers`` MADEs, each with ``hidden_units`` and ``activation``; ``batch_norm``; ``init``;
    ``mog_components``.

    Example::

        >>> flow = flows.build_flow("maf", [6], num_layers=5, hidden_units=[64, 64], batch_norm=True)
        >>> flow.log_prob(tf.zeros([3, 6])).shape   # nats, one pass per layer
        TensorShape([3])
        >>> flows.build_flow("maf", [6], num_layers=5, mog_components=10).sample(3, seed=0).shape   # MAF MoG (5)
        TensorShape([3, 6])
    """
    if isinstance(mog_components, bool) or not isinstance(mog_components, int) or mog_components == 1 \
            or mog_components < 0:
        raise ValueError(f"maf: mog_components = {mog_components!r} must be 0 or an integer >= 2")
    if not mog_components:
        return _autoregressive_layers("maf", event_shape, dtype, num_layers, hidden_units, batch_norm, activation,
                                      invert=False, init=init)
    from .made import MADE, MADEBaseFlow  # made.py imports this module

    layers = _autoregressive_stack("maf", event_shape, dtype, num_layers, hidden_units, batch_norm, activation,
                                   invert=False, init=init)
    # the last MAF layer's MADE reads its input left to right; the base continues in the reverse order
    base = MADE(int(event_shape[0]), mog_components, hidden_units, activation, dtype, name="maf_mog_base",
                input_order="right-to-left")
    return MADEBaseFlow(layers, base, event_shape, dtype, name="maf")


@register(
    "iaf",
    AUTOREGRESSIVE_DEFAULTS,
    paper="Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling 2016, Improved Variational Inference with "
          "Inverse Autoregressive Flow, https://arxiv.org/abs/1606.04934",
)
def build_iaf(event_shape, dtype, *, num_layers, hidden_units, batch_norm, activation, init) -> Flow:
    """Inverse Autoregressive Flow (Kingma et al. 2016, arXiv:1606.04934): MAF's layers inverted.

    Noise -> data is the one-pass direction, conditioned on the noise:

        x_i = (z_i - mu_i(z_<i)) * exp(-alpha_i(z_<i)),    log|det dx/dz| = -sum_i alpha_i,

    so SAMPLING takes ONE network pass while the DENSITY of a data point takes ``d`` sequential passes
    (it must recover z from x).  Prefer MAF for density estimation and IAF for fast sampling (e.g. as a
    variational posterior).  Same hyper-parameters as ``maf``.

    Example::

        >>> flow = flows.build_flow("iaf", [2], num_layers=3)
        >>> x, log_q = flow.sample_and_log_prob(4, seed=0)   # one pass per layer
    """
    return _autoregressive_layers("iaf", event_shape, dtype, num_layers, hidden_units, batch_norm, activation,
                                  invert=True, init=init)
