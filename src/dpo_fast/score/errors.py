"""The scorer's two errors, and its optional dependency.

:class:`ScoreUsageError` (options that cannot be honoured) and :class:`ScoreDataError` (data
that cannot be scored) are what the ``dpo-fast score`` command maps to its exit codes.
"""

from __future__ import annotations

from dpo_fast import _optional

__all__ = ["ScoreDataError", "ScoreUsageError", "require_pyarrow"]


class ScoreUsageError(ValueError):
    """Options that cannot be honoured (bad value, unknown format, unsupported combination).

    ``dpo-fast score`` exits with status 2 on it.
    """


class ScoreDataError(ValueError):
    """The input data cannot be scored: a missing input file, a missing or non-numeric
    column, a null, NaN or inf, a malformed file, an output that cannot be written.
    ``dpo-fast score`` exits with status 1 on it.

    Attributes
    ----------
    file : str or None
        The input file (or ``"partition N"`` for a Dask partition).
    row : int or None
        0-based data row within that file (header lines are not counted), when it is known.
    column : str or None
        The column name.
    reason : str
        What is wrong.
    """

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column, self.reason = file, row, column, reason
        parts = [file] if file else []
        if row is not None:
            parts.append(f"row {row}")
        if column is not None:
            parts.append(f"column {column!r}")
        super().__init__(": ".join([*parts, reason]))


def require_pyarrow():
    """Import pyarrow or explain how to get it (it is an optional dependency)."""
    pyarrow = _optional.require("pyarrow", needed_by="dpo-fast score", extra="cli")
    if int(pyarrow.__version__.split(".")[0]) < 14:
        raise ImportError(f"dpo-fast score needs pyarrow >= 14, found {pyarrow.__version__}: "
                          "pip install -U pyarrow")
    return pyarrow

