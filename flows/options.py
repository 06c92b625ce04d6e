"""The one options schema and validator for everything ``params.yaml`` holds: flows' hyper-parameters, data sets'
data settings, training settings (:class:`flows.training.TrainConfig`) and figures.  Pure Python.

A schema maps each option's name to an :class:`Option` (a default with its constraints) or to a bare default, from
which the usual constraints follow (``num_*``/``n_*`` integers >= 1, ``max_*`` integers >= 0, lists of integer
widths >= 1).  :func:`check_options` validates a mapping against a schema and returns the defaults updated with
it; every problem is one :class:`OptionsError` in one format::

    <where>.<key> = <value> is invalid: <what is accepted> (default <default>)
    <where> has no setting '<key>'; accepted: <names>
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Option", "OptionsError", "check_options", "as_schema", "schema_of", "defaults_of", "accepted"]


from .errors import OptionsError  # noqa: E402  (re-exported: the error of every check here)


@dataclass(frozen=True)
class Option:
    """One option: its ``default`` (whose type is the option's type) and constraints.

    ``low``/``high``: inclusive bounds of a number (for a list of numbers: of each element); ``positive``: strictly
    greater than ``low``; ``choices``: the accepted values of a string; ``min_len``: shortest accepted list;
    ``nullable``: None is accepted too; ``also``: values accepted besides the bounds, numbers or names (``Option(0,
    low=2, also=(0,))``: "0 or an integer >= 2"; ``Option(1, low=1, also=("auto",))``: "'auto' or an integer >=
    1"); ``doc``: one line for error messages and documentation.
    """

    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    positive: bool = False
    choices: tuple | None = None
    min_len: int = 0
    nullable: bool = False
    below: float | None = None  # exclusive upper bound (logit_alpha < 0.5)
    also: tuple = ()  # values accepted besides the bounds (mog_components: 0, or an integer >= 2; batch_shards: "auto")


def accepted(options) -> str:
    return ", ".join(sorted(options))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _implied(key: str, default: Any) -> Option:
    """The constraints a bare default implies, from its name and type."""
    if _is_int(default) and key.startswith(("num_", "n_")):
        return Option(default, low=1)
    if _is_int(default) and key.startswith("max_"):
        return Option(default, low=0, doc="0: no limit")
    if isinstance(default, (list, tuple)) and default and _is_int(default[0]):
        return Option(list(default), low=1)
    return Option(list(default) if isinstance(default, tuple) else default)


def as_schema(schema: Mapping[str, Any]) -> dict[str, Option]:
    """Normalise a schema: bare defaults become :class:`Option` with their implied constraints."""
    return {k: v if isinstance(v, Option) else _implied(k, v) for k, v in schema.items()}


def schema_of(cls, exclude=()) -> dict[str, Option]:
    """The schema of a dataclass whose fields carry ``metadata={"option": Option(...)}`` (or a bare default)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        opt = f.metadata.get("option")
        out[f.name] = dataclasses.replace(opt, default=f.default) if opt else _implied(f.name, f.default)
    return out


def defaults_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(o.default) if isinstance(o.default, (list, tuple)) else o.default)
            for k, o in as_schema(schema).items()}


def _kind(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if _is_int(default):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, (list, tuple)):
        inner = _kind(default[0]) if default else ""
        return f"a list of {inner.split(' ', 1)[1]}s" if inner else "a list"
    if isinstance(default, str):
        return "a string"
    return f"a {type(default).__name__}"


def _bounds(opt: Option) -> str:
    parts = []
    if opt.low is not None:
        parts.append(f"{'>' if opt.positive else '>='} {opt.low:g}")
    elif opt.positive:
        parts.append("> 0")
    if opt.high is not None:
        parts.append(f"<= {opt.high:g}")
    if opt.below is not None:
        parts.append(f"< {opt.below:g}")
    return " and ".join(parts)


def _expected(opt: Option) -> str:
    if opt.choices is not None:
        return f"accepted: {', '.join(map(str, opt.choices))}"
    text = _kind(opt.default)
    if opt.positive and not opt.low and _is_num(opt.default):  # "a positive number", "a positive integer"
        text = f"a positive {'integer' if _is_int(opt.default) else 'number'}"
        opt = dataclasses.replace(opt, low=None, positive=False)
    bounds = _bounds(opt)
    if bounds:
        text += f" {bounds}"
    if opt.also:
        text = f"{' or '.join(map(repr, opt.also))} or {text}"
    if opt.min_len:
        text += f", at least {opt.min_len} long"
    if opt.nullable:
        text += ", or null"
    if opt.doc:
        text += f" ({opt.doc})"
    return text


def _number_ok(opt: Option, v) -> bool:
    if opt.low is not None and (v < opt.low or (opt.positive and v == opt.low)):
        return False
    if opt.low is None and opt.positive and v <= 0:
        return False
    if opt.high is not None and v > opt.high:
        return False
    return opt.below is None or v < opt.below


def _value_ok(opt: Option, value) -> bool:
    default = opt.default
    if value is None:
        return opt.nullable
    if opt.choices is not None:
        return value in opt.choices
    if isinstance(value, str) and value in opt.also:  # a named value of a number option ("auto")
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _is_int(default):
        return _is_int(value) and (value in opt.also or _number_ok(opt, value))
    if isinstance(default, float):
        return _is_num(value) and (value in opt.also or _number_ok(opt, value))
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) < opt.min_len:
            return False
        if default:
            elem = dataclasses.replace(opt, default=default[0], min_len=0, nullable=False)
            return all(_value_ok(elem, v) for v in value)
        return True
    if default is None:
        return True
    return isinstance(value, type(default))


def _normal(opt: Option, value):
    if value is None:
        return None
    if isinstance(opt.default, float) and not isinstance(value, bool):
        return float(value)
    if isinstance(opt.default, (list, tuple)):
        return list(value)
    return value


def check_options(schema: Mapping[str, Any], values: Mapping[str, Any] | None, where: str,
                  allow_none: bool = True) -> dict[str, Any]:
    """Validate ``values`` against ``schema``; return the defaults updated with them.

    ``where`` is the dotted path of the section (``flows.maf``, ``datasets.moons.train``) used in messages.
    ``values`` None means an empty section, unless ``allow_none`` is False (a section written as ``null``).
    """
    schema = as_schema(schema)
    if values is None:
        if not allow_none:
            raise OptionsError(f"{where} is empty (null): write its settings, or remove the key to use the "
                               f"defaults; accepted: {accepted(schema) or 'none'}")
        values = {}
    if not isinstance(values, Mapping):
        raise OptionsError(f"{where} = {values!r} is invalid: a mapping of settings; accepted: "
                           f"{accepted(schema) or 'none'}")
    out = defaults_of(schema)
    for key, value in values.items():
        if key not in schema:
            raise OptionsError(f"{where or 'the top level'} has no setting {key!r}; accepted: "
                               f"{accepted(schema) or 'none'}")
        opt = schema[key]
        if not _value_ok(opt, value):
            name = f"{where}.{key}" if where else key
            raise OptionsError(f"{name} = {value!r} is invalid: {_expected(opt)} (default {opt.default!r})")
        out[key] = _normal(opt, value)
    return out
