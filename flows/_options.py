"""Checking a mapping of options (hyper-parameters, data params) against typed defaults; pure Python."""

from __future__ import annotations

from typing import Any

__all__ = ["accepted", "type_ok", "type_name"]


def accepted(options) -> str:
    return ", ".join(sorted(options))


def type_ok(default, value) -> bool:
    """Whether ``value`` has the type of ``default`` (an int is a valid float; a bool is never a number)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if default is None:
        return True
    return isinstance(value, type(default))


def type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (list, tuple)):
        return "a list"
    if isinstance(default, str):
        return "a string"
    return f"a {type(default).__name__}"
