"""Image building blocks shared by Glow and Real NVP: squeeze, masks, affine couplings, multi-scale.

Multi-scale factor-out, as done here.  The :class:`~flows.base.Flow` API chains layers that map a tensor to a
tensor of the same total size, and the final ``z`` must have the flow's event shape.  So no channel is ever
dropped from the tensor: the state is always one ``[b, h', w', C']`` tensor whose first ``active`` channels
are still being transformed and whose remaining channels are *factored out* (already final latents, passed
through unchanged, hence scored by the standard normal base as in Real NVP).  Each layer of a scale is wrapped
in :class:`Active`, which applies it to ``x[..., :active]`` only; :class:`Squeeze` squeezes the active and the
factored-out channels separately so the active ones stay first; and a final :class:`Reshape` (a fixed
re-indexing, log-det 0) gives ``z`` the event shape ``[h, w, c]``.  Every intermediate tensor of
``Flow.inverse_trajectory`` is therefore the whole state, including the factored-out part.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .base import Flow, FlowLayer, as_dtype

__all__ = [
    "squeeze",
    "unsqueeze",
    "checkerboard_mask",
    "Squeeze",
    "Active",
    "Reshape",
    "ConvNet",
    "CheckerboardCoupling",
    "ChannelCoupling",
    "build_realnvp_image",
]


def squeeze(x):
    """Space-to-depth: [b, h, w, c] -> [b, h/2, w/2, 4c] (a permutation of entries, log-det 0)."""
    return tf.nn.space_to_depth(x, 2)


def unsqueeze(x):
    """Depth-to-space, the inverse of :func:`squeeze`."""
    return tf.nn.depth_to_space(x, 2)


def checkerboard_mask(h: int, w: int, parity: int, dtype) -> tf.Tensor:
    """[1, h, w, 1] mask with 1 where (i + j + parity) is even: the conditioning half of a checkerboard coupling."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return tf.constant(((i + j + parity) % 2 == 0).astype(np.float64)[None, :, :, None], dtype)


def _zeros_ldj(x, dtype):
    return tf.zeros(tf.shape(x)[:1], dtype)


class Squeeze(FlowLayer):
    """Squeeze (space-to-depth) of a multi-scale state, keeping the ``active`` channels first.

    Data -> noise: ``[b, h, w, C] -> [b, h/2, w/2, 4C]``; the active part and the factored-out part are
    squeezed separately, so the ``4 * active`` first channels of the output are the active ones.  log-det 0.
    """

    def __init__(self, active: int, dtype, name=None):
        super().__init__(name=name)
        self.active, self.dtype = int(active), as_dtype(dtype)

    def inverse(self, x, training: bool = False):
        a, rest = x[..., : self.active], x[..., self.active:]
        return tf.concat([squeeze(a), squeeze(rest)], axis=-1), _zeros_ldj(x, self.dtype)

    def forward(self, z):
        k = 4 * self.active
        return tf.concat([unsqueeze(z[..., :k]), unsqueeze(z[..., k:])], axis=-1), _zeros_ldj(z, self.dtype)


class Active(FlowLayer):
    """Applies ``layer`` to the first ``active`` channels and passes the factored-out rest through."""

    def __init__(self, layer: FlowLayer, active: int, name=None):
        super().__init__(name=name)
        self.layer, self.active = layer, int(active)
        self.can_sample = layer.can_sample

    def _split(self, x):
        return x[..., : self.active], x[..., self.active:]

    def inverse(self, x, training: bool = False):
        a, rest = self._split(x)
        a, ldj = self.layer.inverse(a, training=training)
        return tf.concat([a, rest], axis=-1), ldj

    def forward(self, z):
        a, rest = self._split(z)
        a, ldj = self.layer.forward(a)
        return tf.concat([a, rest], axis=-1), ldj

    def initialize(self, x):
        a, rest = self._split(x)
        return tf.concat([self.layer.initialize(a), rest], axis=-1)


class Reshape(FlowLayer):
    """A fixed re-indexing of the state to the event shape (data -> noise), log-det 0."""

    def __init__(self, in_shape, out_shape, dtype, name=None):
        super().__init__(name=name)
        self.in_shape, self.out_shape = [int(s) for s in in_shape], [int(s) for s in out_shape]
        self.dtype = as_dtype(dtype)

    def inverse(self, x, training: bool = False):
        return tf.reshape(x, [-1] + self.out_shape), _zeros_ldj(x, self.dtype)

    def forward(self, z):
        return tf.reshape(z, [-1] + self.in_shape), _zeros_ldj(z, self.dtype)


class ConvNet(tf.Module):
    """Small residual CNN for the coupling's (log-scale, shift): 3x3 conv in, residual blocks, zero-init 3x3 conv out.

    Args:
        in_channels, out_channels: channels of the input and output.
        num_filters: width of the hidden convolutions.
        num_res_blocks: residual blocks, each ``x + conv(relu(conv(relu(x))))`` (0 gives a plain 2-conv CNN).
        dtype: float32 or float64.
        seed: seed of the initial weights.
    """

    def __init__(self, in_channels, out_channels, num_filters, num_res_blocks, dtype, seed=0, name=None):
        super().__init__(name=name)
        rng = np.random.default_rng(seed)

        def conv(cin, cout, zero=False):
            if zero:
                return tf.Variable(tf.zeros([3, 3, cin, cout], dtype))
            lim = np.sqrt(6.0 / (9 * cin + 9 * cout))
            return tf.Variable(rng.uniform(-lim, lim, size=(3, 3, cin, cout)), dtype=dtype)

        f = int(num_filters)
        self.w_in, self.b_in = conv(in_channels, f), tf.Variable(tf.zeros([f], dtype))
        self.blocks = [
            (conv(f, f), tf.Variable(tf.zeros([f], dtype)), conv(f, f), tf.Variable(tf.zeros([f], dtype)))
            for _ in range(int(num_res_blocks))
        ]
        self.w_out, self.b_out = conv(f, out_channels, zero=True), tf.Variable(tf.zeros([out_channels], dtype))

    @staticmethod
    def _conv(x, w, b):
        return tf.nn.conv2d(x, w, strides=1, padding="SAME") + b

    def __call__(self, x):
        h = self._conv(x, self.w_in, self.b_in)
        for w1, b1, w2, b2 in self.blocks:
            h = h + self._conv(tf.nn.relu(self._conv(tf.nn.relu(h), w1, b1)), w2, b2)
        return self._conv(tf.nn.relu(h), self.w_out, self.b_out)


def _log_scale(raw, kind, scale):
    """Bounded log-scale: Real NVP's ``scale * tanh(raw)`` or Glow's ``log sigmoid(raw + 2)``."""
    if kind == "tanh":
        return scale * tf.tanh(raw)
    return tf.math.log_sigmoid(raw + tf.constant(2.0, raw.dtype))


class _ImageCoupling(FlowLayer):
    def __init__(self, channels, num_filters, num_res_blocks, dtype, scale="tanh", seed=0, name=None):
        super().__init__(name=name)
        if scale not in ("tanh", "sigmoid"):
            raise ValueError(f"coupling scale {scale!r} is not supported; accepted: sigmoid, tanh")
        self.dtype, self.channels, self.scale_kind = as_dtype(dtype), int(channels), scale
        # Real NVP's learned factor on tanh: log-scale = exp(g) * tanh(raw), per channel
        if scale == "tanh":
            self.log_gain = tf.Variable(tf.zeros([self._out_channels()], self.dtype), name="log_gain")
        self.net = ConvNet(self._in_channels(), 2 * self._out_channels(), num_filters, num_res_blocks,
                           self.dtype, seed=seed)

    def _params(self, cond):
        raw, shift = tf.split(self.net(cond), 2, axis=-1)
        gain = tf.exp(self.log_gain) if self.scale_kind == "tanh" else None
        return _log_scale(raw, self.scale_kind, gain), shift


class CheckerboardCoupling(_ImageCoupling):
    """Affine coupling with a spatial checkerboard mask b (Real NVP, Dinh et al. 2017, arXiv:1605.08803).

    Data -> noise: ``z = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x))``,
    ``log|det dz/dx| = sum((1 - b) * s)``, with s bounded (``scale="tanh"``: ``exp(g) * tanh``; ``"sigmoid"``:
    Glow's ``log sigmoid(raw + 2)``).  The conditioner also sees the mask as an extra channel.

    Args:
        channels: channels of the input; h, w: its spatial size; parity: 0 or 1, which squares condition.
        num_filters, num_res_blocks: of the :class:`ConvNet`; dtype; scale; seed.
    """

    def __init__(self, channels, h, w, parity, num_filters, num_res_blocks, dtype, scale="tanh", seed=0, name=None):
        self._c = int(channels)
        super().__init__(channels, num_filters, num_res_blocks, dtype, scale, seed, name)
        self.mask = checkerboard_mask(h, w, parity, self.dtype)

    def _in_channels(self):
        return self._c + 1

    def _out_channels(self):
        return self._c

    def _st(self, x_cond):
        mask = tf.broadcast_to(self.mask, tf.concat([tf.shape(x_cond)[:3], [1]], 0))
        s, t = self._params(tf.concat([x_cond * self.mask, mask], axis=-1))
        return s * (1 - self.mask), t * (1 - self.mask)

    def inverse(self, x, training: bool = False):
        s, t = self._st(x)
        return x * tf.exp(s) + t, tf.reduce_sum(s, axis=[1, 2, 3])

    def forward(self, z):
        s, t = self._st(z)  # the masked half is unchanged, so it conditions identically
        return (z - t) * tf.exp(-s), -tf.reduce_sum(s, axis=[1, 2, 3])


class ChannelCoupling(_ImageCoupling):
    """Affine coupling splitting channels in halves (Real NVP's channel mask; Glow's coupling).

    Data -> noise: ``z_a = x_a``, ``z_b = x_b * exp(s(x_a)) + t(x_a)``, ``log|det| = sum(s)``; ``parity`` 1 swaps
    the roles of the halves.

    Args:
        channels: channels of the input (>= 2); parity; num_filters, num_res_blocks; dtype; scale; seed.
    """

    def __init__(self, channels, parity, num_filters, num_res_blocks, dtype, scale="tanh", seed=0, name=None):
        if int(channels) < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels; got {channels}")
        self._c, self.parity = int(channels), int(parity) % 2
        self._k = self._c // 2
        super().__init__(channels, num_filters, num_res_blocks, dtype, scale, seed, name)

    def _sizes(self):  # (conditioning, transformed)
        return (self._k, self._c - self._k) if self.parity == 0 else (self._c - self._k, self._k)

    def _in_channels(self):
        return self._sizes()[0]

    def _out_channels(self):
        return self._sizes()[1]

    def _split(self, x):
        a, b = x[..., : self._k], x[..., self._k:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, cond, trans):
        return tf.concat([cond, trans] if self.parity == 0 else [trans, cond], axis=-1)

    def inverse(self, x, training: bool = False):
        cond, trans = self._split(x)
        s, t = self._params(cond)
        return self._join(cond, trans * tf.exp(s) + t), tf.reduce_sum(s, axis=[1, 2, 3])

    def forward(self, z):
        cond, trans = self._split(z)
        s, t = self._params(cond)
        return self._join(cond, (trans - t) * tf.exp(-s)), -tf.reduce_sum(s, axis=[1, 2, 3])


def _check_image(event_shape, num_scales, squeezes, who):
    if len(event_shape) != 3:
        raise ValueError(f"{who} on images takes event shape [h, w, c]; got {list(event_shape)}")
    h, w, c = event_shape
    if num_scales < 1:
        raise ValueError(f"{who}: num_scales = {num_scales} must be >= 1")
    f = 2 ** squeezes
    if h % f or w % f:
        raise ValueError(
            f"{who}: height and width {h}x{w} must be divisible by 2**{squeezes} = {f} for num_scales = "
            f"{num_scales}; lower num_scales or pad the images"
        )


def build_realnvp_image(event_shape, dtype, num_layers=4, num_scales=2, num_filters=32, num_res_blocks=2,
                        **_ignored) -> Flow:
    """Real NVP for images (Dinh, Sohl-Dickstein and Bengio, Density estimation using Real NVP, 2017,
    https://arxiv.org/abs/1605.08803), multi-scale as in the paper's section 3.6.

    Each scale but the last: 3 checkerboard couplings (alternating parity), squeeze, 3 channel couplings
    (alternating), factor out half the channels.  Last scale: ``num_layers`` checkerboard couplings (paper: 4).
    Scales are ``s = exp(g) * tanh(raw)``.  The vector-only hyper-parameters (``hidden_units``, ``batch_norm``)
    are ignored: the s,t networks are :class:`ConvNet` with ``num_filters`` and ``num_res_blocks``.
    """
    dtype = as_dtype(dtype)
    event_shape = tuple(int(s) for s in event_shape)
    num_scales = int(num_scales)
    _check_image(event_shape, num_scales, num_scales - 1, "realnvp")
    h, w, c = event_shape
    active, layers, seed = c, [], 0
    for scale in range(num_scales):
        last = scale == num_scales - 1
        for p in range(int(num_layers) if last else 3):
            seed += 1
            layers.append(Active(CheckerboardCoupling(active, h, w, p % 2, num_filters, num_res_blocks, dtype,
                                                      "tanh", seed), active))
        if last:
            break
        layers.append(Squeeze(active, dtype))
        h, w, c, active = h // 2, w // 2, 4 * c, 4 * active
        for p in range(3):
            seed += 1
            layers.append(Active(ChannelCoupling(active, p % 2, num_filters, num_res_blocks, dtype, "tanh", seed),
                                 active))
        active //= 2
    layers.append(Reshape([h, w, c], event_shape, dtype))
    return Flow(layers, event_shape, dtype, name="realnvp")
