"""Checking a mapping of options (hyper-parameters, data params) against typed defaults; pure Python."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["accepted", "type_ok", "type_name", "size_problem"]

#: size options (``num_*``, ``n_*``) for which 0 is meaningful ("none")
ZERO_SIZES = {"num_res_blocks"}


def accepted(options) -> str:
    return ", ".join(sorted(options))


def type_ok(default, value) -> bool:
    """Whether ``value`` has the type of ``default`` (an int is a valid float; a bool is never a number)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (list, tuple)):
        # the elements too must have the type of the default's elements (hidden_units: a list of integers)
        return isinstance(value, (list, tuple)) and (not default or all(type_ok(default[0], v) for v in value))
    if default is None:
        return True
    return isinstance(value, type(default))


def type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, (list, tuple)):
        if default and not isinstance(default[0], (list, tuple)):
            return f"a list of {type_name(default[0]).split(' ', 1)[1]}s"
        return "a list"
    if isinstance(default, str):
        return "a string"
    return f"a {type(default).__name__}"


def size_problem(key: str, default, value) -> str | None:
    """What is wrong with ``value`` as a size (None if nothing): ``num_*`` / ``n_*`` integers must be >= 1 (>= 0
    for :data:`ZERO_SIZES`), ``max_*`` integers >= 0, and a list of integers (layer widths) must hold only
    integers >= 1.  Call after :func:`type_ok`."""
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, int):
        if key.startswith(("num_", "n_")):
            low = 0 if key in ZERO_SIZES else 1
            if value < low:
                return f"a size: an integer >= {low}"
        elif key.startswith("max_") and value < 0:
            return "an integer >= 0 (0: no limit)"
    if isinstance(default, (list, tuple)) and default and isinstance(default[0], int) and not isinstance(default[0], bool):
        if any(isinstance(v, int) and v < 1 for v in value):
            return "a list of sizes: integers >= 1"
    return None
