"""The four unnormalised 2-D energy functions of Rezende & Mohamed (2015), Figure 3, and reverse-KL fitting."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .base import as_dtype
from .planar import PlanarLayer
from .radial import RadialLayer

__all__ = ["ENERGIES", "energy", "u1", "u2", "u3", "u4", "VariationalFlow", "fit_reverse_kl"]

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


class VariationalFlow(tf.Module):
    """A planar or radial flow in the noise -> data direction, for fitting ``q(x)`` to an unnormalised target.

    Paper: "Variational Inference with Normalizing Flows", D. J. Rezende and S. Mohamed, 2015,
    arXiv:1505.05770 (section 6.1, Figure 3).  Here the maps run the way the paper uses them::

        x = f_K o ... o f_1(z),   z ~ N(0, I)
        log q(x) = log N(z; 0, I) - sum_k log|det df_k / dz_{k-1}|

    so sampling and its log-density are exact, while the density of an arbitrary ``x`` is not available.

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
        super().__init__(name=name or f"variational_{flow_name}")
        if flow_name not in _LAYERS:
            raise ValueError(f"flow_name {flow_name!r} is not supported; accepted: {', '.join(sorted(_LAYERS))}")
        if int(num_layers) < 1:
            raise ValueError(f"num_layers = {num_layers} must be a positive integer")
        self.flow_name = flow_name
        self.dim = int(dim)
        self.dtype = as_dtype(dtype)
        self.layers = [_LAYERS[flow_name](self.dim, self.dtype, init_scale, name=f"{flow_name}_{k}")
                       for k in range(int(num_layers))]

    def sample_and_log_prob(self, n: int, seed: int | None = None):
        """``n`` samples ``x`` of ``q`` and their exact ``log q(x)`` in nats."""
        shape = (int(n), self.dim)
        if seed is None:
            z = tf.random.normal(shape, dtype=self.dtype)
        else:
            z = tf.random.stateless_normal(shape, seed=[int(seed), 0], dtype=self.dtype)
        log_q = tf.constant(-0.5 * self.dim * math.log(2.0 * math.pi), self.dtype) - 0.5 * tf.reduce_sum(
            tf.square(z), axis=-1
        )
        for layer in self.layers:
            z, log_det = layer.apply(z)
            log_q = log_q - log_det
        return z, log_q

    def sample(self, n: int, seed: int | None = None):
        return self.sample_and_log_prob(n, seed)[0]


def fit_reverse_kl(energy_name: str = "u1", flow_name: str = "planar", num_layers: int = 16, steps: int = 500,
                   batch_size: int = 256, learning_rate: float = 1e-2, anneal_steps: int = 0, seed: int = 0,
                   dtype="float32", log_every: int = 0):
    """Fit ``q`` to ``p(x) ∝ exp(-U(x))`` by minimising ``E_q[log q(x) + U(x)] = KL(q || p) - log Z``.

    ``anneal_steps > 0`` uses the paper's annealed objective ``E_q[log q(x) + beta_t U(x)]`` with
    ``beta_t = min(1, 0.01 + t / anneal_steps)``; the recorded loss is always the un-annealed one (nats).
    ``seed`` seeds TensorFlow's global generator (initial parameters and the Monte-Carlo batches).
    Returns ``(flow, losses)`` where ``losses[t]`` is the Monte-Carlo estimate of ``KL(q || p) - log Z``
    at step ``t`` on that step's batch.
    """
    U = energy(energy_name)
    tf.random.set_seed(seed)
    flow = VariationalFlow(flow_name, num_layers, dim=2, dtype=dtype)
    opt = _adam(learning_rate)
    variables = flow.trainable_variables

    @tf.function
    def step(t, beta):
        with tf.GradientTape() as tape:
            x, log_q = flow.sample_and_log_prob(batch_size, seed=None)
            u = U(x)
            loss = tf.reduce_mean(log_q + beta * u)
            plain = tf.reduce_mean(log_q + u)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return plain

    losses = []
    for t in range(int(steps)):
        beta = 1.0 if anneal_steps <= 0 else min(1.0, 0.01 + t / anneal_steps)
        losses.append(float(step(tf.constant(t), tf.constant(beta, flow.dtype))))
        if log_every and t % log_every == 0:
            print(f"step {t}: KL(q||p) - log Z = {losses[-1]:.4f} nats")
    return flow, np.asarray(losses)


def _adam(learning_rate: float):
    import tf_keras as keras

    return keras.optimizers.Adam(learning_rate)
