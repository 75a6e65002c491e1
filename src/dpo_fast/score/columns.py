"""Column roles, the ``columns=`` mapping, and row validation.

Which input column feeds which :func:`dpo_fast.preference_loss` argument
(:func:`resolve_columns`), the column values of one batch as NumPy arrays with what makes
rows invalid (:class:`ColumnValues`), and the searches for invalid rows. Shared by the
single-machine scorer and :mod:`dpo_fast.dask`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dpo_fast.losses import LENGTH_LOSS_TYPES
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError
from dpo_fast.score.options import PER_PAIR_PARAMETERS

__all__ = ["ROLES", "ColumnRole", "ColumnValues", "check_added_columns", "describe_invalid",
           "first_invalid", "invalid_rows", "parse_column_map", "resolve_columns",
           "validate_rows"]


@dataclass(frozen=True)
class ColumnRole:
    """One per-pair input of :func:`dpo_fast.preference_loss`, read from a column.

    Attributes
    ----------
    name : str
        What ``--columns NAME=COLUMN`` (``columns={NAME: COLUMN}``) calls it.
    default_column : str
        The column used when no mapping is given (TRL's names for the log-probs).
    parameter : str
        The ``preference_loss`` argument it feeds.
    logps : bool
        Log-probabilities are read as float64; other roles (lengths) keep integer types.
    """

    name: str
    default_column: str
    parameter: str
    logps: bool


ROLES = (
    ColumnRole("chosen", "chosen_logps", "chosen_logps", True),
    ColumnRole("rejected", "rejected_logps", "rejected_logps", True),
    ColumnRole("ref_chosen", "ref_chosen_logps", "ref_chosen_logps", True),
    ColumnRole("ref_rejected", "ref_rejected_logps", "ref_rejected_logps", True),
    ColumnRole("chosen_length", "chosen_length", "chosen_lengths", False),
    ColumnRole("rejected_length", "rejected_length", "rejected_lengths", False),
)
_REFERENCE_ROLES = ("ref_chosen", "ref_rejected")
_REQUIRED_ROLES = ("chosen", "rejected")


def parse_column_map(columns: Mapping[str, str] | str | Sequence[str] | None) -> dict[str, str]:
    """``{"chosen": "col"}``, ``"chosen=col,rejected=col2"`` or a list of such strings."""
    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        return {str(k): str(v) for k, v in columns.items()}
    texts = [columns] if isinstance(columns, str) else list(columns)
    mapping: dict[str, str] = {}
    for text in texts:
        for item in text.split(","):
            if not item.strip():
                continue
            role, sep, column = item.partition("=")
            if not sep or not role.strip() or not column.strip():
                raise ScoreUsageError(f"--columns wants ROLE=COLUMN items, got {item!r}")
            mapping[role.strip()] = column.strip()
    return mapping


def _roles_for(mapping: Mapping[str, str]) -> list[ColumnRole]:
    """ROLES plus a role for every other ``NAME`` in the mapping that names a per-pair array
    parameter of preference_loss (``NAME`` or ``NAME + "s"``, e.g. ``weights``)."""
    known = {role.name: role for role in ROLES}
    arrays = set(PER_PAIR_PARAMETERS)
    roles = list(ROLES)
    for name in mapping:
        if name in known:
            continue
        parameter = name if name in arrays else name + "s" if name + "s" in arrays else None
        if parameter is None:
            raise ScoreUsageError(
                f"--columns {name}=...: unknown role {name!r}; roles are "
                f"{', '.join(r.name for r in ROLES)} and the per-pair parameters of "
                f"preference_loss ({', '.join(sorted(arrays))})")
        roles.append(ColumnRole(name, name, parameter, False))
    return roles


def resolve_columns(available: Sequence[str],
                    columns: Mapping[str, str] | str | Sequence[str] | None = None,
                    reference_free: bool = False, source: str | None = None,
                    loss_type: str | Sequence[str] | None = None
                    ) -> list[tuple[ColumnRole, str]]:
    """Which column feeds which preference_loss argument.

    Parameters
    ----------
    available : sequence of str
        The input's column names.
    columns : mapping or str, optional
        ``{role: column}`` overrides, or ``"role=column,..."``. Roles: ``chosen``,
        ``rejected``, ``ref_chosen``, ``ref_rejected``, ``chosen_length``,
        ``rejected_length`` and any per-pair parameter of ``preference_loss``.
    reference_free : bool, default False
        Score against a zero reference: the reference columns are not read. Without it a
        missing reference column is an error, never a silent reference-free run.
    source : str, optional
        Named in error messages.
    loss_type : str or sequence of str, optional
        The loss type(s) to be computed: the length columns present under their default
        names are used only if one of them reads lengths (``LENGTH_LOSS_TYPES``), so that a
        column the loss ignores is neither read nor validated. None: used whenever present.

    Returns
    -------
    list of (ColumnRole, str)
        ``chosen`` and ``rejected`` first, then the reference columns (unless
        reference-free), then the optional ones that are present or mapped.

    Raises
    ------
    ScoreUsageError
        An unknown role, or reference columns mapped with ``reference_free``.
    ScoreDataError
        A column that is required (or explicitly mapped) is not in the input; the message
        suggests the input's closest column name when there is one.
    """
    mapping = parse_column_map(columns)
    names = list(available)
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    reads_lengths = types is None or bool(set(types) & LENGTH_LOSS_TYPES)
    resolved = []
    for role in _roles_for(mapping):
        explicit = role.name in mapping
        if not role.logps and not explicit and not reads_lengths:
            continue
        if role.name in _REFERENCE_ROLES and reference_free:
            if explicit:
                raise ScoreUsageError(f"--columns {role.name}=... contradicts --reference-free")
            continue
        column = mapping.get(role.name, role.default_column)
        if names.count(column) > 1:
            raise ScoreDataError(f"the input has {names.count(column)} columns of this name; "
                                 "rename or drop the copies", file=source, column=column)
        if column not in names:
            if not explicit and role.name not in _REQUIRED_ROLES + _REFERENCE_ROLES:
                continue  # optional default column (lengths) absent: fine
            hint = _missing_column_hint(role, column, explicit, names, mapping, resolved)
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ScoreDataError(f"column not found (columns: {shown}){hint}", file=source,
                                 column=column)
        resolved.append((role, column))
    return resolved


def _missing_column_hint(role: ColumnRole, column: str, explicit: bool, names: list[str],
                         mapping: Mapping[str, str], resolved: list) -> str:
    """The fix for a missing column: the input's closest column name when there is one (a
    typo, in the data or in --columns), else how to map it; --reference-free only for a
    default reference column with no near namesake (dropping the reference is not the fix
    for a typo)."""
    taken = {c for _, c in resolved} | set(mapping.values()) | {
        r.default_column for r in ROLES if r.name != role.name}
    candidates = [name for name in names if name not in taken]
    close = difflib.get_close_matches(column, candidates, n=1, cutoff=0.75)
    if close:
        return (f"; did you mean {close[0]!r}? Map it with --columns "
                f"{role.name}={close[0]}")
    hint = f"; map it with --columns {role.name}=NAME"
    if role.name in _REFERENCE_ROLES and not explicit:
        hint += ", or pass --reference-free to score against a zero reference"
    return hint


def check_added_columns(existing: Sequence[str], added: Sequence[str], replace: bool,
                        where: str, fix: str, file: str | None = None) -> list[str]:
    """The columns of ``existing`` named like the ``added`` ones (to be replaced); raises
    ScoreDataError for them unless ``replace``. ``where`` names the input (``"the input"``,
    ``"the DataFrame"``), ``fix`` the switch that allows replacing them."""
    clashes = [name for name in added if name in existing]
    if clashes and not replace:
        raise ScoreDataError(f"{where} already has column(s) {', '.join(clashes)}; pass "
                             f"{fix} to overwrite them", file=file)
    return clashes


_REASONS = ("null", "non-numeric", "non-boolean", "non-finite", "invalid-length",
            "invalid-weight", "malformed")
# preference_loss's lower bounds on per-pair values: a row below one is a bad row (reported
# at its row, or skipped), not a refused batch.
_LOWER_BOUNDS = {"chosen_lengths": (1, "invalid-length"), "rejected_lengths": (1, "invalid-length"),
                 "weights": (0, "invalid-weight")}

@dataclass
class ColumnValues:
    """One role's column as NumPy values, with what makes rows invalid.

    ``values`` holds a placeholder (0, or False for a label) where ``null``, ``non_numeric``
    or ``non_boolean`` (a label that is not true/false) is set. ``raw(i)`` gives the original
    value of row ``i`` for messages.
    """

    role: ColumnRole
    column: str
    values: np.ndarray
    null: np.ndarray | None = None
    non_numeric: np.ndarray | None = None
    raw: Callable[[int], Any] = lambda i: None
    non_boolean: np.ndarray | None = None

    def problems(self, check_finite: bool) -> list[tuple[str, np.ndarray]]:
        out = [(name, mask) for name, mask in (("null", self.null),
                                                ("non-numeric", self.non_numeric),
                                                ("non-boolean", self.non_boolean))
               if mask is not None and mask.any()]
        if check_finite and self.values.dtype.kind == "f":
            bad = ~np.isfinite(self.values)
            if bad.any():
                out.append(("non-finite", bad))
        bound = _LOWER_BOUNDS.get(self.role.parameter)
        if bound is not None:
            low = self.values < bound[0]  # e.g. an empty completion's length 0
            for mask in (self.null, self.non_numeric):
                if mask is not None:
                    low &= ~mask
            if low.any():
                out.append((bound[1], low))
        return out


def describe_invalid(reason: str, value: Any) -> str:
    if reason == "null":
        return "null (missing value)"
    if reason == "non-numeric":
        return f"{value!r} is not a number"
    if reason == "non-finite":
        return f"{value!r} is not finite"
    if reason == "non-boolean":
        return (f"{value!r} is not a boolean label (true: desirable, false: undesirable); "
                "write the labels as booleans")
    if reason == "invalid-length":
        return f"{value!r} is not a token count (lengths must be >= 1)"
    if reason == "invalid-weight":
        return f"{value!r} is not a weight (weights must be >= 0)"
    return str(value)


def first_invalid(columns: Sequence[ColumnValues]) -> tuple[int, ColumnValues, str] | None:
    """The first invalid row (smallest row; then role order): (row, column, reason)."""
    best = None
    for col in columns:
        for reason, mask in col.problems(check_finite=True):
            row = int(np.argmax(mask))
            if best is None or row < best[0]:
                best = (row, col, reason)
    return best


def invalid_rows(columns: Sequence[ColumnValues]) -> tuple[np.ndarray | None, dict[str, int]]:
    """Mask of the rows with any problem, and how many rows each reason accounts for (a row
    counts once, under its first problem in role order)."""
    mask = None
    counts: dict[str, int] = {}
    for col in columns:
        for reason, bad in col.problems(check_finite=True):
            new = bad if mask is None else bad & ~mask
            counts[reason] = counts.get(reason, 0) + int(np.count_nonzero(new))
            mask = bad.copy() if mask is None else mask | bad
    return mask, counts


def validate_rows(columns: list[ColumnValues], on_invalid: str,
                  locate: Callable[[int], tuple[str | None, int | None]]):
    """(kept-rows mask or None, kept columns, skipped counts, (row, message) or None): the
    first invalid row raises ScoreDataError (``on_invalid="error"``) or every invalid row is
    dropped and counted (``"skip"``), in the paired and the unpaired scorer alike."""
    first = first_invalid(columns)
    if first is None:
        return None, columns, {}, None
    row, col, reason = first
    file, file_row = locate(row)
    error = ScoreDataError(describe_invalid(reason, col.raw(row)), file=file, row=file_row,
                           column=col.column)
    if on_invalid == "error":
        raise error
    mask, counts = invalid_rows(columns)
    keep = ~mask
    kept = [ColumnValues(c.role, c.column, c.values[keep]) for c in columns]
    return keep, kept, counts, (row, str(error))
