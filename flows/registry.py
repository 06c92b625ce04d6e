"""One registry mapping a flow's name to its builders and their options, one variant per kind of event.

A flow family registers each form it has: ``@register("realnvp", {...}, kind="vector")`` over the vector builder
and ``@register("realnvp", {...}, kind="image")`` over the multi-scale one.  Each variant declares its own options
once (the builder takes them as keyword arguments without defaults), so a key is accepted exactly where it has an
effect.  ``FLOWS[name].defaults`` is what ``params.yaml``'s ``flows.<name>`` section holds: the options of a
one-kind flow, or ``{vector: {...}, image: {...}}`` for a flow with both forms.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .base import Flow, as_dtype
from .options import Option, OptionsError, accepted, as_schema, check_options, defaults_of

__all__ = ["FlowSpec", "Variant", "FLOWS", "register", "build_flow", "check_hparams", "kind_of", "accepted"]

KINDS = ("vector", "image")


@dataclass(frozen=True)
class Variant:
    """One form of a flow: the builder for one kind of event and the options it takes."""

    kind: str
    builder: Callable[..., Flow]
    options: dict[str, Option]
    doc: str = field(default="", compare=False)


@dataclass
class FlowSpec:
    """What the registry knows of a flow: its variants (by kind), whether it samples, and its paper."""

    name: str
    variants: dict[str, Variant]
    can_sample: bool = True
    paper: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.variants)

    @property
    def nested(self) -> bool:
        """Whether params.yaml's section is nested by kind (the flow has several forms)."""
        return len(self.variants) > 1

    @property
    def defaults(self) -> dict[str, Any]:
        if self.nested:
            return {k: defaults_of(v.options) for k, v in self.variants.items()}
        return defaults_of(next(iter(self.variants.values())).options)

    def options(self, kind: str) -> dict[str, Option]:
        return self.variants[kind].options

    @property
    def doc(self) -> str:
        return "\n\n".join(v.doc for v in self.variants.values() if v.doc)


FLOWS: dict[str, FlowSpec] = {}


def register(name: str, options: dict[str, Any], kind: str = "vector", can_sample: bool = True, paper: str = ""):
    """Decorator: ``@register("maf", {"num_layers": 5, ...})`` over ``builder(event_shape, dtype, *, **options)``.

    ``options`` maps each option to its default or to an :class:`~flows.options.Option`; the builder receives every
    one of them as a keyword argument.  Register a second ``kind`` under the same name for a second form.
    """
    if kind not in KINDS:
        raise ValueError(f"flow {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")

    def deco(builder):
        spec = FLOWS.setdefault(name, FlowSpec(name, {}, can_sample, paper))
        if kind in spec.variants:
            raise ValueError(f"flow {name!r} ({kind}) is registered twice")
        spec.variants[kind] = Variant(kind, builder, as_schema(options), builder.__doc__ or "")
        spec.paper = spec.paper or paper
        return builder

    return deco


def kind_of(event_shape) -> str | None:
    """``vector`` for an event shape [d], ``image`` for [h, w, c], else None."""
    return {1: "vector", 3: "image"}.get(len(tuple(event_shape)))


def _spec(name: str, where: str) -> FlowSpec:
    if name not in FLOWS:
        raise OptionsError(f"{where or 'flow'}: unknown flow {name!r}; accepted: {accepted(FLOWS)}")
    return FLOWS[name]


def check_hparams(name: str, hparams: dict[str, Any] | None, kind: str | None = None, where: str = "") -> dict:
    """Validate hyper-parameters of flow ``name``; return its defaults updated with them.

    With ``kind`` (``vector`` or ``image``) ``hparams`` are the flat options of that form.  Without it they are
    a ``params.yaml`` section: flat for a one-kind flow, ``{vector: {...}, image: {...}}`` for a flow with both.
    Raises :class:`~flows.options.OptionsError` (a ``ValueError``) naming the key and what is accepted.
    """
    where = where or f"flows.{name}"
    spec = _spec(name, where)
    if kind is not None:
        if kind not in spec.variants:
            raise OptionsError(f"flow {name!r} accepts events of kind {accepted(spec.kinds)} (vector = [d], "
                               f"image = [h, w, c]); not {kind}")
        return check_options(spec.options(kind), hparams, where)
    if not spec.nested:
        return check_options(spec.options(spec.kinds[0]), hparams, where)
    sections = check_options({k: Option({}) for k in spec.kinds}, hparams, where)
    return {k: check_options(spec.options(k), sections[k] or {}, f"{where}.{k}") for k in spec.kinds}


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def min_parameters(event_shape, hp: dict) -> int:
    """A lower bound on the number of weights of a flow with these options (its conditioners' matrices alone)."""
    d = int(math.prod(int(s) for s in event_shape))
    layers = max(int(hp.get("num_layers", hp.get("num_blocks", 1)) or 1), 1)
    total = 0
    widths = [int(w) for w in hp.get("hidden_units", []) if isinstance(w, int)]
    if widths:
        chain = [d] + widths + [d]
        total += layers * sum(a * b for a, b in zip(chain, chain[1:]))
    filters = hp.get("num_filters")
    if isinstance(filters, int):
        total += layers * max(int(hp.get("num_scales", 1)), 1) * filters * filters * 9
    return total


def check_size(name: str, event_shape, hp: dict, where: str = "") -> None:
    """Refuse a model whose weights, gradients and Adam moments (4 float32 copies) cannot fit in memory."""
    n = min_parameters(event_shape, hp)
    need, have = 16 * n, _memory_bytes()
    if have and need > have:
        raise OptionsError(
            f"{where or 'flows.' + name}: this model has at least {n:.3g} weights ({need / 2**30:.3g} GiB with "
            f"their gradients and Adam moments in float32), more than this machine's {have / 2**30:.3g} GiB of "
            "memory; choose smaller hidden_units / num_filters / num_layers"
        )


def build_flow(name: str, event_shape, dtype="float32", **hparams) -> Flow:
    """Build flow ``name`` for events of ``event_shape``; unspecified hyper-parameters take their defaults.

    The form follows the event shape ([d]: vector, [h, w, c]: image) and ``hparams`` are that form's options.
    The flow carries ``flow.config`` (name, kind, event shape, dtype, full hyper-parameters), from which
    :func:`flows.load` rebuilds it.
    """
    spec = _spec(name, f"flows.{name}")
    event_shape = tuple(int(d) for d in event_shape)
    kind = kind_of(event_shape)
    if kind not in spec.variants:
        raise OptionsError(
            f"flow {name!r} accepts events of kind {accepted(spec.kinds)} "
            f"(vector = [d], image = [h, w, c]); got event shape {list(event_shape)}"
        )
    full = check_hparams(name, hparams, kind=kind)
    check_size(name, event_shape, full)
    dtype = as_dtype(dtype)
    try:
        flow = spec.variants[kind].builder(event_shape, dtype, **full)
    except OptionsError:
        raise
    except ValueError as exc:  # a builder refuses these options for this event shape: bad input, one line
        raise OptionsError(f"flows.{name} on event shape {list(event_shape)}: {' '.join(str(exc).split())}") from exc
    if not isinstance(flow, Flow):
        raise TypeError(f"builder of flow {name!r} returned {type(flow).__name__}, not a Flow")
    # not a tracked attribute: the checkpoint's object graph stays that of the layers alone
    object.__setattr__(flow, "config", {"flow": name, "kind": kind, "event_shape": list(event_shape),
                                        "dtype": dtype.name, "hparams": full})
    return flow
