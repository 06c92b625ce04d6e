"""MADE as a density model: Gaussian and mixture-of-Gaussian conditionals."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .autoregressive import AffineBijectorFn, MaskedAutoregressive
from .base import Flow, NotInvertibleError, as_dtype, check_input
from .nn import ACTIVATIONS, MaskedMLP, _input_degrees, check_hidden_units, check_positive_int, soft_clamp
from .options import Option
from .registry import register

__all__ = ["MADE", "MADEBaseFlow", "build_made"]

#: bound of the log-scales of the mixture components: log_sigma = 5 tanh(raw / 5)
MOG_LOG_SCALE_BOUND = 5.0


class MADE(Flow):
    """MADE used as a density of its own, with Gaussian or mixture-of-Gaussian conditionals.

    "MADE: Masked Autoencoder for Distribution Estimation", M. Germain, K. Gregor, I. Murray, H. Larochelle,
    2015, https://arxiv.org/abs/1502.03509 ; the "MADE" and "MADE MoG" rows of Papamakarios et al. 2017
    (arXiv:1705.07057).

    One masked network outputs, for every feature ``i``, the parameters of ``p(x_i | x_<i)``:

        log p(x) = sum_i log sum_k pi_ik N(x_i; mu_ik, sigma_ik^2),    (pi, mu, log sigma) = MADE(x)_i.

    ``num_components == 1`` is the Gaussian MADE: a bijection (one MAF layer,
    ``z_i = (x_i - mu_i) / sigma_i``), so every :class:`~flows.base.Flow` method works.  With
    ``num_components > 1`` (MADE MoG) the model is NOT a bijection: ``log_prob`` and ``sample`` are
    overridden (sampling draws the features one after another, ``d`` network passes) while ``inverse``,
    ``forward`` and the per-layer trajectories raise :class:`~flows.base.NotInvertibleError`.

    Arguments:
        event_size: number of features ``d`` (at least 2).
        num_components: mixture components per conditional (1 = Gaussian).
        hidden_units: widths of the MADE's hidden layers.
        activation: hidden activation.
        dtype: float32 or float64.
        input_order: the MADE's input order (:func:`flows.nn.made_masks`): ``"left-to-right"`` (feature ``i``
            conditioned on ``x_<i``), ``"right-to-left"`` (on ``x_>i``: the base of a MAF MoG,
            :class:`MADEBaseFlow`) or a permutation of 1..d; sampling follows it.
    """

    def __init__(self, event_size: int, num_components: int = 1, hidden_units=(64, 64), activation="relu",
                 dtype="float32", name="made", input_order="left-to-right"):
        dtype = as_dtype(dtype)
        d, k = int(event_size), int(num_components)
        # MoG: standard-normal output biases (as gpapamak/maf's MoG MADE): the first feature's conditional has no
        # input, so zero biases would leave its k components identical, i.e. one Gaussian, for ever
        net = MaskedMLP(d, 2 if k == 1 else 3 * k, hidden_units, dtype, activation=activation, zero_last=k == 1,
                        input_order=input_order, output_bias="zeros" if k == 1 else "normal")
        if k > 1:  # the MAF code draws log-precisions ~ N(0, 1): log sigma = -log(precision) / 2 ~ N(0, 1/4)
            bias = net._kernels_and_biases()[-1][1]
            bias.assign(bias * tf.constant(np.tile([1.0] * (2 * k) + [0.5] * k, d), bias.dtype))
        layers = []
        if k == 1:
            layers = [MaskedAutoregressive(net, AffineBijectorFn(net), name="made_gaussian")]
        super().__init__(layers, (d,), dtype, name=name)
        self.net = net
        self.num_components = k
        # features in the order they are drawn: by increasing input degree (an array: not a tracked object)
        self._sampling_order = np.argsort(_input_degrees(d, input_order), kind="stable")

    @property
    def is_bijection(self) -> bool:
        return self.num_components == 1

    def _mixture(self, x, training=False):
        params = self.net(x, training=training)  # [batch, d, 3k]
        k = self.num_components
        logits, means, raw = params[..., :k], params[..., k:2 * k], params[..., 2 * k:]
        return tf.nn.log_softmax(logits, axis=-1), means, soft_clamp(raw, MOG_LOG_SCALE_BOUND)

    def log_prob(self, x, training: bool = False):
        if self.is_bijection:
            return super().log_prob(x, training=training)
        x = check_input(x, self.dtype)
        log_pi, mu, log_sigma = self._mixture(x, training)
        u = (x[..., None] - mu) * tf.exp(-log_sigma)
        log_normal = -0.5 * tf.square(u) - log_sigma - tf.constant(0.5 * math.log(2 * math.pi), self.dtype)
        return tf.reduce_sum(tf.reduce_logsumexp(log_pi + log_normal, axis=-1), axis=-1)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        if self.is_bijection:
            return super().sample(n, seed, temperature)
        n, d = int(n), self.event_size
        x = tf.zeros([n, d], self.dtype)
        for i in map(int, self._sampling_order):  # each feature depends on those drawn before it only: d sequential passes
            log_pi, mu, log_sigma = self._mixture(x)
            if seed is None:
                comp = tf.random.categorical(log_pi[:, i], 1, dtype=tf.int32)
                eps = tf.random.normal([n, 1], dtype=self.dtype)
            else:
                comp = tf.random.stateless_categorical(log_pi[:, i], 1, seed=[int(seed), 2 * i + 1], dtype=tf.int32)
                eps = tf.random.stateless_normal([n, 1], seed=[int(seed), 2 * i + 2], dtype=self.dtype)
            m = tf.gather(mu[:, i], comp, batch_dims=1)
            s = tf.exp(tf.gather(log_sigma[:, i], comp, batch_dims=1))
            value = m + s * eps * tf.cast(temperature, self.dtype)
            x = x + value * tf.one_hot(i, d, dtype=self.dtype)[None, :]
        return x

    def sample_and_log_prob(self, n: int, seed: int | None = None):
        if self.is_bijection:
            return super().sample_and_log_prob(n, seed)
        x = self.sample(n, seed)
        return x, self.log_prob(x)

    def _not_bijective(self, what):
        raise NotInvertibleError(
            f"MADE with num_components = {self.num_components} (mixture of Gaussians) is not a bijection, so it "
            f"has no {what}; use log_prob and sample (or num_components = 1 for the Gaussian MADE)"
        )

    def inverse(self, x, training: bool = False):
        return super().inverse(x, training) if self.is_bijection else self._not_bijective("inverse (data -> noise)")

    def forward(self, z):
        return super().forward(z) if self.is_bijection else self._not_bijective("forward (noise -> data)")

    def inverse_trajectory(self, x, training: bool = False):
        if self.is_bijection:
            return super().inverse_trajectory(x, training)
        return self._not_bijective("per-layer trajectory")

    def forward_trajectory(self, z):
        return super().forward_trajectory(z) if self.is_bijection else self._not_bijective("per-layer trajectory")


class MADEBaseFlow(Flow):
    """A flow whose base density is a MADE MoG instead of the standard normal: the MAF paper's "MAF MoG".

    Papamakarios et al. 2017 (arXiv:1705.07057, sec. 3.4 and Table 1): "MAF MoG (5)" is 5 MAF layers on a MADE MoG
    with 10 components per conditional, trained jointly.  With ``z`` and ``log|det dz/dx|`` from the layers (data
    -> noise, as in :class:`~flows.base.Flow`):

        log p(x) = log p_MADE-MoG(z) + log|det dz/dx|;

    sampling draws ``z`` from the MADE MoG (``d`` sequential passes, :meth:`MADE.sample`) and pushes it through the
    layers' ``forward``.  ``inverse``, ``forward`` and the trajectories are those of the layers (the bijection
    between data and base space); ``base_log_prob`` and ``sample_base`` are the MADE MoG's.

    Arguments:
        layers: the flow's layers, data to noise.
        base: a :class:`MADE` with ``num_components >= 2`` on the flow's event shape.
        event_shape, dtype, name: as :class:`~flows.base.Flow`.
    """

    def __init__(self, layers, base: MADE, event_shape, dtype="float32", name=None):
        super().__init__(layers, event_shape, dtype, name=name)
        if base.is_bijection or base.event_shape != self.event_shape or base.dtype != self.dtype:
            raise ValueError(f"the base of a MADEBaseFlow must be a MADE MoG on {list(self.event_shape)} in "
                             f"{self.dtype.name}; got {base.num_components} component(s) on "
                             f"{list(base.event_shape)} in {base.dtype.name}")
        self.base = base

    @property
    def num_components(self) -> int:
        return self.base.num_components

    def base_log_prob(self, z, training: bool = False):
        """log p(z) under the MADE MoG (nats)."""
        return self.base.log_prob(z, training=training)

    def log_prob(self, x, training: bool = False):
        z, ldj = self.inverse(x, training=training)
        return self.base_log_prob(z, training=training) + ldj

    def sample_base(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """``n`` draws of the MADE MoG; ``temperature`` scales each component's standard deviation."""
        return self.base.sample(n, seed, temperature)


@register(
    "made",
    {"num_components": 1, "hidden_units": [64, 64], "activation": Option("relu", choices=tuple(sorted(ACTIVATIONS)), doc="hidden activation")},
    paper="Germain, Gregor, Murray, Larochelle 2015, MADE: Masked Autoencoder for Distribution Estimation, "
          "https://arxiv.org/abs/1502.03509",
)
def build_made(event_shape, dtype, *, num_components, hidden_units, activation) -> Flow:
    """MADE density (Germain et al. 2015): Gaussian (``num_components = 1``) or mixture-of-Gaussian conditionals.

    See :class:`MADE`.  With more than one component it samples but has no inverse or trajectories.

    Example::

        >>> flow = flows.build_flow("made", [2], num_components=10)   # the "MADE MoG" row
        >>> flow.log_prob(flow.sample(3, seed=0)).shape
        TensorShape([3])
    """
    if len(event_shape) != 1:
        raise ValueError(f"made: event shape {list(event_shape)} must be [d] (a vector)")
    d = int(event_shape[0])
    if d < 2:
        raise ValueError(f"made: event size d = {d} must be at least 2 for an autoregressive network")
    k = check_positive_int(num_components, "num_components", "made")
    units = check_hidden_units(hidden_units, "made")
    return MADE(d, k, units, activation, dtype)
