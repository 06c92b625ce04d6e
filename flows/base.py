"""Core abstractions: a flow layer (a bijection with its log-determinant) and a Flow (a trainable density).

Conventions (the same as TensorFlow Probability's bijectors):

* ``forward``  maps noise ``z`` to data ``x`` (the sampling direction);
* ``inverse``  maps data ``x`` to noise ``z`` (the density direction).

Both return ``(output, log_det)`` where ``log_det`` has shape ``[batch]`` and is
``log|det d output / d input|`` of that direction.  A flow's density is

    log p(x) = log N(z; 0, I) + sum_k log|det dz_k / dz_{k-1}|,   z_0 = x,

evaluated in nats.  Layers whose noise -> data map has no algebraic form (planar and radial flows
used for density estimation) set ``can_sample = False`` and raise :class:`NotInvertibleError`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

__all__ = ["NotInvertibleError", "FlowLayer", "Flow", "as_dtype", "check_input"]


class NotInvertibleError(NotImplementedError):
    """Raised when sampling (noise -> data) is asked of a layer that has no algebraic inverse."""


def as_dtype(dtype) -> tf.DType:
    """Accept 'float32', 'float64', numpy or tf dtypes; refuse anything else."""
    try:
        dt = tf.as_dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"dtype {dtype!r} is not a dtype; accepted: float32, float64") from exc
    if dt not in (tf.float32, tf.float64):
        raise ValueError(f"dtype {dt.name!r} is not supported; accepted: float32, float64")
    return dt


def check_input(x, dtype: tf.DType, name: str = "x", event_shape=None) -> tf.Tensor:
    """Convert ``x`` to a tensor of ``dtype`` without ever silently changing a floating precision.

    Python scalars and lists are converted; a float tensor or array of another precision is an error,
    so a float64 batch is never quietly truncated to float32 (or the reverse).  With ``event_shape`` the
    (static) shape must be ``[batch, *event_shape]``: anything else is a ``ValueError`` naming both shapes.
    NaN and Inf values are not checked: they give a non-finite log-density in their rows only.
    """
    src = getattr(x, "dtype", None)
    if src is not None:
        src = tf.as_dtype(src)
        if src.is_floating and src != dtype:
            raise TypeError(
                f"{name} has dtype {src.name} but the flow computes in {dtype.name}; "
                f"cast it explicitly (e.g. tf.cast({name}, tf.{dtype.name})) or build the flow with dtype='{src.name}'"
            )
    t = tf.convert_to_tensor(x, dtype=dtype)
    if event_shape is not None and not t.shape.is_compatible_with((None,) + tuple(event_shape)):
        want = ", ".join(["batch"] + [str(int(d)) for d in event_shape])
        raise ValueError(f"{name} has shape {t.shape.as_list()}, but the flow takes a batch of events: [{want}]")
    return t


class FlowLayer(tf.Module):
    """One invertible step of a flow.  Subclasses implement ``inverse`` and, if they can, ``forward``."""

    #: whether ``forward`` (noise -> data) is available in closed form
    can_sample: bool = True

    def inverse(self, x, training: bool = False):
        """Data -> noise.  Returns ``(z, log|det dz/dx|)`` with the log-det of shape ``[batch]``.

        ``training`` matters only to layers with statistics (batch norm): when False they must use their
        running or initialised statistics, never the batch at hand.
        """
        raise NotImplementedError

    def forward(self, z):
        """Noise -> data.  Returns ``(x, log|det dx/dz|)``."""
        raise NotInvertibleError(
            f"{type(self).__name__} has no algebraic inverse (noise -> data), so it cannot sample; "
            "it gives exact log-densities only"
        )

    def initialize(self, x):
        """Data-dependent initialisation (ActNorm).  Default: none.  Returns the layer's output for ``x``."""
        return self.inverse(x, training=False)[0]


class Flow(tf.Module):
    """A trainable density: a standard normal base pushed through a list of :class:`FlowLayer`.

    ``layers`` are ordered from data to noise: ``log_prob`` applies ``layers[0].inverse`` first and
    ``sample`` applies them in reverse order with ``forward``.
    """

    def __init__(self, layers: Sequence[FlowLayer], event_shape, dtype="float32", name: str | None = None):
        super().__init__(name=name)
        self.layers = list(layers)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.dtype = as_dtype(dtype)
        self.event_size = int(np.prod(self.event_shape))
        self._event_axes = list(range(-len(self.event_shape), 0))

    # ------------------------------------------------------------------ properties
    @property
    def can_sample(self) -> bool:
        return all(layer.can_sample for layer in self.layers)

    # ------------------------------------------------------------------ density
    def base_log_prob(self, z):
        """log N(z; 0, I) summed over the event dimensions (nats)."""
        const = tf.constant(-0.5 * self.event_size * math.log(2.0 * math.pi), self.dtype)
        return const - 0.5 * tf.reduce_sum(tf.square(z), axis=self._event_axes)

    def inverse(self, x, training: bool = False):
        """Data -> noise through every layer; returns ``(z, total log|det dz/dx|)``."""
        z = check_input(x, self.dtype, event_shape=self.event_shape)
        total = tf.zeros(tf.shape(z)[:1], self.dtype)
        for layer in self.layers:
            z, ldj = layer.inverse(z, training=training)
            total = total + ldj
        return z, total

    def log_prob(self, x, training: bool = False):
        """Log-density of ``x`` in nats, shape ``[batch]``.

        ``x`` must be ``[batch, *event_shape]`` in the flow's dtype (else a one-line ``ValueError`` /
        ``TypeError``); a row holding NaN or Inf gets a non-finite value (NaN or -inf), the other rows are
        unaffected.
        """
        z, ldj = self.inverse(x, training=training)
        return self.base_log_prob(z) + ldj

    def prob(self, x):
        return tf.exp(self.log_prob(x))

    # ------------------------------------------------------------------ sampling
    def _check_can_sample(self):
        if not self.can_sample:
            blocking = sorted({type(layer).__name__ for layer in self.layers if not layer.can_sample})
            raise NotInvertibleError(
                f"flow '{self.name}' cannot sample: {', '.join(blocking)} has no algebraic inverse "
                "(noise -> data); use it for log_prob only"
            )

    def forward(self, z):
        """Noise -> data through every layer; returns ``(x, total log|det dx/dz|)``."""
        self._check_can_sample()
        x = check_input(z, self.dtype, "z", self.event_shape)
        total = tf.zeros(tf.shape(x)[:1], self.dtype)
        for layer in reversed(self.layers):
            x, ldj = layer.forward(x)
            total = total + ldj
        return x, total

    def sample_base(self, n: int, seed: int | None = None, temperature: float = 1.0):
        shape = (int(n),) + self.event_shape
        if seed is None:
            z = tf.random.normal(shape, dtype=self.dtype)
        else:
            z = tf.random.stateless_normal(shape, seed=[int(seed), 0], dtype=self.dtype)
        return z * tf.cast(temperature, self.dtype)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """``n`` samples; ``temperature`` scales the base noise (1.0 = the model's own distribution)."""
        self._check_can_sample()
        return self.forward(self.sample_base(n, seed, temperature))[0]

    def sample_and_log_prob(self, n: int, seed: int | None = None):
        self._check_can_sample()
        z = self.sample_base(n, seed)
        x, ldj = self.forward(z)
        return x, self.base_log_prob(z) - ldj

    # ------------------------------------------------------------------ per-layer access
    def inverse_trajectory(self, x, training: bool = False):
        """[x, after layer 0, after layer 1, ..., z]: a batch pushed from data to noise, layer by layer."""
        out = [check_input(x, self.dtype, event_shape=self.event_shape)]
        for layer in self.layers:
            out.append(layer.inverse(out[-1], training=training)[0])
        return out

    def forward_trajectory(self, z):
        """[z, ..., x]: base samples pushed from noise to data, layer by layer (for the animation)."""
        self._check_can_sample()
        out = [check_input(z, self.dtype, "z", self.event_shape)]
        for layer in reversed(self.layers):
            out.append(layer.forward(out[-1])[0])
        return out

    # ------------------------------------------------------------------ initialisation
    def initialize(self, x):
        """Create variables and run data-dependent initialisation (ActNorm) on a batch of data.

        Call once before training; it is harmless for flows without data-dependent layers.
        """
        z = check_input(x, self.dtype, event_shape=self.event_shape)
        for layer in self.layers:
            z = layer.initialize(z)
        return self
