"""Errors that teach: every message names where (file, field or row), the rule and the value.

The CLI catches :class:`TwinError` and prints its message without a traceback; everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "TwinError",
    "UnitError",
    "RecipeError",
    "ScenarioError",
    "DataError",
    "ParameterError",
    "SolverError",
]


class TwinError(Exception):
    """Base class of every user-facing error in `twin` and `calibration`.

    Args:
        message: what rule was broken, in the user's terms.
        where: the file (and optionally field or row) the problem is in, or `None`.
        field: the field, column, key or variable concerned, or `None`.
        value: the offending value, or `None`.
    """

    def __init__(self, message: str, *, where: object = None, field: str | None = None,
                 value: object = None, hint: str | None = None):
        self.rule = message
        self.where = None if where is None else str(where)
        self.field = field
        self.value = value
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.where is not None:
            parts.append(f"{self.where}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        head = ": ".join(parts)
        text = f"{head}: {self.rule}" if head else self.rule
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.hint:
            text += f". {self.hint}"
        return text


class UnitError(TwinError):
    """A unit that is unknown or cannot be converted to the internal unit."""


class RecipeError(TwinError):
    """A recipe (piecewise profile) that is malformed: overlaps, gaps, bad values, bad CSV."""


class ScenarioError(TwinError):
    """A scenario or strain TOML that is malformed: unknown or missing keys, wrong types."""


class DataError(TwinError):
    """Batch records that are malformed: missing columns, NaN, time not increasing, ..."""


class ParameterError(TwinError):
    """A model parameter outside its physical range, or unknown."""


class SolverError(TwinError):
    """The ODE solver failed; the message says which batch and what to change."""
