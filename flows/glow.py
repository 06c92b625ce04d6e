"""Glow: ActNorm, invertible 1x1 convolution (LU), affine coupling, multi-scale; also its tabular form.

Glow: Generative Flow with Invertible 1x1 Convolutions, D. P. Kingma and P. Dhariwal, 2018,
https://arxiv.org/abs/1807.03039.  One step of flow is ActNorm -> invertible 1x1 convolution -> affine
coupling; images go through ``num_scales`` scales of (squeeze, ``num_layers`` steps, factor out half).
For vectors (event shape ``[d]``) a step is ActNorm -> :class:`LULinear` -> affine coupling, the
tabular Glow that Durkan et al. (Neural Spline Flows, 2019, https://arxiv.org/abs/1906.04032) re-ran.

    >>> import flows, tensorflow as tf
    >>> flow = flows.build_flow("glow", [2], dtype="float64")
    >>> flow.initialize(tf.random.normal([64, 2], dtype=tf.float64)).log_prob(tf.zeros([3, 2], tf.float64)).shape
    TensorShape([3])
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import tensorflow as tf

from .base import Flow, FlowLayer, as_dtype
from .image import Active, Reshape, Squeeze, check_image, conv_conditioner
from .nn import MLP, AffineCoupling
from .options import Option
from .registry import register

__all__ = ["ActNorm", "LULinear", "Invertible1x1Conv", "build_glow", "build_glow_image"]


class ActNorm(FlowLayer):
    """Activation normalisation: a per-channel affine map whose initial values whiten the first batch (Glow, sec. 3.1).

    Data -> noise: ``z = (x - loc) * exp(-log_scale)`` per feature (vectors ``[b, d]``) or per channel
    (images ``[b, h, w, c]``); ``log|det dz/dx| = -h * w * sum(log_scale)`` (h = w = 1 for vectors).
    ``initialize(x)`` sets ``loc = mean(x)``, ``log_scale = log(std(x) + eps)`` so that the output of that
    batch has zero mean and unit variance per channel, then flips the ``initialized`` variable; the
    variable is saved with checkpoints, so a restored model never re-initialises.  ``inverse`` always
    uses the variables, never the statistics of the batch at hand.

    Args:
        num_features: number of features (vectors) or channels (images).
        dtype: float32 or float64.
        eps: added to the standard deviation at initialisation.
    """

    def __init__(self, num_features: int, dtype=tf.float32, eps: float = 1e-6, name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.loc = tf.Variable(tf.zeros([self.num_features], self.dtype), name="loc")
        self.log_scale = tf.Variable(tf.zeros([self.num_features], self.dtype), name="log_scale")
        self.initialized = tf.Variable(False, trainable=False, name="initialized")

    def _check(self, x):
        if x.shape.rank not in (2, 4) or x.shape[-1] != self.num_features:
            raise ValueError(
                f"ActNorm({self.num_features}) takes [batch, {self.num_features}] or [batch, h, w, "
                f"{self.num_features}]; got shape {x.shape}"
            )

    def _pixels(self, x):
        if x.shape.rank == 4:
            return tf.cast(tf.shape(x)[1] * tf.shape(x)[2], self.dtype)
        return tf.constant(1.0, self.dtype)

    def inverse(self, x, training: bool = False):
        self._check(x)
        z = (x - self.loc) * tf.exp(-self.log_scale)
        ldj = -self._pixels(x) * tf.reduce_sum(self.log_scale)
        return z, tf.fill(tf.shape(x)[:1], ldj)

    def forward(self, z):
        self._check(z)
        x = z * tf.exp(self.log_scale) + self.loc
        ldj = self._pixels(z) * tf.reduce_sum(self.log_scale)
        return x, tf.fill(tf.shape(z)[:1], ldj)

    def initialize(self, x):
        """Whiten ``x`` per channel, once: a no-op when ``initialized`` is already True (e.g. after a restore)."""
        x = tf.convert_to_tensor(x, self.dtype)
        self._check(x)
        axes = list(range(x.shape.rank - 1))
        mean, var = tf.nn.moments(x, axes=axes)
        log_std = tf.math.log(tf.sqrt(var) + tf.constant(self.eps, self.dtype))
        done = self.initialized
        self.loc.assign(tf.where(done, self.loc, mean))
        self.log_scale.assign(tf.where(done, self.log_scale, log_std))
        self.initialized.assign(True)
        return self.inverse(x)[0]


class _LU(FlowLayer):
    """W = P L (U + diag(s)): P a fixed permutation, L unit lower-, U strictly upper-triangular, s = sign e^(log|s|)."""

    def __init__(self, n: int, dtype, seed: int = 0, init: str = "orthogonal", name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        self.n = n = int(n)
        rng = np.random.default_rng(seed)
        if init == "orthogonal":
            w0 = np.linalg.qr(rng.standard_normal((n, n)))[0]
            p, lower, upper = scipy.linalg.lu(w0)  # w0 = p @ lower @ upper
        elif init == "identity":
            p, lower, upper = np.eye(n)[rng.permutation(n)], np.eye(n), np.eye(n)
        else:
            raise ValueError(f"LU init {init!r} is not supported; accepted: identity, orthogonal")
        s = np.diag(upper).copy()
        self.perm = tf.constant(p, self.dtype)  # fixed, not trained
        self.sign_s = tf.constant(np.sign(s), self.dtype)
        self.lower = tf.Variable(np.tril(lower, -1), dtype=self.dtype, name="lower")
        self.upper = tf.Variable(np.triu(upper, 1), dtype=self.dtype, name="upper")
        self.log_abs_s = tf.Variable(np.log(np.abs(s)), dtype=self.dtype, name="log_abs_s")
        self._lmask = tf.constant(np.tril(np.ones((n, n)), -1), self.dtype)
        self._umask = tf.constant(np.triu(np.ones((n, n)), 1), self.dtype)
        self._eye = tf.constant(np.eye(n), self.dtype)

    def _factors(self):
        lower = self.lower * self._lmask + self._eye
        upper = self.upper * self._umask + tf.linalg.diag(self.sign_s * tf.exp(self.log_abs_s))
        return lower, upper

    def weight(self):
        """The matrix W = P L (U + diag(s))."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def _apply(self, x2d):  # rows: z = W x
        return tf.matmul(x2d, self.weight(), transpose_b=True)

    def _solve(self, z2d):  # rows: x = W^-1 z by two triangular solves
        lower, upper = self._factors()
        rhs = tf.matmul(self.perm, z2d, transpose_a=True, transpose_b=True)  # P^T z, [n, batch]
        y = tf.linalg.triangular_solve(lower, rhs, lower=True)
        x = tf.linalg.triangular_solve(upper, y, lower=False)
        return tf.transpose(x)


class LULinear(_LU):
    """Invertible linear layer on vectors, LU-parametrised: z = W x, W = P L (U + diag(s)) (Glow, sec. 3.2).

    ``log|det dz/dx| = sum(log|s|)``; the inverse uses two triangular solves.  P is a fixed permutation.

    Args:
        num_features: d.
        dtype: float32 or float64.
        seed: seed of the initial W (random orthogonal, or a random permutation with ``init="identity"``).
        init: ``"orthogonal"`` (Glow) or ``"identity"`` (permutation only, NSF's choice).
    """

    def inverse(self, x, training: bool = False):
        z = self._apply(x)
        return z, tf.fill(tf.shape(x)[:1], tf.reduce_sum(self.log_abs_s))

    def forward(self, z):
        return self._solve(z), tf.fill(tf.shape(z)[:1], -tf.reduce_sum(self.log_abs_s))


class Invertible1x1Conv(_LU):
    """Invertible 1x1 convolution on images [b, h, w, c], LU-parametrised (Glow, sec. 3.2).

    Each pixel's channel vector is mapped by the same W: ``log|det| = h * w * sum(log|s|)``.

    Args:
        num_channels: c.
        dtype: float32 or float64.
        seed: seed of the initial random rotation.
    """

    def _ldj(self, x, sign):
        hw = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], self.dtype)
        return tf.fill(tf.shape(x)[:1], sign * hw * tf.reduce_sum(self.log_abs_s))

    def inverse(self, x, training: bool = False):
        shape = tf.shape(x)
        z = tf.reshape(self._apply(tf.reshape(x, [-1, self.n])), shape)
        return z, self._ldj(x, 1.0)

    def forward(self, z):
        shape = tf.shape(z)
        x = tf.reshape(self._solve(tf.reshape(z, [-1, self.n])), shape)
        return x, self._ldj(z, -1.0)


def _mlp_conditioner(hidden_units, dtype, seed):
    """``(n_in, n_out) -> MLP``: Glow's vector coupling network (numpy-seeded, relu, zero last layer)."""
    return lambda n_in, n_out: MLP(n_in, n_out, hidden_units, dtype, backend="numpy", seed=seed)


GLOW_PAPER = "Kingma & Dhariwal 2018, Glow: Generative Flow with Invertible 1x1 Convolutions, arXiv:1807.03039"


@register("glow", {"num_layers": 4, "hidden_units": [64, 64]}, kind="vector", paper=GLOW_PAPER)
def build_glow(event_shape, dtype, *, num_layers, hidden_units) -> Flow:
    """Glow, vector form: ``num_layers`` steps of ActNorm -> LULinear -> affine coupling (MLP ``hidden_units``).

    The coupling (:class:`flows.nn.AffineCoupling`, Glow's scale ``sigmoid(raw + 2)``) splits at ``d // 2``,
    the halves swapping roles from step to step; its MLP (numpy-seeded, zero last layer) starts it at identity.
    """
    dtype = as_dtype(dtype)
    d = int(event_shape[0])
    layers = []
    for i in range(int(num_layers)):
        layers += [ActNorm(d, dtype), LULinear(d, dtype, seed=i),
                   AffineCoupling(d, i % 2, _mlp_conditioner(hidden_units, dtype, seed=i), dtype, scale="sigmoid")]
    return Flow(layers, tuple(event_shape), dtype, name="glow")


@register("glow", {"num_layers": 4, "num_scales": 2, "num_filters": 32, "num_res_blocks": Option(0, low=0)},
          kind="image", paper=GLOW_PAPER)
def build_glow_image(event_shape, dtype, *, num_layers, num_scales, num_filters, num_res_blocks) -> Flow:
    """Glow, image form: ``num_scales`` scales of squeeze -> ``num_layers`` steps of ActNorm -> invertible 1x1 conv ->
    channel affine coupling (CNN with ``num_filters``, ``num_res_blocks``) -> factor out half (not after the
    last scale); factored-out channels are scored by the standard normal (no learned prior; see
    :mod:`flows.image` for how they stay in the tensor).  Call ``flow.initialize(batch)`` before training
    (ActNorm's data-dependent initialisation).
    """
    dtype = as_dtype(dtype)
    event_shape = tuple(int(s) for s in event_shape)
    num_scales = int(num_scales)
    check_image(event_shape, num_scales, num_scales, "glow")
    h, w, c = event_shape
    active, layers, seed = c, [], 0
    for scale in range(num_scales):
        layers.append(Squeeze(active, dtype))
        h, w, c, active = h // 2, w // 2, 4 * c, 4 * active
        for i in range(int(num_layers)):
            seed += 1
            net = conv_conditioner(num_filters, num_res_blocks, dtype, seed)
            layers += [Active(ActNorm(active, dtype), active),
                       Active(Invertible1x1Conv(active, dtype, seed=seed), active),
                       Active(AffineCoupling(active, i % 2, net, dtype, scale="sigmoid"), active)]
        if scale < num_scales - 1:
            active //= 2
    layers.append(Reshape([h, w, c], event_shape, dtype))
    return Flow(layers, event_shape, dtype, name="glow")
