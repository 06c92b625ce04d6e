"""The library's own error types: each means bad input (an option, a data file, a diverged training run) and
carries a one-line message naming the problem and what is accepted.  Anything else raised is a bug and keeps
its traceback (the stages turn only these, and ``OSError``, into one ``error:`` line)."""

from __future__ import annotations

__all__ = ["FlowsError", "OptionsError", "DataError", "NonFiniteError"]


class FlowsError(Exception):
    """Base of the library's own errors (bad input, not bugs)."""


class OptionsError(FlowsError, ValueError):
    """An option has a wrong name, type or value."""


class DataError(FlowsError, ValueError):
    """A data file or array is not what its data set expects (format, shape, checksum, values)."""


class NonFiniteError(FlowsError, FloatingPointError):
    """Training produced a NaN or Inf loss or weights."""
