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
from .nn import SCALES, AffineCoupling, ConvNet, bounded_log_scale
from .options import Option
from .registry import register

__all__ = [
    "squeeze",
    "unsqueeze",
    "checkerboard_mask",
    "Squeeze",
    "Active",
    "Reshape",
    "conv_conditioner",
    "check_image",
    "CheckerboardCoupling",
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


def conv_conditioner(num_filters, num_res_blocks, dtype, seed):
    """``(in_channels, out_channels) -> ConvNet``: the coupling network of the image flows."""
    return lambda cin, cout: ConvNet(cin, cout, num_filters, num_res_blocks, dtype, seed=seed)


class CheckerboardCoupling(FlowLayer):
    """Affine coupling with a spatial checkerboard mask b (Real NVP, Dinh et al. 2017, arXiv:1605.08803).

    Data -> noise: ``z = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x))``,
    ``log|det dz/dx| = sum((1 - b) * s)``, with s bounded by :func:`flows.nn.bounded_log_scale` (``scale="tanh"``:
    ``exp(g) * tanh``; ``"sigmoid"``: Glow's ``log sigmoid(raw + 2)``).  The conditioner (a
    :class:`~flows.nn.ConvNet`) also sees the mask as an extra channel.

    Args:
        channels: channels of the input; h, w: its spatial size; parity: 0 or 1, which squares condition.
        num_filters, num_res_blocks: of the :class:`~flows.nn.ConvNet`; dtype; scale; seed.
    """

    def __init__(self, channels, h, w, parity, num_filters, num_res_blocks, dtype, scale="tanh", seed=0, name=None):
        super().__init__(name=name)
        if scale not in SCALES:
            raise ValueError(f"coupling scale {scale!r} is not supported; accepted: {', '.join(SCALES)}")
        self.dtype, self.channels, self.scale = as_dtype(dtype), int(channels), scale
        if scale == "tanh":  # Real NVP's learned factor on tanh: log-scale = exp(g) * tanh(raw), per channel
            self.log_gain = tf.Variable(tf.zeros([self.channels], self.dtype), name="log_gain")
        self.net = ConvNet(self.channels + 1, 2 * self.channels, num_filters, num_res_blocks, self.dtype, seed=seed)
        self.mask = checkerboard_mask(h, w, parity, self.dtype)

    def _st(self, x_cond):
        mask = tf.broadcast_to(self.mask, tf.concat([tf.shape(x_cond)[:3], [1]], 0))
        raw, t = tf.split(self.net(tf.concat([x_cond * self.mask, mask], axis=-1)), 2, axis=-1)
        s = bounded_log_scale(raw, self.scale, getattr(self, "log_gain", None))
        return s * (1 - self.mask), t * (1 - self.mask)

    def inverse(self, x, training: bool = False):
        s, t = self._st(x)
        return x * tf.exp(s) + t, tf.reduce_sum(s, axis=[1, 2, 3])

    def forward(self, z):
        s, t = self._st(z)  # the masked half is unchanged, so it conditions identically
        return (z - t) * tf.exp(-s), -tf.reduce_sum(s, axis=[1, 2, 3])


def check_image(event_shape, num_scales, squeezes, who):
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


@register("realnvp", {"num_layers": 4, "num_scales": 2, "num_filters": 32, "num_res_blocks": Option(2, low=0)},
          kind="image")
def build_realnvp_image(event_shape, dtype, *, num_layers, num_scales, num_filters, num_res_blocks) -> Flow:
    """Real NVP for images (Dinh, Sohl-Dickstein and Bengio, Density estimation using Real NVP, 2017,
    https://arxiv.org/abs/1605.08803), multi-scale as in the paper's section 3.6.

    Each scale but the last: 3 checkerboard couplings (alternating parity), squeeze, 3 channel couplings
    (alternating), factor out half the channels.  Last scale: ``num_layers`` checkerboard couplings (paper: 4).
    Scales are ``s = exp(g) * tanh(raw)``; the s,t networks are :class:`~flows.nn.ConvNet` with ``num_filters`` and
    ``num_res_blocks``.
    """
    dtype = as_dtype(dtype)
    event_shape = tuple(int(s) for s in event_shape)
    num_scales = int(num_scales)
    check_image(event_shape, num_scales, num_scales - 1, "realnvp")
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
            net = conv_conditioner(num_filters, num_res_blocks, dtype, seed)
            layers.append(Active(AffineCoupling(active, p % 2, net, dtype, scale="tanh"), active))
        active //= 2
    layers.append(Reshape([h, w, c], event_shape, dtype))
    return Flow(layers, event_shape, dtype, name="realnvp")
