"""Shared building blocks: permutations, MAF-style batch norm, an MLP and an adapter for TFP bijectors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras as keras

from .base import FlowLayer, as_dtype

tfb = tfp.bijectors

__all__ = ["Permutation", "Reverse", "BatchNorm", "BijectorLayer", "mlp", "soft_clamp", "check_hidden_units",
           "alternating_mask", "check_positive_int"]


def soft_clamp(x, bound: float):
    """Smoothly bound ``x`` to (-bound, bound): ``bound * tanh(x / bound)`` (identity near 0)."""
    bound = tf.constant(bound, x.dtype)
    return bound * tf.tanh(x / bound)


def check_hidden_units(hidden_units, where: str) -> list[int]:
    """Validate a list of positive layer widths; the error names ``where`` and the bad value."""
    units = list(hidden_units)
    if not units or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
        raise ValueError(f"{where}: hidden_units = {hidden_units!r} must be a non-empty list of positive integers")
    return units


def mlp(input_size: int, output_size: int, hidden_units: Sequence[int], dtype, activation: str = "relu",
        zero_last: bool = True, name: str | None = None) -> keras.Sequential:
    """A fully connected network ``input_size -> hidden_units... -> output_size`` built in ``dtype``.

    With ``zero_last`` the output layer starts at zero, so a coupling layer starts as the identity.

    Mixed precision: when Keras' global policy is ``mixed_float16`` (or ``mixed_bfloat16``) and ``dtype`` is
    float32, the hidden layers compute in half precision with float32 variables, and the output layer computes
    in float32, so everything downstream (scales, spline parameters, log-determinants) stays float32.
    """
    dtype = as_dtype(dtype)
    policy = keras.mixed_precision.global_policy()
    hidden_dtype = policy if dtype == tf.float32 and policy.name.startswith("mixed_") else dtype.name
    net = keras.Sequential(name=name)
    net.add(keras.Input(shape=(int(input_size),), dtype=dtype.name))
    for units in hidden_units:
        net.add(keras.layers.Dense(int(units), activation=activation, dtype=hidden_dtype))
    init = "zeros" if zero_last else "glorot_uniform"
    net.add(keras.layers.Dense(int(output_size), kernel_initializer=init, bias_initializer="zeros",
                               dtype=dtype.name))
    return net


class Permutation(FlowLayer):
    """A fixed permutation of the last axis (log-det 0), from an explicit ``order`` or a random ``seed``.

    Arguments:
        event_size: number of features ``d``.
        order: a permutation of ``range(d)``; ``inverse`` returns ``x[..., order]``.
        seed: if ``order`` is None, a random permutation drawn with ``numpy.random.default_rng(seed)``.
        dtype: the flow's dtype (for the zero log-det).
    """

    def __init__(self, event_size: int, order=None, seed: int | None = 0, dtype="float32", name=None):
        super().__init__(name=name)
        d = int(event_size)
        if order is None:
            order = np.random.default_rng(seed).permutation(d)
        order = np.asarray(order, dtype=np.int64)
        if sorted(order.tolist()) != list(range(d)):
            raise ValueError(f"order {order.tolist()} is not a permutation of range({d})")
        self.dtype = as_dtype(dtype)
        self.order = tf.constant(order, tf.int32)
        self.inverse_order = tf.constant(np.argsort(order), tf.int32)

    def _zero(self, x):
        return tf.zeros(tf.shape(x)[:1], self.dtype)

    def inverse(self, x, training: bool = False):
        return tf.gather(x, self.order, axis=-1), self._zero(x)

    def forward(self, z):
        return tf.gather(z, self.inverse_order, axis=-1), self._zero(z)


class Reverse(Permutation):
    """Reverse the order of the features (MAF's choice between autoregressive layers); log-det 0."""

    def __init__(self, event_size: int, dtype="float32", name=None):
        super().__init__(event_size, order=np.arange(int(event_size))[::-1], dtype=dtype, name=name)


class BatchNorm(FlowLayer):
    """Batch normalisation as a bijection, for density estimation (MAF, Papamakarios et al. 2017).

    "Masked Autoregressive Flow for Density Estimation", G. Papamakarios, T. Pavlakou, I. Murray, 2017,
    https://arxiv.org/abs/1705.07057 (appendix B); after Real NVP (Dinh et al. 2016, arXiv:1605.08803).

    Data -> noise, per feature (last axis):

        z = exp(log_gamma) * (x - m) / sqrt(v + eps) + beta,
        log|det dz/dx| = n_pos * sum(log_gamma - 0.5 log(v + eps)),

    where ``n_pos`` is the number of positions per example (1 for vectors, h*w for images).
    With ``training=True`` (m, v) are the batch moments, and the running moments are updated:
    ``running = momentum * running + (1 - momentum) * batch``.  With ``training=False`` (evaluation)
    (m, v) are the running moments and nothing is updated, so the density of a point never depends on
    the rest of the batch.  ``forward`` (sampling) always uses the running moments.
    ``initialize(x)`` sets the running moments to those of ``x``.

    Arguments:
        num_features: size of the last axis.
        momentum: decay of the running moments.
        eps: added to the variance.
        dtype: the flow's dtype.
    """

    def __init__(self, num_features: int, momentum: float = 0.9, eps: float = 1e-5, dtype="float32", name=None):
        super().__init__(name=name)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNorm momentum = {momentum!r} must be in [0, 1)")
        self.dtype = as_dtype(dtype)
        c = int(num_features)
        self.momentum = tf.constant(momentum, self.dtype)
        self.eps = tf.constant(eps, self.dtype)
        self.log_gamma = tf.Variable(tf.zeros([c], self.dtype), name="log_gamma")
        self.beta = tf.Variable(tf.zeros([c], self.dtype), name="beta")
        self.running_mean = tf.Variable(tf.zeros([c], self.dtype), trainable=False, name="running_mean")
        self.running_var = tf.Variable(tf.ones([c], self.dtype), trainable=False, name="running_var")

    def _positions(self, x):
        shape = tf.shape(x)
        return tf.cast(tf.reduce_prod(shape[1:-1]), self.dtype)

    def _moments(self, x):
        axes = list(range(len(x.shape) - 1))
        return tf.nn.moments(x, axes=axes)

    def inverse(self, x, training: bool = False):
        if training:
            mean, var = self._moments(x)
            self.running_mean.assign(self.momentum * self.running_mean + (1 - self.momentum) * tf.stop_gradient(mean))
            self.running_var.assign(self.momentum * self.running_var + (1 - self.momentum) * tf.stop_gradient(var))
        else:
            mean, var = tf.identity(self.running_mean), tf.identity(self.running_var)
        inv_std = tf.math.rsqrt(var + self.eps)
        z = tf.exp(self.log_gamma) * (x - mean) * inv_std + self.beta
        ldj = self._positions(x) * tf.reduce_sum(self.log_gamma + tf.math.log(inv_std))
        return z, tf.fill(tf.shape(x)[:1], ldj)

    def forward(self, z):
        std = tf.sqrt(self.running_var + self.eps)
        x = (z - self.beta) * tf.exp(-self.log_gamma) * std + self.running_mean
        ldj = self._positions(z) * tf.reduce_sum(-self.log_gamma + tf.math.log(std))
        return x, tf.fill(tf.shape(z)[:1], ldj)

    def initialize(self, x):
        mean, var = self._moments(x)
        self.running_mean.assign(mean)
        self.running_var.assign(var)
        return self.inverse(x, training=False)[0]


class BijectorLayer(FlowLayer):
    """Adapter: a ``tfp.bijectors.Bijector`` (forward = noise -> data) used as a :class:`FlowLayer`.

    Arguments:
        bijector: the bijector; its ``inverse`` is the layer's data -> noise map.
        event_ndims: number of event dimensions (1 for vectors, 3 for images).
        modules: networks whose variables the bijector uses (kept here so ``trainable_variables`` and
            checkpoints see them even when the bijector holds them only inside a closure).
        can_sample: False if the bijector's forward should not be used.
    """

    def __init__(self, bijector: tfb.Bijector, event_ndims: int = 1, modules=(), can_sample: bool = True,
                 name=None):
        super().__init__(name=name)
        self.bijector = bijector
        self.event_ndims = int(event_ndims)
        self.modules = list(modules)
        self.can_sample = bool(can_sample)

    # TFP bijectors cache (input -> output) by tensor identity.  A cached answer computed outside a
    # GradientTape has no gradient path (autodiff Jacobians came back empty), so every call gets a fresh
    # tensor (tf.identity) and the cache can never answer.
    def inverse(self, x, training: bool = False):
        x = tf.identity(x)
        z = self.bijector.inverse(x)
        return z, self.bijector.inverse_log_det_jacobian(x, event_ndims=self.event_ndims)

    def forward(self, z):
        if not self.can_sample:
            return super().forward(z)
        z = tf.identity(z)
        x = self.bijector.forward(z)
        return x, self.bijector.forward_log_det_jacobian(z, event_ndims=self.event_ndims)


def alternating_mask(event_size: int, parity: int) -> np.ndarray:
    """Boolean mask over ``d`` features, True (kept, conditioning) where ``i % 2 == parity``."""
    return (np.arange(int(event_size)) % 2) == (int(parity) % 2)


def check_positive_int(value, key: str, where: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming the flow, the key and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key} = {value!r} must be a positive integer")
    return int(value)
