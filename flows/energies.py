"""The four unnormalised 2-D energy functions of Rezende & Mohamed (2015), Figure 3, and reverse-KL fitting
(the one loop, :func:`reverse_kl`, that :func:`fit_reverse_kl` and :func:`flows.viz.fit_energy` run)."""

from __future__ import annotations

import math

from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from .base import Flow, as_dtype
from .nn import Invert
from .planar import PlanarLayer
from .radial import RadialLayer

__all__ = ["ENERGIES", "energy", "u1", "u2", "u3", "u4", "VariationalFlow", "reverse_kl", "fit_reverse_kl"]

PAPER = (
    "Variational Inference with Normalizing Flows, D. J. Rezende and S. Mohamed, 2015, "
    "https://arxiv.org/abs/1505.05770"
)


# Table 1 of the paper: p(z) ∝ exp(-U(z)), z = (z1, z2).  U1 is normalisable (log Z ~ 1.8775 nats, by a grid
# on [-6, 6]^2); U2, U3 and U4 do not grow along z1, so exp(-U) has infinite mass on R^2: the paper fits and
# plots them on [-4, 4]^2, and reverse KL on them rewards spreading q along z1 for as long as one trains.
def _w1(z1):
    return tf.sin(2.0 * math.pi * z1 / 4.0)


def _w2(z1):
    return 3.0 * tf.exp(-0.5 * tf.square((z1 - 1.0) / 0.6))


def _w3(z1):
    return 3.0 * tf.sigmoid((z1 - 1.0) / 0.3)


def _neg_logsumexp2(a, b):
    """-log(exp(a) + exp(b)), stable."""
    return -tf.reduce_logsumexp(tf.stack([a, b], axis=-1), axis=-1)


def u1(z):
    """U1(z) = 1/2 ((|z| - 2) / 0.4)^2 - log(exp(-1/2 ((z1 - 2)/0.6)^2) + exp(-1/2 ((z1 + 2)/0.6)^2)): a ring cut in two."""
    z1 = z[..., 0]
    norm = tf.norm(z, axis=-1)
    return 0.5 * tf.square((norm - 2.0) / 0.4) + _neg_logsumexp2(
        -0.5 * tf.square((z1 - 2.0) / 0.6), -0.5 * tf.square((z1 + 2.0) / 0.6)
    )


def u2(z):
    """U2(z) = 1/2 ((z2 - w1(z)) / 0.4)^2, w1(z) = sin(2 pi z1 / 4): a sine wave."""
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * tf.square((z2 - _w1(z1)) / 0.4)


def u3(z):
    """U3(z) = -log(exp(-1/2 ((z2 - w1)/0.35)^2) + exp(-1/2 ((z2 - w1 + w2)/0.35)^2)), w2 = 3 exp(-1/2 ((z1 - 1)/0.6)^2)."""
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_logsumexp2(-0.5 * tf.square((z2 - w1) / 0.35), -0.5 * tf.square((z2 - w1 + _w2(z1)) / 0.35))


def u4(z):
    """U4(z) = -log(exp(-1/2 ((z2 - w1)/0.4)^2) + exp(-1/2 ((z2 - w1 + w3)/0.35)^2)), w3 = 3 sigmoid((z1 - 1)/0.3)."""
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    return _neg_logsumexp2(-0.5 * tf.square((z2 - w1) / 0.4), -0.5 * tf.square((z2 - w1 + _w3(z1)) / 0.35))


#: name -> U(z) with z of shape [..., 2]; the target density is exp(-U(z)) / Z.
ENERGIES = {"u1": u1, "u2": u2, "u3": u3, "u4": u4}
_LAYERS = {"planar": PlanarLayer, "radial": RadialLayer}


def energy(name: str):
    """The energy function ``U`` called ``name`` (``u1`` ... ``u4``, case-insensitive)."""
    key = str(name).lower()
    if key not in ENERGIES:
        raise ValueError(f"unknown energy {name!r}; accepted: {', '.join(sorted(ENERGIES))}")
    return ENERGIES[key]


class VariationalFlow(Flow):
    """A planar or radial flow in the noise -> data direction, for fitting ``q(x)`` to an unnormalised target.

    Paper: "Variational Inference with Normalizing Flows", D. J. Rezende and S. Mohamed, 2015,
    arXiv:1505.05770 (section 6.1, Figure 3).  Here the maps run the way the paper uses them::

        x = f_K o ... o f_1(z),   z ~ N(0, I)
        log q(x) = log N(z; 0, I) - sum_k log|det df_k / dz_{k-1}|

    so sampling and its log-density are exact, while the density of an arbitrary ``x`` is not available.
    It is a :class:`~flows.base.Flow` whose layers are the maps inverted (:class:`flows.nn.Invert`), listed data
    -> noise as every flow's: ``layers[-1]`` is ``Invert(f_1)``, and ``log_prob`` raises
    :class:`~flows.base.NotInvertibleError`.

    Args:
        flow_name: ``"planar"`` or ``"radial"``.
        num_layers: ``K``, the number of maps.
        dim: the event size (2 for the energies of Figure 3).
        dtype: float32 or float64.
        init_scale: standard deviation of the initial parameters.

    Example::

        >>> q = VariationalFlow("planar", num_layers=4)
        >>> x, log_q = q.sample_and_log_prob(8)
        >>> x.shape, log_q.shape
        (TensorShape([8, 2]), TensorShape([8]))
    """

    def __init__(self, flow_name: str = "planar", num_layers: int = 16, dim: int = 2, dtype="float32",
                 init_scale: float = 0.1, name: str | None = None):
        if flow_name not in _LAYERS:
            raise ValueError(f"flow_name {flow_name!r} is not supported; accepted: {', '.join(sorted(_LAYERS))}")
        if int(num_layers) < 1:
            raise ValueError(f"num_layers = {num_layers} must be a positive integer")
        dtype = as_dtype(dtype)
        maps = [_LAYERS[flow_name](int(dim), dtype, init_scale, name=f"{flow_name}_{k}")
                for k in range(int(num_layers))]
        super().__init__([Invert(m) for m in reversed(maps)], (int(dim),), dtype,
                         name=name or f"variational_{flow_name}")
        self.flow_name = flow_name
        self.dim = int(dim)

    def sample_and_log_prob(self, n: int, seed: int | None = None):
        """``n`` samples ``x`` of ``q`` and their exact ``log q(x)`` in nats.

        ``log q`` is accumulated map by map, ``log N(z) - ldj_1 - ldj_2 - ...``, the order in which the committed
        energy fits were computed (``Flow.sample_and_log_prob`` subtracts the summed log-determinant once).
        """
        z = self.sample_base(n, seed)
        log_q = self.base_log_prob(z)
        for layer in reversed(self.layers):
            z, log_det = layer.forward(z)
            log_q = log_q - log_det
        return z, log_q


def reverse_kl(flow, target: Callable, steps: int = 500, batch_size: int = 256, learning_rate: float = 1e-2,
               anneal_steps: int = 0, log_every: int = 0) -> np.ndarray:
    """Fit ``flow`` (any flow that samples) to ``p(x) ∝ exp(-U(x))``, ``U = target``, by minimising with Adam

        E_q[log q(x) + beta_t U(x)],   beta_t = min(1, 0.01 + t / anneal_steps) if anneal_steps > 0 else 1,

    the paper's annealed reverse KL (``KL(q || p) - log Z`` at ``beta = 1``), on ``batch_size`` fresh samples a
    step.  Returns ``losses``: ``losses[t]`` is the un-annealed Monte-Carlo estimate of ``KL(q || p) - log Z``
    (nats) on step ``t``'s batch.  Samples come from TensorFlow's global generator (seed it first).
    """
    opt = keras.optimizers.Adam(learning_rate)
    variables = flow.trainable_variables

    @tf.function
    def step(beta):
        with tf.GradientTape() as tape:
            x, log_q = flow.sample_and_log_prob(batch_size)
            u = target(x)
            loss = tf.reduce_mean(log_q + beta * u)
            plain = tf.reduce_mean(log_q + u)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return plain

    losses = []
    for t in range(int(steps)):
        beta = 1.0 if anneal_steps <= 0 else min(1.0, 0.01 + t / anneal_steps)
        losses.append(float(step(tf.constant(beta, flow.dtype))))
        if log_every and t % log_every == 0:
            print(f"step {t}: KL(q||p) - log Z = {losses[-1]:.4f} nats")
    return np.asarray(losses)


def fit_reverse_kl(target="u1", flow_name: str = "planar", num_layers: int = 16, steps: int = 500,
                   batch_size: int = 256, learning_rate: float = 1e-2, anneal_steps: int = 0, seed: int = 0,
                   dtype="float32", log_every: int = 0):
    """Fit a :class:`VariationalFlow` ``q`` to ``p(x) ∝ exp(-U(x))`` by :func:`reverse_kl`; returns ``(q, losses)``.

    ``target``: the name of an energy (:data:`ENERGIES`) or a function ``U`` of ``x [..., 2]``.  ``seed``
    seeds TensorFlow's global generator (initial parameters and the Monte-Carlo batches).
    """
    U = energy(target) if isinstance(target, str) else target
    tf.random.set_seed(seed)
    flow = VariationalFlow(flow_name, num_layers, dim=2, dtype=dtype)
    return flow, reverse_kl(flow, U, steps, batch_size, learning_rate, anneal_steps, log_every)
