"""Coupling flows: Real NVP (vector and image, multi-scale)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .base import Flow, FlowLayer, as_dtype
from .layers import BatchNorm, alternating_mask, check_hidden_units, check_positive_int, mlp, soft_clamp
from .registry import register

__all__ = ["AffineCoupling", "build_realnvp"]

#: bound of the log-scale: s = 3 tanh(raw / 3), so one coupling scales a feature by at most e^3
LOG_SCALE_BOUND = 3.0


class AffineCoupling(FlowLayer):
    """Affine coupling layer of Real NVP: half the features, chosen by a mask, condition an affine map of the rest.

    "Density estimation using Real NVP", L. Dinh, J. Sohl-Dickstein, S. Bengio, 2016,
    https://arxiv.org/abs/1605.08803

    Data -> noise, with ``b`` the binary mask (1 = kept) and ``(s, t) = NN(b * x)``:

        z = b * x + (1 - b) * (x * exp(s) + t),      log|det dz/dx| = sum((1 - b) * s),
        x = b * z + (1 - b) * (z - t) * exp(-s)      (noise -> data, same s, t since b * z = b * x).

    ``s`` is soft-clamped to (-3, 3) by ``3 tanh(raw / 3)`` so that no step can blow up.  The network's last
    layer starts at zero, so the layer starts as the identity.

    Arguments:
        mask: boolean array of length ``d``, True for the conditioning (unchanged) features.
        hidden_units: widths of the conditioner MLP.
        dtype: the flow's dtype.
        activation: hidden activation of the MLP.
    """

    def __init__(self, mask, hidden_units, dtype="float32", activation: str = "relu", name=None):
        super().__init__(name=name)
        self.dtype = as_dtype(dtype)
        mask = np.asarray(mask, dtype=bool)
        d = mask.shape[0]
        self.mask = tf.constant(mask, self.dtype)
        self.net = mlp(d, 2 * d, hidden_units, self.dtype, activation)

    def _scale_shift(self, kept):
        s, t = tf.split(self.net(kept), 2, axis=-1)
        free = 1 - self.mask
        return soft_clamp(s, LOG_SCALE_BOUND) * free, t * free

    def inverse(self, x, training: bool = False):
        kept = x * self.mask
        s, t = self._scale_shift(kept)
        z = kept + (1 - self.mask) * (x * tf.exp(s) + t)
        return z, tf.reduce_sum(s, axis=-1)

    def forward(self, z):
        kept = z * self.mask
        s, t = self._scale_shift(kept)
        x = kept + (1 - self.mask) * (z - t) * tf.exp(-s)
        return x, -tf.reduce_sum(s, axis=-1)


@register(
    "realnvp",
    {"num_layers": 4, "hidden_units": [64, 64], "batch_norm": False, "num_scales": 2, "num_filters": 32,
     "num_res_blocks": 2},
    kinds=("vector", "image"),
    paper="Dinh, Sohl-Dickstein, Bengio 2016, Density estimation using Real NVP, https://arxiv.org/abs/1605.08803",
)
def build_realnvp(event_shape, dtype, num_layers=4, hidden_units=(64, 64), batch_norm=False, num_scales=2,
                  num_filters=32, num_res_blocks=2) -> Flow:
    """Real NVP (Dinh et al. 2016): affine couplings with alternating masks, optional batch norm between them.

    Vectors (event shape ``(d,)``, ``d >= 2``): ``num_layers`` couplings whose masks alternate between even and
    odd features, each conditioned by an MLP of ``hidden_units``, with a :class:`~flows.layers.BatchNorm`
    between consecutive couplings when ``batch_norm``; ``num_scales``, ``num_filters`` and ``num_res_blocks``
    are unused.  Images (``(h, w, c)``): the multi-scale architecture of ``flows.image.build_realnvp_image``,
    which receives every hyper-parameter.

    Example::

        >>> flow = flows.build_flow("realnvp", [2], num_layers=4, hidden_units=[32, 32])
        >>> flow.sample(5, seed=0).shape
        TensorShape([5, 2])
    """
    event_shape = tuple(int(d) for d in event_shape)
    dtype = as_dtype(dtype)
    if len(event_shape) == 3:
        try:
            from .image import build_realnvp_image
        except ImportError as exc:
            raise NotImplementedError(
                f"image Real NVP is not available yet (flows.image.build_realnvp_image is missing); "
                f"got event shape {list(event_shape)}"
            ) from exc
        return build_realnvp_image(event_shape, dtype, num_layers=num_layers, hidden_units=hidden_units,
                                   batch_norm=batch_norm, num_scales=num_scales, num_filters=num_filters,
                                   num_res_blocks=num_res_blocks)
    if len(event_shape) != 1:
        raise ValueError(f"realnvp: event shape {list(event_shape)} must be [d] (vector) or [h, w, c] (image)")
    d = event_shape[0]
    if d < 2:
        raise ValueError(f"realnvp: event size d = {d} must be at least 2 for a coupling layer to split it")
    num_layers = check_positive_int(num_layers, "num_layers", "realnvp")
    units = check_hidden_units(hidden_units, "realnvp")
    layers = []
    for i in range(num_layers):
        if batch_norm and i > 0:
            layers.append(BatchNorm(d, dtype=dtype, name=f"batch_norm_{i}"))
        layers.append(AffineCoupling(alternating_mask(d, i), units, dtype, name=f"coupling_{i}"))
    return Flow(layers, event_shape, dtype, name="realnvp")
