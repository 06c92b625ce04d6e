"""One registry mapping a flow's name to its builder and default hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ._options import accepted, size_problem as _size_problem, type_name as _type_name, type_ok as _type_ok
from .base import Flow, as_dtype

__all__ = ["FlowSpec", "FLOWS", "register", "build_flow", "check_hparams", "accepted"]


@dataclass(frozen=True)
class FlowSpec:
    """What the registry knows of a flow: its builder, defaults and where it applies."""

    name: str
    builder: Callable[..., Flow]
    defaults: dict[str, Any]
    #: event kinds it accepts: "vector" (shape [d]) and/or "image" (shape [h, w, c])
    kinds: tuple[str, ...] = ("vector",)
    can_sample: bool = True
    paper: str = ""
    doc: str = field(default="", compare=False)


FLOWS: dict[str, FlowSpec] = {}


def register(name: str, defaults: dict[str, Any], kinds=("vector",), can_sample: bool = True, paper: str = ""):
    """Decorator: ``@register("maf", {"num_layers": 5, ...})`` over ``builder(event_shape, dtype, **hparams)``."""

    def deco(builder):
        if name in FLOWS:
            raise ValueError(f"flow {name!r} is registered twice")
        FLOWS[name] = FlowSpec(name, builder, dict(defaults), tuple(kinds), can_sample, paper, builder.__doc__ or "")
        return builder

    return deco


def check_hparams(name: str, hparams: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Validate ``hparams`` for flow ``name`` and return defaults updated with them.

    Raises ``ValueError`` naming the flow, the key and the accepted values.
    """
    prefix = f"{where}: " if where else ""
    if name not in FLOWS:
        raise ValueError(f"{prefix}unknown flow {name!r}; accepted: {accepted(FLOWS)}")
    spec = FLOWS[name]
    out = dict(spec.defaults)
    for key, value in (hparams or {}).items():
        if key not in spec.defaults:
            raise ValueError(
                f"{prefix}flow {name!r} has no hyper-parameter {key!r}; accepted: {accepted(spec.defaults)}"
            )
        default = spec.defaults[key]
        if not _type_ok(default, value):
            raise ValueError(
                f"{prefix}flow {name!r}: {key} = {value!r} must be {_type_name(default)} (default {default!r})"
            )
        problem = _size_problem(key, default, value)
        if problem:
            raise ValueError(f"{prefix}flow {name!r}: {key} = {value!r} must be {problem} (default {default!r})")
        out[key] = float(value) if isinstance(default, float) else value
    return out


def build_flow(name: str, event_shape, dtype="float32", **hparams) -> Flow:
    """Build flow ``name`` for events of ``event_shape``; unspecified hyper-parameters take their defaults."""
    full = check_hparams(name, hparams)
    spec = FLOWS[name]
    event_shape = tuple(int(d) for d in event_shape)
    kind = "vector" if len(event_shape) == 1 else "image" if len(event_shape) == 3 else None
    if kind not in spec.kinds:
        raise ValueError(
            f"flow {name!r} accepts events of kind {accepted(spec.kinds)} "
            f"(vector = [d], image = [h, w, c]); got event shape {list(event_shape)}"
        )
    flow = spec.builder(event_shape, as_dtype(dtype), **full)
    if not isinstance(flow, Flow):
        raise TypeError(f"builder of flow {name!r} returned {type(flow).__name__}, not a Flow")
    return flow
