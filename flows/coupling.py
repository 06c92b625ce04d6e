"""Real NVP on vectors: masked affine couplings (the image form, multi-scale, is in :mod:`flows.image`)."""

from __future__ import annotations

from .base import Flow, as_dtype
from .nn import BatchNorm, MaskedAffineCoupling, alternating_mask, check_hidden_units, check_positive_int
from .registry import register

__all__ = ["build_realnvp"]


@register(
    "realnvp",
    {"num_layers": 4, "hidden_units": [64, 64], "batch_norm": False},
    kind="vector",
    paper="Dinh, Sohl-Dickstein, Bengio 2016, Density estimation using Real NVP, https://arxiv.org/abs/1605.08803",
)
def build_realnvp(event_shape, dtype, *, num_layers, hidden_units, batch_norm) -> Flow:
    """Real NVP (Dinh et al. 2016), vector form: affine couplings with alternating masks, optional batch norm.

    Vectors (event shape ``(d,)``, ``d >= 2``): ``num_layers`` couplings whose masks alternate between even and
    odd features (:class:`~flows.nn.MaskedAffineCoupling`), each conditioned by an MLP of ``hidden_units``, with a
    :class:`~flows.nn.BatchNorm` between consecutive couplings when ``batch_norm``.  The image form (``(h, w, c)``,
    multi-scale) is ``flows.image.build_realnvp_image``, registered under the same name with its own options.

    Example::

        >>> flow = flows.build_flow("realnvp", [2], num_layers=4, hidden_units=[32, 32])
        >>> flow.sample(5, seed=0).shape
        TensorShape([5, 2])
    """
    event_shape = tuple(int(d) for d in event_shape)
    dtype = as_dtype(dtype)
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
        layers.append(MaskedAffineCoupling(alternating_mask(d, i), units, dtype, name=f"coupling_{i}"))
    return Flow(layers, event_shape, dtype, name="realnvp")
