"""Score preference datasets of any size: ``dpo-fast score`` and :func:`score_dataset`.

Teams store policy and reference log-probs next to their preference pairs (Parquet, Arrow
IPC/Feather, CSV or JSON Lines). This module streams such a file, or a directory of them, in
record batches through :func:`dpo_fast.preference_loss`, optionally writes every input row with
its implicit rewards, margin and loss added, and returns a summary: the loss, TRL's metrics and
the margin distribution.

This is an adapter: it imports the core (``dpo_fast.losses``) and pyarrow, the core never
imports it, and pyarrow / tqdm are imported only when a function here needs them, so
``import dpo_fast`` (and ``dpo-fast bench``) work without them.

Reading and memory
------------------
A directory is listed with pyarrow.dataset (names starting with ``.`` or ``_`` are skipped);
each file is then streamed by its format's own reader: ``ParquetFile.iter_batches`` (about
one row group of the columns read in memory), Arrow IPC record batches (one batch as written
in the file: pyarrow and pandas write 64Ki-row batches), pyarrow's streaming CSV reader, and
JSON Lines in chunks of whole lines. (The pyarrow.dataset scanner itself reads ahead without a
tight bound when the consumer is slower than the disk: measured, 277-347 MB of Arrow memory
for a 374 MB Parquet file.) Without ``out`` only the columns scored are read.

Peak memory does not grow with the input. It is about ``WRITE_QUEUE_DEPTH + 3`` batches of
``batch_rows`` rows (the batch being scored, those queued for the writer thread, the one
being written, reused output arrays), plus one or two input row groups (the batches being
written may still point into the previous one), plus the quantile state (an 8 MiB histogram,
a 1 MiB bin table and at most ``QUANTILE_BUDGET`` margins, 32 MiB). Measured with
``bench/bench_score.py`` at the default batch size (2 cores, Parquet with 1Mi-row row
groups, ``--out`` Parquet, VmHWM of the process): 359-391 MiB for 10M rows, 376-384 MiB for
20M rows, 358-380 MiB for 40M rows (three runs each); pyarrow alone reading and writing the
same files peaks at 290, 317 and 314 MiB. Smaller files peak lower (295 MiB for 1.25M rows)
because fewer row groups and batches are in flight at once.

Exactness of the summary
------------------------
* Sums (loss, rewards, margins, log-probs) are accumulated per batch in float64 (NumPy's
  pairwise summation: relative error about ``log2(batch_rows) * 2**-53`` of the sum of
  magnitudes) and the per-batch sums are combined *exactly* (as integers in units of
  ``2**-1074``): the result does not depend on the order in which batches or Dask partitions
  are combined (how the rows are cut into batches moves it by about 1e-16 relative), and
  means are the correctly rounded quotient of that exact total.
* Counts (pairs, accuracies, negative margins) are exact integers.
* Margin quantiles are exact, equal to ``numpy.quantile(margins, q)`` (linear interpolation)
  bit for bit, computed with bounded memory: a histogram of the margins' bit patterns (2**20
  bins) finds the bin holding each needed order statistic, and the values of the bins around
  the running estimate are kept as they stream by. When a needed bin was not kept (the
  distribution drifted along the file, or a bin holds more than ``QUANTILE_BUDGET`` values)
  the input is read once more and only that bin's values are collected (or its histogram
  refined by 20 more bits, at most 3 times). ``ScoreSummary.quantile_passes`` reports how many
  extra passes were made (0 in the usual case).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import queue
import re
import secrets
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dpo_fast import _optional
from dpo_fast import losses as _losses
from dpo_fast.losses import preference_loss

__all__ = [
    "ADDED_COLUMNS",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_QUANTILES",
    "GRAD_COLUMNS",
    "INPUT_FORMATS",
    "OUTPUT_FORMATS",
    "QUANTILE_BUDGET",
    "ROLES",
    "ColumnRole",
    "LossOption",
    "PartialSummary",
    "ScoreDataError",
    "ScoreSummary",
    "ScoreUsageError",
    "add_arguments",
    "loss_options",
    "resolve_columns",
    "run_from_args",
    "score_dataset",
]

DEFAULT_BATCH_ROWS = 1 << 18
DEFAULT_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
# Batches handed to the writer thread but not yet written. Two keep the writer busy while the
# next batch is scored, without holding more memory than that needs.
WRITE_QUEUE_DEPTH = 2
# Largest number of margins the quantile search holds in memory (8 bytes each: 32 MiB).
QUANTILE_BUDGET = 1 << 22
ADDED_COLUMNS = ("chosen_reward", "rejected_reward", "margin", "loss")
GRAD_COLUMNS = ("grad_chosen", "grad_rejected")
# Loss types whose value for one pair depends on the other pairs of the batch: scoring record
# batches (or Dask partitions) one at a time would not compute them as one call over the whole
# data does. The core may declare its own set (BATCH_COUPLED_LOSS_TYPES); these are the names
# TRL uses for them.
_KNOWN_BATCH_COUPLED = frozenset({"aot", "aot_unpaired", "sft"})

# File formats: name -> file name endings (a compression suffix may follow for text formats).
INPUT_FORMATS: Mapping[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "ipc": (".arrow", ".feather", ".ipc", ".arrows"),
    "csv": (".csv",),
    "jsonl": (".jsonl", ".ndjson", ".json"),
}
OUTPUT_FORMATS = INPUT_FORMATS
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br")
_FORMAT_ALIASES = {"feather": "ipc", "arrow": "ipc", "json": "jsonl", "ndjson": "jsonl",
                   "pq": "parquet"}

_EXIT_USAGE = 2
_EXIT_DATA = 1


# --------------------------------------------------------------------------------------------
# Errors: the CLI maps them to its exit codes (usage 2, data 1).
# --------------------------------------------------------------------------------------------

class ScoreUsageError(ValueError):
    """Options that cannot be honoured (bad value, unknown format, unsupported combination).

    ``dpo-fast score`` exits with status 2 on it.
    """


class ScoreDataError(ValueError):
    """The input data cannot be scored: a missing or non-numeric column, a null, NaN or inf,
    a malformed file. ``dpo-fast score`` exits with status 1 on it.

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


def _require_pyarrow():
    """Import pyarrow or explain how to get it (it is an optional dependency)."""
    pyarrow = _optional.require("pyarrow", needed_by="dpo-fast score", extra="cli")
    if int(pyarrow.__version__.split(".")[0]) < 14:
        raise ImportError(f"dpo-fast score needs pyarrow >= 14, found {pyarrow.__version__}: "
                          "pip install -U pyarrow")
    return pyarrow


# --------------------------------------------------------------------------------------------
# preference_loss parameters, found by introspection so that new ones need no change here.
# --------------------------------------------------------------------------------------------

# Not options: the output buffers, and the finiteness switch (the scorer validates rows
# itself, see on_invalid).
_NOT_OPTIONS = frozenset({"out", "check_finite"})
# Parameters whose command-line flag is not simply --name-with-dashes.
_FLAG_NAMES = {"compute_grad": "--grad", "n_threads": "--threads"}
# Passed to the summary, not to the per-batch calls (which always reduce with "none").
_SUMMARY_PARAMETERS = frozenset({"reduction"})
_SCALAR_TYPES = {"float": float, "int": int, "str": str, "bool": bool, "Real": float,
                 "numbers.Real": float}


@dataclass(frozen=True)
class LossOption:
    """A keyword parameter of :func:`dpo_fast.preference_loss` as a command-line option.

    Attributes
    ----------
    parameter : str
        The keyword of ``preference_loss``.
    flag : str
        The option, e.g. ``"--label-smoothing"``.
    kind : str
        ``"float"``, ``"int"``, ``"str"``, ``"bool"`` (``--flag/--no-flag``), or
        ``"list[float]"``, ``"list[str]"`` (comma-separated), or ``"str|list[str]"``,
        ``"float|list[float]"`` (one value or a comma-separated list).
    default : object
        ``preference_loss``'s default, for the help text only: an option not given is not
        passed, so the core's default applies.
    help : str
        The first sentence of the parameter's description in the docstring.
    """

    parameter: str
    flag: str
    kind: str
    default: Any
    help: str

    @property
    def dest(self) -> str:
        """The attribute name argparse stores the value under."""
        return "loss_" + self.parameter

    def parse(self, text: str) -> Any:
        """Convert one command-line value (raises argparse.ArgumentTypeError)."""
        base = re.sub(r"^list\[|\]$", "", self.kind.split("|")[-1])
        convert = _SCALAR_TYPES[base]
        try:
            if "list[" not in self.kind:
                return convert(text)
            items = [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {base}: {text!r}") from None
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        # "str|list[str]": one item is passed as a scalar, several as a list.
        return items[0] if "|" in self.kind and len(items) == 1 else items


def _annotation_kind(annotation: Any, default: Any) -> str | None:
    """The option kind of a parameter annotation (strings, thanks to PEP 563), or None when it
    is nothing a command line can express (an array, a mapping)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if annotation is inspect.Parameter.empty or text in ("", "Any"):
        if isinstance(default, bool):
            return "bool"
        for name, kind in (("int", int), ("float", float), ("str", str)):
            if type(default) is kind:
                return name
        return None
    text = text.replace("Optional[", "").replace("Union[", "")
    parts = [p.strip() for p in re.split(r"\||,(?![^\[]*\])", text.rstrip("]"))
             if p.strip() and p.strip() != "None"]
    scalars, lists = set(), set()
    for part in parts:
        match = re.fullmatch(r"(?:typing\.)?(?:Sequence|list|List|tuple|Tuple|Iterable)"
                             r"\[\s*([\w.]+)\s*(?:,\s*\.\.\.)?\s*\]?", part)
        if match and match.group(1) in _SCALAR_TYPES:
            lists.add(_SCALAR_TYPES[match.group(1)].__name__)
        elif part in _SCALAR_TYPES:
            scalars.add(_SCALAR_TYPES[part].__name__)
        else:
            return None
    if scalars == {"int", "float"}:
        scalars = {"float"}
    if len(scalars) > 1 or len(lists) > 1:
        return None
    if lists:
        (item,) = lists
        if scalars and scalars != {item}:
            return None
        return f"{item}|list[{item}]" if scalars else f"list[{item}]"
    return next(iter(scalars)) if scalars else None


def _parameter_docs(doc: str | None) -> dict[str, str]:
    """First sentence of each parameter's description in a NumPy-style docstring."""
    if not doc:
        return {}
    text = inspect.cleandoc(doc)
    match = re.search(r"^Parameters\n-+\n(.*?)(?:\n\n[A-Z][A-Za-z ]*\n-+\n|\Z)", text,
                      flags=re.S | re.M)
    if not match:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in match.group(1).splitlines():
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(":")[0].split(",")]
            for name in names:
                docs[name] = ""
        elif line.strip():
            for name in names:
                docs[name] = (docs[name] + " " + line.strip()).strip()
    return {name: re.split(r"(?<=\.)\s", desc, maxsplit=1)[0] for name, desc in docs.items()}


def _signature() -> inspect.Signature:
    return inspect.signature(preference_loss)


def loss_options() -> tuple[LossOption, ...]:
    """The keyword parameters of :func:`dpo_fast.preference_loss` that ``dpo-fast score``
    offers as options, read from its signature and docstring.

    Keyword-only parameters with a scalar (or list-of-scalar) annotation become options;
    ``out`` and ``check_finite`` do not (outputs are written by the scorer, rows are validated
    by it); per-pair arrays are columns (``--columns``), not options.

    Returns
    -------
    tuple of LossOption
    """
    docs = _parameter_docs(preference_loss.__doc__)
    options = []
    for param in _signature().parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.name in _NOT_OPTIONS:
            continue
        kind = _annotation_kind(param.annotation, param.default)
        if kind is None:
            continue
        flag = _FLAG_NAMES.get(param.name, "--" + param.name.replace("_", "-"))
        options.append(LossOption(param.name, flag, kind, param.default,
                                  docs.get(param.name, "")))
    return tuple(options)


def effective_parameters(given: Mapping[str, Any]) -> dict[str, Any]:
    """The loss parameters in force: preference_loss's defaults updated with ``given``."""
    effective = {option.parameter: option.default for option in loss_options()}
    effective.update(given)
    return effective


def _array_parameters() -> set[str]:
    """Parameters of preference_loss that take per-pair arrays (candidates for columns)."""
    option_names = {opt.parameter for opt in loss_options()}
    return {p.name for p in _signature().parameters.values()
            if p.name not in option_names and p.name not in _NOT_OPTIONS}


def _batch_coupled_types() -> frozenset[str]:
    return frozenset(getattr(_losses, "BATCH_COUPLED_LOSS_TYPES", _KNOWN_BATCH_COUPLED))


def _loss_type_of(params: Mapping[str, Any]) -> str | Sequence[str]:
    """The loss type(s) a run computes: its ``loss_type`` parameter or preference_loss's."""
    return params.get("loss_type", _signature().parameters["loss_type"].default) or ()


def _check_loss_params(params: Mapping[str, Any], roles: Sequence[ColumnRole],
                       where: str) -> str:
    """Validate the keyword parameters once, on a one-pair dummy call, before any data is
    read; return the reduction for the summary. Raises ScoreUsageError."""
    known = set(_signature().parameters)
    for name in params:
        if name in _NOT_OPTIONS or name not in known or name in _array_parameters():
            raise ScoreUsageError(f"{where} got an unexpected parameter {name!r}; "
                                  "per-pair arrays are columns (see columns=)")
    defaults = {p.name: p.default for p in _signature().parameters.values()}
    loss_types = _loss_type_of(params)
    names = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    coupled = sorted(set(names) & _batch_coupled_types())
    if coupled:
        raise ScoreUsageError(
            f"loss_type {coupled[0]!r} couples the pairs of a batch (each pair's loss depends "
            f"on the others), so {where} cannot compute it exactly from record batches or "
            "partitions scored one at a time; call dpo_fast.preference_loss on the whole "
            "arrays instead")
    reduction = params.get("reduction", defaults.get("reduction", "mean"))
    if reduction not in ("mean", "sum"):
        raise ScoreUsageError(
            f"reduction must be 'mean' or 'sum' for the summary, got {reduction!r} (the "
            "per-pair losses are the 'loss' column of the output)")
    dummy: dict[str, Any] = {}
    for role in roles[2:]:
        dummy[role.parameter] = np.array([-1.5]) if role.logps else np.array([1])
    try:
        preference_loss(np.array([-1.0]), np.array([-2.0]), **dummy, **params)
    except (TypeError, ValueError) as exc:
        raise ScoreUsageError(str(exc)) from None
    return reduction


# --------------------------------------------------------------------------------------------
# Column roles: which input column feeds which preference_loss argument.
# --------------------------------------------------------------------------------------------

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


def _parse_column_map(columns: Mapping[str, str] | str | Sequence[str] | None) -> dict[str, str]:
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
    parameter of preference_loss (``NAME`` or ``NAME + "s"``), so new ones need no change."""
    known = {role.name: role for role in ROLES}
    arrays = _array_parameters()
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
        An unknown role, a role this version of preference_loss does not take (per-pair
        lengths before they exist), reference columns mapped with ``reference_free``.
    ScoreDataError
        A column that is required (or explicitly mapped) is not in the input.
    """
    mapping = _parse_column_map(columns)
    accepted = set(_signature().parameters)
    names = list(available)
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    reads_lengths = types is None or bool(set(types) & _losses.LENGTH_LOSS_TYPES)
    resolved = []
    for role in _roles_for(mapping):
        explicit = role.name in mapping
        if not role.logps and not explicit and not reads_lengths:
            continue
        if role.parameter not in accepted:
            if explicit:
                raise ScoreUsageError(
                    f"--columns {role.name}=...: preference_loss in this version of dpo_fast "
                    f"takes no {role.parameter!r} argument, so that column cannot be used")
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
            hint = f"; map it with --columns {role.name}=NAME"
            if role.name in _REFERENCE_ROLES:
                hint += ", or pass --reference-free to score against a zero reference"
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ScoreDataError(f"column not found (columns: {shown}){hint}", file=source,
                                 column=column)
        resolved.append((role, column))
    return resolved


# --------------------------------------------------------------------------------------------
# Column values and row validation (shared with dpo_fast.dask).
# --------------------------------------------------------------------------------------------

_REASONS = ("null", "non-numeric", "non-finite", "invalid-length", "invalid-weight",
            "malformed")
# preference_loss's lower bounds on per-pair values: a row below one is a bad row (reported
# at its row, or skipped), not a refused batch.
_LOWER_BOUNDS = {"chosen_lengths": (1, "invalid-length"), "rejected_lengths": (1, "invalid-length"),
                 "weights": (0, "invalid-weight")}
_NUMBER_PATTERN = (r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
                   r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])$")


@dataclass
class ColumnValues:
    """One role's column as NumPy values, with what makes rows invalid.

    ``values`` holds a placeholder (0) where ``null`` or ``non_numeric`` is set. ``raw(i)``
    gives the original value of row ``i`` for messages.
    """

    role: ColumnRole
    column: str
    values: np.ndarray
    null: np.ndarray | None = None
    non_numeric: np.ndarray | None = None
    raw: Callable[[int], Any] = lambda i: None

    def problems(self, check_finite: bool) -> list[tuple[str, np.ndarray]]:
        out = [(name, mask) for name, mask in (("null", self.null),
                                                ("non-numeric", self.non_numeric))
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


def _describe(reason: str, value: Any) -> str:
    if reason == "null":
        return "null (missing value)"
    if reason == "non-numeric":
        return f"{value!r} is not a number"
    if reason == "non-finite":
        return f"{value!r} is not finite"
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


def _unparsable(pa, pc, strings) -> np.ndarray:
    """Mask of the strings Arrow cannot cast to float64 (nulls excluded)."""
    count = len(strings)
    bad = np.zeros(count, dtype=bool)
    # Rows a conservative number pattern rejects are the candidates; each is confirmed by
    # Arrow itself (the pattern is a guide, Arrow's parser decides), by bisection, so a few bad
    # values in a long column cost a few dozen casts.
    matches = pc.match_substring_regex(strings, _NUMBER_PATTERN)
    suspects = np.flatnonzero(~_numpy_bools(pa, matches.fill_null(True)))
    good = np.flatnonzero(_numpy_bools(pa, matches.fill_null(False)))
    try:
        pc.cast(strings.take(_to_arrow(pa, good)), pa.float64())
    except (pa.ArrowInvalid, ValueError):
        suspects = np.arange(count)
    stack = [suspects]
    while stack:
        rows = stack.pop()
        if rows.size == 0:
            continue
        try:
            pc.cast(strings.take(_to_arrow(pa, rows)), pa.float64())
            continue
        except (pa.ArrowInvalid, ValueError):
            pass
        if rows.size == 1:
            bad[rows[0]] = strings[int(rows[0])].is_valid
            continue
        half = rows.size // 2
        stack += [rows[half:], rows[:half]]
    return bad


def _numpy_view(pa, array) -> np.ndarray:
    """A null-free primitive Arrow array as NumPy, zero-copy. (Array.to_numpy imports pandas
    the first time, which costs 0.14 s of start-up.)"""
    kind = array.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        code = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) \
            else "u"
        dtype = np.dtype(f"{code}{kind.bit_width // 8}")
        return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array) + array.offset
                             )[array.offset:]
    return array.to_numpy(zero_copy_only=False)


def _numpy_bools(pa, array) -> np.ndarray:
    """A null-free Arrow boolean array as a NumPy bool array (without importing pandas)."""
    bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little", count=len(array) + array.offset
                         )[array.offset:].astype(bool)


def _to_arrow(pa, values: np.ndarray):
    """A 1-D NumPy array (float, int or bool) as an Arrow array, zero-copy where the layout
    allows. (pyarrow.array imports pandas the first time, 0.15 s of start-up.)"""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), values.size, [None, pa.py_buffer(bits)])
    kind = {"f": pa.float64(), "i": pa.int64(), "u": pa.uint64()}[values.dtype.kind]
    if values.dtype.itemsize != 8:
        values = values.astype(values.dtype.kind + "8")
    return pa.Array.from_buffers(kind, values.size, [None, pa.py_buffer(values)])


def arrow_values(array, role: ColumnRole, column: str, source: str | None) -> ColumnValues:
    """An Arrow array as :class:`ColumnValues`: float64 for log-probs, strings parsed as
    numbers (CSV), nulls and unparsable strings masked. Raises ScoreDataError for a column
    type that holds no numbers at all (booleans, timestamps, lists, ...)."""
    pa = _require_pyarrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    out = ColumnValues(role, column, np.empty(0), raw=lambda i, a=array: a[i].as_py())
    if kind == pa.float64() and not array.null_count:
        out.values = _numpy_view(pa, array)  # the common case: zero-copy, nothing to check
        return out
    # (Imported here: pyarrow.compute costs 0.04 s of start-up the common case never needs.)
    import pyarrow.compute as pc

    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
        out.raw = lambda i, a=array: a[i].as_py()
    if array.null_count:
        out.null = _numpy_bools(pa, array.is_null())
    if pa.types.is_null(kind):
        out.values = np.zeros(len(array))
        return out
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        if out.null is not None:
            array = array.fill_null(0)
        if role.logps or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)) \
                or kind == pa.float16():
            if kind != pa.float64():
                # Integers beyond 2**53 become the nearest double, as in NumPy and pandas
                # (and dpo_fast.dask), rather than an error.
                array = pc.cast(array, pa.float64(), safe=False)
        out.values = _numpy_view(pa, array)
        return out
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
            str(kind) == "string_view":
        # An empty field (CSV) is a missing value, not a malformed number.
        empty = pc.equal(pc.utf8_trim_whitespace(array), "").fill_null(False)
        if pc.any(empty).as_py():
            empty = _numpy_bools(pa, empty)
            out.null = empty if out.null is None else out.null | empty
            array = pc.if_else(_to_arrow(pa, empty), pa.scalar(None, array.type), array)
        strings = array.fill_null("0") if out.null is not None else array
        try:
            try:
                numbers = pc.cast(strings, pa.float64())
            except (pa.ArrowInvalid, ValueError):
                # " -2" is a number to pandas (dpo_fast.dask) too: trimmed only when needed.
                strings = pc.utf8_trim_whitespace(strings)
                array = pc.utf8_trim_whitespace(array)
                numbers = pc.cast(strings, pa.float64())
        except (pa.ArrowInvalid, ValueError):
            bad = _unparsable(pa, pc, array)
            out.non_numeric = bad
            replace = bad | out.null if out.null is not None else bad
            numbers = pc.cast(pc.if_else(_to_arrow(pa, replace), "0", strings), pa.float64())
        values = _numpy_view(pa, numbers)
        if not role.logps and values.size and np.all(values == np.round(values)) \
                and np.all(np.abs(values) < 2.0**53):
            values = values.astype(np.int64)  # lengths written as text stay integers
        out.values = values
        return out
    raise ScoreDataError(f"has type {kind}, which holds no numbers (every row)", file=source,
                         column=column)


# --------------------------------------------------------------------------------------------
# Exact combination of partial sums, and the summary state.
# --------------------------------------------------------------------------------------------

_UNITS = 1074  # every finite double is an integer multiple of 2**-1074


class ExactSum:
    """An exact sum of floats, kept as an integer number of ``2**-1074``.

    Adding partial sums in any order gives the same total; :meth:`value` rounds it (divided
    by a count, for means) once, correctly.
    """

    __slots__ = ("_special", "_total")

    def __init__(self) -> None:
        self._total = 0
        self._special = 0.0  # inf/nan partials: float arithmetic's own rules

    def add(self, value: float) -> None:
        value = float(value)
        if math.isfinite(value):
            numerator, denominator = value.as_integer_ratio()
            self._total += numerator << (_UNITS - denominator.bit_length() + 1)
        else:
            self._special += value

    def merge(self, other: ExactSum) -> None:
        self._total += other._total
        self._special += other._special

    def value(self, divisor: int = 1) -> float:
        """The total divided by ``divisor``, rounded once to the nearest double."""
        if self._special != 0.0 or math.isnan(self._special):
            return self._special
        try:
            return self._total / (divisor << _UNITS)
        except OverflowError:
            return math.copysign(math.inf, self._total)

    def __getstate__(self):
        return (self._total, self._special)

    def __setstate__(self, state):
        self._total, self._special = state


# Margins are ranked through uint64 keys whose order is the order of the doubles.
_HIST_BITS = 20
_HIST_SHIFT = np.uint64(64 - _HIST_BITS)
_SIGN = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)


def _order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64 ``values`` (negative: all bits flipped;
    positive: the sign bit flipped)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return bits ^ ((bits >> np.uint64(63)) * _LOW63 | _SIGN)


def _key_to_float(key: int) -> float:
    bits = key ^ (1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def _needed_ranks(levels: Sequence[float], count: int) -> list[int]:
    ranks = set()
    for q in levels:
        virtual = (count - 1) * q
        low = math.floor(virtual)
        ranks.add(min(low, count - 1))
        if low < count - 1:
            ranks.add(low + 1)
    return sorted(ranks)


def _interpolate(levels: Sequence[float], count: int, order_stat: Callable[[int], float]
                 ) -> dict[float, float]:
    """numpy.quantile's "linear" method, operation for operation (same bits)."""
    out = {}
    for q in levels:
        virtual = (count - 1) * q
        if virtual >= count - 1:
            out[q] = order_stat(count - 1)
            continue
        low = math.floor(virtual)
        gamma = virtual - low
        a, b = order_stat(low), order_stat(low + 1)
        diff = b - a
        out[q] = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return out


class MarginSketch:
    """Mergeable state for exact margin quantiles in bounded memory.

    ``hist`` counts margins per 20-bit key prefix ("bin"). A bin is *kept* (all its values
    held in ``keys``) when it lay in the rank window around a needed order statistic (``±6``
    standard deviations of a sample quantile, from the counts so far) at the moment it
    received its first value: so a kept bin is complete. Kept bins are dropped, farthest from
    the needed ranks first, to stay within ``budget`` values.

    Per batch this costs a few passes over the batch (``np.add.at`` into the histogram, one
    table lookup); the windows are recomputed only when the count has doubled, so nothing
    per batch scales with the 2**20 bins.
    """

    _SEEN, _KEPT, _WINDOW = np.uint8(1), np.uint8(2), np.uint8(4)

    def __init__(self, levels: Sequence[float], budget: int | None = None) -> None:
        self.levels = tuple(levels)
        self.budget = QUANTILE_BUDGET if budget is None else budget
        self.count = 0
        self.hist = np.zeros(1 << _HIST_BITS, dtype=np.int64)
        # Per bin: seen (has values), kept (values held), window (may join when first seen).
        self.state = np.zeros(1 << _HIST_BITS, dtype=np.uint8)
        self.keys: list[np.ndarray] = []
        self.kept_size = 0
        self._next_window = 0

    @property
    def kept(self) -> np.ndarray:
        """Bool mask of the kept bins."""
        return (self.state & self._KEPT) != 0

    def __getstate__(self):
        # Sparse on the wire (Dask): the histogram is mostly zeros.
        nonzero = np.flatnonzero(self.hist)
        return {"levels": self.levels, "budget": self.budget, "count": self.count,
                "bins": nonzero, "counts": self.hist[nonzero],
                "kept": np.flatnonzero(self.kept), "keys": self._kept_keys()}

    def __setstate__(self, state):
        self.__init__(state["levels"], state["budget"])
        self.count = state["count"]
        self.hist[state["bins"]] = state["counts"]
        self.state[state["bins"]] |= self._SEEN
        self.state[state["kept"]] |= self._KEPT
        self.keys = [state["keys"]] if state["keys"].size else []
        self.kept_size = int(state["keys"].size)

    def _kept_keys(self) -> np.ndarray:
        if not self.keys:
            return np.empty(0, dtype=np.uint64)
        if len(self.keys) > 1:
            self.keys = [np.concatenate(self.keys)]
        return self.keys[0]

    def _update_window(self) -> None:
        """Mark the bins within the rank windows of the needed order statistics."""
        window = np.zeros(self.hist.size, dtype=bool)
        count = self.count
        cumulative = np.cumsum(self.hist)
        for q in self.levels:
            center = q * (count - 1)
            spread = 6.0 * math.sqrt(q * (1.0 - q) * count) + 2.0
            low = max(0, int(center - spread))
            high = min(count - 1, int(math.ceil(center + spread)))
            first = int(np.searchsorted(cumulative, low, side="right"))
            last = int(np.searchsorted(cumulative, high, side="right"))
            window[first:last + 1] = True
            # The extremes move into empty bins beyond them: let those join too.
            if q == 0.0:
                window[:first] = True
            if q == 1.0:
                window[last:] = True
        self.state &= ~self._WINDOW
        self.state[window] |= self._WINDOW
        self._next_window = 2 * count

    def add(self, margins: np.ndarray) -> None:
        """Count a batch of margins and keep the values of the bins near the needed ranks."""
        if margins.size == 0:
            return
        keys = _order_keys(margins)
        bins = (keys >> _HIST_SHIFT).astype(np.intp)
        np.add.at(self.hist, bins, 1)
        self.count += bins.size
        if self._next_window == 0:
            self._update_window()  # the first batch (or after a merge): from the counts so far
        before = np.take(self.state, bins)
        # A bin joins when it receives its first value inside a window: it is then complete.
        joins = (before & (self._SEEN | self._WINDOW)) == self._WINDOW
        take = joins | ((before & self._KEPT) != 0)
        unseen = (before & self._SEEN) == 0
        if unseen.any():  # rare after the first batches: scatter only the new bins
            new_bins = bins[unseen]
            self.state[new_bins] = before[unseen] | self._SEEN | (
                joins[unseen].astype(np.uint8) * self._KEPT)
        if take.any():
            chosen = keys[take]
            self.keys.append(chosen)
            self.kept_size += chosen.size
        if self.count >= self._next_window:
            self._update_window()
        if self.kept_size > self.budget:
            self._enforce_budget()

    def merge(self, other: MarginSketch) -> MarginSketch:
        """Combine two sketches of disjoint data (returns ``self``, updated)."""
        complete = (self.kept | (self.hist == 0)) & (other.kept | (other.hist == 0))
        self.hist += other.hist
        self.count += other.count
        kept = complete & (self.hist > 0)
        self.state = np.where(self.hist > 0, self._SEEN, 0).astype(np.uint8)
        self.state[kept] |= self._KEPT
        keys = [k for k in (self._kept_keys(), other._kept_keys()) if k.size]
        self.keys = [k[kept[(k >> _HIST_SHIFT).astype(np.intp)]] for k in keys]
        self.kept_size = sum(k.size for k in self.keys)
        self._next_window = 0  # recomputed at the next add, if any
        self._enforce_budget()
        return self

    def _enforce_budget(self) -> None:
        if self.kept_size <= self.budget:
            return
        # Drop the kept bins farthest (in rank) from the needed order statistics.
        cumulative = np.cumsum(self.hist)
        ranks = np.array(_needed_ranks(self.levels, self.count), dtype=np.int64)
        kept_bins = np.flatnonzero(self.kept)
        starts = cumulative[kept_bins] - self.hist[kept_bins]
        ends = cumulative[kept_bins] - 1
        distance = np.min(np.maximum(0, np.maximum(starts[:, None] - ranks[None, :],
                                                   ranks[None, :] - ends[:, None])), axis=1)
        held = self.kept_size
        for index in np.argsort(-distance, kind="stable"):
            if held <= self.budget:
                break
            self.state[kept_bins[index]] &= ~self._KEPT
            held -= int(self.hist[kept_bins[index]])
        keys = self._kept_keys()
        self.keys = [keys[self.kept[(keys >> _HIST_SHIFT).astype(np.intp)]]]
        self.kept_size = int(self.keys[0].size)

    def quantiles(self, scan: Callable[[Callable[[np.ndarray], Any],
                                        Callable[[Any, Any], Any]], Any] | None = None
                  ) -> tuple[dict[float, float], int]:
        """The exact quantiles, and how many extra passes over the data were needed.

        ``scan(fn, combine)`` must apply ``fn`` to the order keys (:func:`_order_keys`) of the
        margins of every batch again and combine the results with ``combine``; it is called
        only when a needed bin was not kept.
        """
        count = self.count
        if count == 0:
            return {}, 0
        cumulative = np.cumsum(self.hist)
        ranks = _needed_ranks(self.levels, count)
        found: dict[int, int] = {}
        missing: dict[int, tuple[int, int, int, int]] = {}  # rank -> prefix, bits, rank, size
        keys = self._kept_keys()
        key_bins = (keys >> _HIST_SHIFT).astype(np.intp) if keys.size else keys
        kept = self.kept
        sorted_bins: dict[int, np.ndarray] = {}
        for rank in ranks:
            b = int(np.searchsorted(cumulative, rank, side="right"))
            within = rank - int(cumulative[b] - self.hist[b])
            if kept[b]:
                if b not in sorted_bins:
                    sorted_bins[b] = np.sort(keys[key_bins == b])
                found[rank] = int(sorted_bins[b][within])
            else:
                missing[rank] = (b, _HIST_BITS, within, int(self.hist[b]))
        passes = 0
        if missing:
            if scan is None:
                raise RuntimeError("quantile bins were not kept and no scan was given")
            passes = _resolve_missing(missing, found, scan, self.budget)
        values = {rank: _key_to_float(key) for rank, key in found.items()}
        return _interpolate(self.levels, count, values.__getitem__), passes


def _resolve_missing(missing, found, scan, budget) -> int:
    """Find the missing order statistics with extra passes: collect a group's values when
    they fit the budget, otherwise refine its prefix by 20 more bits."""
    passes = 0
    while missing:
        groups: dict[tuple[int, int], int] = {}
        for prefix, bits, _, size in missing.values():
            groups[(prefix, bits)] = size
        for rank, (prefix, bits, _, _) in list(missing.items()):
            if bits == 64:  # a full key: every value in the group is this one
                found[rank] = prefix
                del missing[rank]
        groups = {g: s for g, s in groups.items() if g[1] < 64}
        if not groups:
            break
        passes += 1
        order = sorted(groups)
        if sum(groups.values()) <= budget:
            def collect(keys, order=order):
                return [keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                        for prefix, bits in order]

            parts = scan(collect, lambda a, b: [np.concatenate([x, y]) for x, y in zip(a, b)])
            values = {group: np.sort(part) for group, part in zip(order, parts)}
            for rank, (prefix, bits, within, _) in list(missing.items()):
                found[rank] = int(values[(prefix, bits)][within])
                del missing[rank]
            break
        steps = {g: min(_HIST_BITS, 64 - g[1]) for g in order}

        def refine(keys, order=order, steps=steps):
            out = []
            for prefix, bits in order:
                step = steps[(prefix, bits)]
                inside = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                sub = (inside >> np.uint64(64 - bits - step)) & np.uint64((1 << step) - 1)
                out.append(np.bincount(sub.astype(np.intp), minlength=1 << step))
            return out

        hists = dict(zip(order, scan(refine, lambda a, b: [x + y for x, y in zip(a, b)])))
        for rank, (prefix, bits, within, _) in list(missing.items()):
            step = steps[(prefix, bits)]
            cumulative = np.cumsum(hists[(prefix, bits)])
            sub = int(np.searchsorted(cumulative, within, side="right"))
            before = int(cumulative[sub] - hists[(prefix, bits)][sub])
            missing[rank] = ((prefix << step) | sub, bits + step, within - before,
                             int(hists[(prefix, bits)][sub]))
    return passes


_SUM_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
             "logps/rejected")
# TRL's metric names, in TRL's order, and where each comes from.
_METRIC_SOURCES = {"rewards/chosen": "rewards/chosen", "rewards/rejected": "rewards/rejected",
                   "rewards/accuracies": None, "rewards/margins": "rewards/margins",
                   "logps/chosen": "logps/chosen", "logps/rejected": "logps/rejected"}


class PartialSummary:
    """Mergeable partial sums of a scoring run (one batch, one partition, or many).

    Everything needed for the summary: the pair count, exact sums of the per-pair values,
    counts of positive and negative margins, the skipped rows by reason and the margin
    quantile sketch. :meth:`merge` is exact and order-independent, so Dask partitions combine
    to the same numbers as a single-machine run.
    """

    def __init__(self, levels: Sequence[float] | None = DEFAULT_QUANTILES) -> None:
        self.count = 0
        self.accurate = 0
        self.negative = 0
        self.sums = {key: ExactSum() for key in _SUM_KEYS}
        # Metrics the core reports that this module does not know how to compute from the
        # per-pair values: combined as count-weighted means of the per-batch values.
        self.other_metrics: dict[str, ExactSum] = {}
        self.skipped: dict[str, int] = {}
        self.first_skipped: tuple[tuple[Any, ...], str] | None = None
        self.sketch = MarginSketch(levels) if levels else None

    def add(self, outputs: Mapping[str, np.ndarray], chosen: np.ndarray, rejected: np.ndarray,
            metrics: Mapping[str, float]) -> None:
        """Add one scored batch: ``outputs`` holds the added columns (ADDED_COLUMNS)."""
        n = outputs["loss"].size
        if n == 0:
            return
        chosen_rewards, rejected_rewards = outputs["chosen_reward"], outputs["rejected_reward"]
        margin = outputs["margin"]
        for key, values in (("loss", outputs["loss"]), ("rewards/chosen", chosen_rewards),
                            ("rewards/rejected", rejected_rewards),
                            ("rewards/margins", margin), ("logps/chosen", chosen),
                            ("logps/rejected", rejected)):
            self.sums[key].add(np.sum(values, dtype=np.float64))
        # margin > 0 exactly when chosen > rejected: a difference of doubles is 0 only
        # between equal ones (gradual underflow), and an overflow keeps its sign.
        self.accurate += int(np.count_nonzero(margin > 0))
        self.negative += int(np.count_nonzero(margin < 0))
        for name, value in metrics.items():
            if name not in _METRIC_SOURCES:
                self.other_metrics.setdefault(name, ExactSum()).add(float(value) * n)
        self.count += n
        if self.sketch is not None:
            self.sketch.add(margin)

    def add_skipped(self, counts: Mapping[str, int], where: tuple[Any, ...],
                    message: str) -> None:
        """Count skipped rows; keep the first one (by ``where``, a sortable location)."""
        for reason, count in counts.items():
            if count:
                self.skipped[reason] = self.skipped.get(reason, 0) + count
        if self.first_skipped is None or where < self.first_skipped[0]:
            self.first_skipped = (where, message)

    def merge(self, other: PartialSummary) -> PartialSummary:
        """Add ``other`` (disjoint data) into this summary; returns ``self``."""
        self.count += other.count
        self.accurate += other.accurate
        self.negative += other.negative
        for key in _SUM_KEYS:
            self.sums[key].merge(other.sums[key])
        for name, total in other.other_metrics.items():
            self.other_metrics.setdefault(name, ExactSum()).merge(total)
        if other.skipped:
            self.add_skipped(other.skipped, *(other.first_skipped or ((), "")))
        if self.sketch is not None and other.sketch is not None:
            self.sketch.merge(other.sketch)
        return self

    def finish(self, reduction: str = "mean", scan=None, **info: Any) -> ScoreSummary:
        """The :class:`ScoreSummary` (``scan``: see :meth:`MarginSketch.quantiles`)."""
        n = self.count
        if n == 0:
            raise ScoreDataError("no valid pairs to score" + (
                f" ({sum(self.skipped.values())} rows skipped as invalid)"
                if self.skipped else ""), file=info.get("input"))
        metrics = {}
        for name, source in _METRIC_SOURCES.items():
            metrics[name] = self.accurate / n if source is None else self.sums[source].value(n)
        for name, total in self.other_metrics.items():
            metrics[name] = total.value(n)
        quantiles, passes = ({}, 0) if self.sketch is None else self.sketch.quantiles(scan)
        loss = self.sums["loss"].value(n if reduction == "mean" else 1)
        return ScoreSummary(
            pairs=n, loss=loss, reduction=reduction, metrics=metrics,
            margin_quantiles=quantiles, negative_margin_share=self.negative / n,
            skipped=sum(self.skipped.values()), skipped_by_reason=dict(self.skipped),
            first_skipped=self.first_skipped[1] if self.first_skipped else None,
            quantile_passes=passes, **info)


@dataclass(frozen=True)
class ScoreSummary:
    """What :func:`score_dataset` (and :func:`dpo_fast.dask.summarize`) return.

    Attributes
    ----------
    pairs : int
        Pairs scored (valid rows).
    loss : float
        The mean (``reduction="mean"``) or sum (``"sum"``) of the per-pair losses.
    reduction : str
    metrics : dict of str to float
        TRL's names and definitions: ``rewards/chosen``, ``rewards/rejected``,
        ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
    margin_quantiles : dict of float to float
        Exact quantiles of ``margin = chosen_reward - rejected_reward`` (``numpy.quantile``,
        linear interpolation); keys are the levels (0 = min, 1 = max).
    negative_margin_share : float
        Share of pairs whose chosen reward is below the rejected one.
    skipped : int
        Invalid rows skipped (``on_invalid="skip"``); ``skipped_by_reason`` splits them into
        ``null``, ``non-numeric``, ``non-finite`` and ``malformed``; ``first_skipped``
        describes the first one.
    quantile_passes : int
        Extra passes over the input the exact quantiles needed (usually 0).
    input, output : str or None
    parameters : dict
        The preference_loss parameters given.
    columns : dict of str to str
        Role -> column used.
    seconds : float or None
        Wall time of the run.
    """

    pairs: int
    loss: float
    reduction: str
    metrics: dict[str, float]
    margin_quantiles: dict[float, float]
    negative_margin_share: float
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    first_skipped: str | None = None
    quantile_passes: int = 0
    input: str | None = None
    output: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (quantile levels as strings, e.g. ``"0.5"``)."""
        return {
            "input": self.input, "output": self.output, "pairs": self.pairs,
            "skipped": self.skipped, "skipped_by_reason": self.skipped_by_reason,
            "first_skipped": self.first_skipped, "loss": self.loss,
            "reduction": self.reduction, "metrics": self.metrics,
            "margin": {"quantiles": {_level_name(q): v
                                     for q, v in self.margin_quantiles.items()},
                       "negative_share": self.negative_margin_share},
            "parameters": {k: v for k, v in self.parameters.items()},
            "columns": self.columns, "quantile_passes": self.quantile_passes,
            "seconds": self.seconds,
        }

    def format_table(self) -> str:
        """The summary as aligned text for a terminal."""
        lines = []
        where = self.input or "input"
        if self.output:
            where += f" -> {self.output}"
        lines.append(f"dpo-fast score: {where}")
        lines.append(f"  {'pairs':<22}{self.pairs:,}")
        if self.skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.skipped_by_reason.items()))
            lines.append(f"  {'skipped (invalid)':<22}{self.skipped:,}  ({reasons})")
        lines.append(f"  {'loss (' + self.reduction + ')':<22}{_num(self.loss)}")
        for name, value in self.metrics.items():
            lines.append(f"  {name:<22}{_num(value)}")
        lines.append(f"  {'negative margins':<22}{self.negative_margin_share:.4%}")
        if self.margin_quantiles:
            lines.append("  margin quantiles")
            for q, value in self.margin_quantiles.items():
                label = {0.0: "min", 1.0: "max"}.get(q, f"{q * 100:g}%")
                lines.append(f"    {label:<20}{_num(value)}")
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        if params:
            lines.append(f"  {'parameters':<22}{params}")
        if self.seconds is not None:
            rate = self.pairs / self.seconds if self.seconds > 0 else float("inf")
            lines.append(f"  {'time':<22}{self.seconds:.3f} s ({rate:,.0f} pairs/s)")
        return "\n".join(lines)


def _level_name(q: float) -> str:
    return repr(float(q))


def _num(value: float) -> str:
    return f"{value:.6g}" if value == 0 or 1e-4 <= abs(value) < 1e6 else f"{value:.6e}"


# --------------------------------------------------------------------------------------------
# Scoring one batch (shared with dpo_fast.dask).
# --------------------------------------------------------------------------------------------

class BufferRing:
    """Reusable output arrays for :func:`score_columns`, ``size`` sets used in turn.

    Fresh output arrays cost more than the kernel itself (page faults: measured 2.3 ms vs
    0.9 ms for 262,144 rows on one thread). A set is reused ``size`` batches later, by which
    time the writer thread is done with it: at most ``WRITE_QUEUE_DEPTH`` batches wait in its
    queue and one is being written, so ``size = WRITE_QUEUE_DEPTH + 3`` is safe.
    """

    def __init__(self, size: int, names: Sequence[str]) -> None:
        # Allocated as batches arrive, at the largest batch seen: never more than the data
        # needs, whatever batch_rows says (--batch-rows 1e12 allocated 8 TB up front).
        self._sets: list[dict[str, np.ndarray] | None] = [None] * size
        self._names = tuple(names)
        self._next = 0

    def take(self, rows: int) -> dict[str, np.ndarray]:
        arrays = self._sets[self._next]
        if arrays is None or len(arrays[self._names[0]]) < rows:
            arrays = self._sets[self._next] = {name: np.empty(rows) for name in self._names}
        self._next = (self._next + 1) % len(self._sets)
        return {name: array[:rows] for name, array in arrays.items()}


# preference_loss's out= names for the added columns.
_OUT_NAMES = {"loss": "losses", "chosen_reward": "chosen_rewards",
              "rejected_reward": "rejected_rewards", "grad_chosen": "grad_chosen",
              "grad_rejected": "grad_rejected"}


def _margin(chosen_rewards, rejected_rewards, out=None) -> np.ndarray:
    """chosen - rejected, with a zero always +0.0: -0.0 (from -0.0 - 0.0) would make the
    margin quantiles differ in sign from numpy.quantile's, which orders equal zeros of
    either sign as its partition happens to leave them."""
    margin = np.subtract(chosen_rewards, rejected_rewards, out=out)
    return np.add(margin, 0.0, out=margin)


def score_columns(columns: Sequence[ColumnValues], params: Mapping[str, Any],
                  compute_grad: bool, buffers: BufferRing | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """preference_loss over validated column values: the added columns and the metrics."""
    kwargs = {col.role.parameter: col.values for col in columns}
    chosen = kwargs.pop("chosen_logps")
    rejected = kwargs.pop("rejected_logps")
    out = None
    margin = None
    if buffers is not None:
        arrays = buffers.take(chosen.size)
        margin = arrays.pop("margin")
        out = {_OUT_NAMES[name]: array for name, array in arrays.items()
               if compute_grad or name not in GRAD_COLUMNS}
    result = preference_loss(chosen, rejected, **kwargs, **params, reduction="none",
                             compute_grad=compute_grad, out=out)
    outputs = {"chosen_reward": result.chosen_rewards,
               "rejected_reward": result.rejected_rewards,
               "margin": _margin(result.chosen_rewards, result.rejected_rewards, margin),
               "loss": result.losses}
    if compute_grad:
        outputs["grad_chosen"] = result.grad_chosen
        outputs["grad_rejected"] = result.grad_rejected
    return outputs, result.metrics


@dataclass
class ScoredBatch:
    """What :func:`check_and_score` returns for one batch.

    Attributes
    ----------
    keep : numpy.ndarray or None
        Mask of the rows scored (None: all of them).
    columns : list of ColumnValues
        The role columns of the rows scored.
    outputs : dict of str to numpy.ndarray
        The added columns (:data:`ADDED_COLUMNS`, and :data:`GRAD_COLUMNS` when asked).
    metrics : dict of str to float
        preference_loss's metrics for the rows scored.
    skipped : dict of str to int
        Rows skipped, by reason.
    first_skipped : (int, str) or None
        Batch row and description of the first skipped row.
    """

    keep: np.ndarray | None
    columns: list[ColumnValues]
    outputs: dict[str, np.ndarray]
    metrics: dict[str, float]
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: tuple[int, str] | None = None


def _score_or_explain(columns, params, compute_grad, locate, buffers=None):
    try:
        return score_columns(columns, params, compute_grad, buffers)
    except ValueError as exc:
        # Not null/NaN/inf (those were checked): a rule of preference_loss's own.
        file, row = locate(0)
        raise ScoreDataError(f"preference_loss refused the batch starting at row {row}: "
                             f"{exc}", file=file) from None


def check_and_score(columns: list[ColumnValues], params: Mapping[str, Any], compute_grad: bool,
                    on_invalid: str, locate: Callable[[int], tuple[str | None, int | None]],
                    buffers: BufferRing | None = None) -> ScoredBatch:
    """Validate a batch's role columns and score its valid rows with preference_loss.

    Parameters
    ----------
    columns : list of ColumnValues
        ``chosen`` and ``rejected`` first (the order of :func:`resolve_columns`).
    params : mapping
        preference_loss keyword arguments (``reduction`` is always ``"none"`` here).
    compute_grad : bool
    on_invalid : {"error", "skip"}
    locate : callable
        ``locate(i) -> (file, row)`` for the messages about batch row ``i``.
    buffers : BufferRing, optional
        Output arrays to reuse.

    Returns
    -------
    ScoredBatch

    Raises
    ------
    ScoreDataError
        The first invalid row (``on_invalid="error"``), or a value preference_loss refuses
        for a reason of its own.
    """
    if all(c.null is None and c.non_numeric is None for c in columns):
        try:
            # The kernel checks finiteness as it goes, for free: the searches below run only
            # when it finds something.
            outputs, metrics = score_columns(columns, params, compute_grad, buffers)
            return ScoredBatch(None, columns, outputs, metrics)
        except ValueError:
            pass
    first = first_invalid(columns)
    if first is None:
        outputs, metrics = _score_or_explain(columns, params, compute_grad, locate, buffers)
        return ScoredBatch(None, columns, outputs, metrics)
    row, col, reason = first
    file, file_row = locate(row)
    error = ScoreDataError(_describe(reason, col.raw(row)), file=file, row=file_row,
                           column=col.column)
    if on_invalid == "error":
        raise error
    mask, counts = invalid_rows(columns)
    keep = ~mask
    kept = [ColumnValues(c.role, c.column, c.values[keep]) for c in columns]
    if keep.any():
        outputs, metrics = _score_or_explain(kept, params, compute_grad,
                                             lambda i: locate(int(np.flatnonzero(keep)[i])),
                                             buffers)
    else:
        names = ADDED_COLUMNS + (GRAD_COLUMNS if compute_grad else ())
        outputs, metrics = {name: np.empty(0) for name in names}, {}
    return ScoredBatch(keep, kept, outputs, metrics, counts, (row, str(error)))


# --------------------------------------------------------------------------------------------
# Reading: per-format streaming readers over the files pyarrow.dataset discovers.
# --------------------------------------------------------------------------------------------

def _strip_compression(name: str) -> str:
    lower = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def _normalize_format(name: str | None, choices: Mapping[str, Any]) -> str | None:
    if name is None:
        return None
    key = _FORMAT_ALIASES.get(name.lower(), name.lower())
    if key not in choices:
        raise ScoreUsageError(f"unknown format {name!r}; choose from "
                              f"{', '.join(sorted(set(choices) | set(_FORMAT_ALIASES)))}")
    return key


def format_of(path: str, given: str | None = None, *, output: bool = False) -> str:
    """The file format of ``path``: ``given`` if set, else from the name's extension."""
    choices = OUTPUT_FORMATS if output else INPUT_FORMATS
    if given is not None:
        return _normalize_format(given, choices)
    name = path.lower() if output else _strip_compression(path)
    for fmt, endings in choices.items():
        if name.endswith(endings):
            return fmt
    which = "--output-format" if output else "--input-format"
    raise ScoreUsageError(f"cannot tell the format of {path!r} from its extension; pass "
                          f"{which} (one of {', '.join(choices)})")


@dataclass
class _Input:
    source: str
    files: list[str]
    format: str
    # (device, inode) of every directory the listing entered: what --out must stay out of.
    directories: frozenset[tuple[int, int]] = frozenset()

    def count_rows(self) -> int | None:
        """Rows, when the files' metadata tells it cheaply (Parquet, Arrow IPC files)."""
        pa = _require_pyarrow()
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq
                return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
            if self.format == "ipc":
                total = 0
                for f in self.files:
                    with pa.memory_map(f) as source:
                        reader = pa.ipc.open_file(source)
                        total += sum(reader.get_batch(i).num_rows
                                     for i in range(reader.num_record_batches))
                return total
        except Exception:  # a progress total is a nicety: the reader reports real errors
            return None
        return None


# Names a directory listing leaves out, as pyarrow.dataset does: hidden files and Spark/Hadoop
# markers such as _SUCCESS and _metadata.
_IGNORED_PREFIXES = (".", "_")


def _list_directory(source: str) -> tuple[list[str], frozenset[tuple[int, int]]]:
    """The regular files under ``source``, each real file once, and the directories entered.

    Links are followed, but every real directory (device, inode) is entered once and every real
    file is listed once, under the first name found in sorted order: a link back up the tree
    (``latest -> .``) neither repeats files nor loops, and two names of one file count once.
    The walk is Python code, so SIGINT/SIGTERM stop it like any other step.
    """
    files: list[str] = []
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()
    pending = [source]
    while pending:
        directory = pending.pop()
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen_dirs:
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name, reverse=True)
        except OSError as exc:
            raise ScoreUsageError(f"{directory}: cannot list it ({exc.strerror})") from None
        for entry in entries:
            if entry.name.startswith(_IGNORED_PREFIXES):
                continue
            try:
                info = entry.stat()  # follows links
            except OSError as exc:
                raise ScoreUsageError(f"{entry.path}: cannot read it ({exc.strerror}); "
                                      "remove it or move it out of the input") from None
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen_files:
                seen_files.add((info.st_dev, info.st_ino))
                files.append(entry.path)
    return sorted(files), frozenset(seen_dirs)


def _discover(source: str, input_format: str | None) -> _Input:
    """The files of ``source`` (a file, or a directory walked by :func:`_list_directory`) and
    their format."""
    if not os.path.exists(source):
        raise ScoreUsageError(f"{source}: no such file or directory")
    if not os.path.isdir(source):
        return _Input(source, [source], format_of(source, input_format))
    files, directories = _list_directory(source)
    if input_format is None:
        found = {format_of(name) for name in files}
        if len(found) > 1:
            raise ScoreUsageError(f"{source}: files of several formats "
                                  f"({', '.join(sorted(found))}); pass --input-format")
        input_format = found.pop() if found else "parquet"
    fmt = _normalize_format(input_format, INPUT_FORMATS)
    if not files:
        raise ScoreUsageError(f"{source}: the directory holds no data files")
    return _Input(source, files, fmt, directories)


def _wrap_arrow_error(exc: Exception, file: str, row: int | None, what: str) -> ScoreDataError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ScoreDataError(f"malformed {what}: {message}", file=file, row=row)


class _CsvSkips:
    """The invalid_row_handler of pyarrow's CSV parser (rows with the wrong number of fields):
    records where they are, then stops the parse (error) or skips the row (skip)."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.rows: list[int | None] = []  # 0-based data rows, the first 10,000 only
        self.count = 0
        self.first_text = ""

    def __call__(self, row) -> str:
        # pyarrow numbers rows from 1 and counts the header line.
        number = None if row.number is None or row.number < 0 else row.number - 2
        if not self.count:
            self.first_text = (f"expected {row.expected_columns} fields, got "
                               f"{row.actual_columns}: {row.text[:60]!r}")
        self.count += 1
        if len(self.rows) < 10_000:
            self.rows.append(number)
        return "skip" if self.skip else "error"


def _read_parquet(path, columns, batch_rows, **_):
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    # ParquetFile.iter_batches holds about one row group of the selected columns. The
    # pyarrow.dataset scanner reads ahead much further when the consumer is slower than the
    # reader (measured: 277-347 MB of Arrow memory for a 374 MB file), so memory would grow
    # with the input.
    handle = pq.ParquetFile(path, pre_buffer=False)
    offset = 0
    batches = handle.iter_batches(batch_size=batch_rows, columns=columns, use_threads=True)
    for number, batch in enumerate(batches):
        # A corrupted page can decode into offsets beyond their buffers; the writers and the
        # scorer would read out of bounds, as with Arrow IPC.
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise _wrap_arrow_error(exc, path, offset, f"Parquet (batch {number}, "
                                    "from this row on)") from None
        yield offset, batch
        offset += batch.num_rows


def _read_ipc(path, columns, batch_rows, **_):
    pa = _require_pyarrow()
    with pa.OSFile(path) as source:
        is_file = source.read(6) == b"ARROW1"
        source.seek(0)
        offset = 0
        if is_file:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(pa.ipc.open_stream(source))
        for number, batch in enumerate(batches):
            if columns is not None:
                batch = batch.select(columns)
            # The IPC reader maps buffers as they are on disk: a corrupted offset or length
            # would be read out of bounds by the scorer or the writers (a crash, or garbage
            # copied to --out). Full validation checks every offset against its buffer.
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise _wrap_arrow_error(exc, path, offset, f"Arrow IPC (record batch {number}, "
                                        "from this row on)") from None
            for start in range(0, batch.num_rows, batch_rows):
                part = batch.slice(start, batch_rows)
                yield offset, part
                offset += part.num_rows


def _read_csv(path, columns, batch_rows, role_columns, csv_skips, schema=None, **_):
    pa = _require_pyarrow()
    import pyarrow.csv as pacsv

    # Role columns are read as text and parsed here, so that a bad value is a row to report
    # (or skip), not a failure of the whole block. The other columns, when read, get the types
    # of the whole input (_input_schema), not ones guessed from the first block. Serial
    # parsing: pyarrow only numbers the rows it rejects when it parses in order.
    types = {f.name: f.type for f in schema} if schema is not None else {}
    types.update((c, pa.string()) for c in role_columns)
    convert = pacsv.ConvertOptions(column_types=types,
                                   include_columns=list(columns) if columns else None)
    reader = pacsv.open_csv(
        pa.input_stream(path, compression="detect"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=_csv_block_size(batch_rows)),
        parse_options=pacsv.ParseOptions(invalid_row_handler=csv_skips),
        convert_options=convert)
    offset = 0
    for batch in reader:
        for start in range(0, batch.num_rows, batch_rows):
            part = batch.slice(start, batch_rows)
            yield offset, part
            offset += part.num_rows


def _json_kind_fits(pa, value, kind) -> bool:
    if value is None:
        return True
    try:
        pa.scalar(value, type=kind)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False


def _jsonl_chunk_bytes(batch_rows: int) -> int:
    return min(max(batch_rows * 128, 1 << 20), 1 << 26)


def _jsonl_chunks(pa, path, chunk_bytes) -> Iterator[bytes]:
    """The file in chunks of whole lines (a line longer than ``chunk_bytes`` is one chunk)."""
    with pa.input_stream(path, compression="detect") as stream:
        pending = b""
        while True:
            data = stream.read(chunk_bytes)
            if data:
                cut = data.rfind(b"\n")
                if cut < 0:
                    pending += data
                    continue
                chunk, pending = pending + data[:cut + 1], data[cut + 1:]
            else:
                chunk, pending = pending, b""
            if chunk.strip():
                yield chunk
            if not data:
                return


def _read_json_chunk(pa, chunk, schema, unexpected):
    import pyarrow.json as pajson

    # One block for the whole chunk: with pyarrow's default 1 MiB blocks, a longer line fails
    # ("straddling object") although it is valid.
    return pajson.read_json(
        pa.BufferReader(chunk), read_options=pajson.ReadOptions(block_size=len(chunk) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior=unexpected))


def _read_jsonl(path, columns, batch_rows, role_columns, on_invalid, skips,
                file_index=0, schema=None, **_):
    """JSON Lines in chunks of whole lines parsed by pyarrow; a chunk pyarrow rejects is
    re-read line by line in Python to name (or skip) the exact bad line. pyarrow's own row
    numbers in JSON errors count from the start of an internal block, not of the file.

    ``schema`` (every column, from :func:`_input_schema`) is given when all columns are read.
    Otherwise only the role columns are, as float64; other keys are not parsed at all."""
    pa = _require_pyarrow()
    role_types = {c: pa.float64() for c in role_columns}
    offset = 0
    for chunk in _jsonl_chunks(pa, path, _jsonl_chunk_bytes(batch_rows)):
        try:
            if schema is not None:
                table = _read_json_chunk(pa, chunk, schema, "ignore")
                table = table.select(schema.names).cast(schema)
            else:
                table = _read_json_chunk(pa, chunk, pa.schema(list(role_types.items())),
                                         "ignore")
                table = table.select(columns)
            rows = table.num_rows
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            table, rows = _jsonl_python(pa, chunk, schema, role_types, path, offset,
                                        on_invalid, skips, exc, file_index)
        if table is not None and table.num_rows:
            if columns is not None:
                table = table.select(columns)
            table_offset = offset
            for batch in table.to_batches(max_chunksize=batch_rows):
                yield table_offset, batch
                table_offset += batch.num_rows
        offset += rows


def _json_key_order(chunk: bytes, names: list[str]) -> list[str]:
    """``names`` in the order the keys first appear in the chunk's records."""
    order: dict[str, None] = {}
    for line in chunk.split(b"\n", 1000)[:1000]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            order.update(dict.fromkeys(k for k in record if k in names))
    return [*order, *(n for n in names if n not in order)]


def _jsonl_python(pa, chunk, schema, role_types, path, offset, on_invalid, skips, error,
                  file_index):
    """Parse a chunk pyarrow rejected, line by line: the exact bad line (error) or the good
    ones (skip). Returns (table of good rows or None, records in the chunk): ``schema``'s
    columns, or else the role columns."""
    good, row = [], -1
    for line in chunk.split(b"\n"):
        if not line.strip():
            continue
        row += 1
        problem = None
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                problem = ("malformed", None, f"not a JSON object: {line[:60]!r}")
        except ValueError as exc:
            record, problem = None, ("malformed", None, f"invalid JSON ({exc})")
        if problem is None:
            for column in role_types:
                value = record.get(column)
                if value is None:
                    problem = ("null", column, _describe("null", None))
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    problem = ("non-numeric", column, _describe("non-numeric", value))
                elif not math.isfinite(value):
                    problem = ("non-finite", column, _describe("non-finite", value))
                if problem:
                    break
        if problem is None and schema is not None:
            for name in schema.names:
                if name not in role_types and not _json_kind_fits(
                        pa, record.get(name), schema.field(name).type):
                    problem = ("malformed", name, f"{record.get(name)!r} does not fit the "
                               f"column's type {schema.field(name).type}")
                    break
        if problem is not None:
            reason, column, text = problem
            if on_invalid == "error":
                raise ScoreDataError(text, file=path, row=offset + row, column=column)
            skips.add_skipped({reason: 1}, (file_index, offset + row),
                              str(ScoreDataError(text, file=path, row=offset + row,
                                                 column=column)))
            continue
        good.append(record)
    records = row + 1
    if on_invalid == "error":
        # Every line is fine on its own: pyarrow objected to something across lines.
        raise _wrap_arrow_error(error, path, offset, "JSON Lines (from this row on)")
    if not good:
        return None, records
    return pa.Table.from_pylist(good, schema=schema if schema is not None else
                                pa.schema(list(role_types.items()))), records


_READERS = {"parquet": _read_parquet, "ipc": _read_ipc, "csv": _read_csv, "jsonl": _read_jsonl}


def _concat_batches(pa, batches):
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


_FORMAT_NAMES = {"parquet": "Parquet", "ipc": "Arrow IPC", "csv": "CSV", "jsonl": "JSON Lines"}


class _Reader:
    """The record batches of an input, file after file: ``(file index, file, first row,
    batch)``, small batches coalesced up to ``batch_rows``.

    ``text_columns`` are read as text (CSV) or float64 (JSON Lines) so that a bad value is a
    row to report or skip rather than a failure of a whole block. Rows skipped while parsing
    (malformed CSV/JSON lines, under ``on_invalid="skip"``) are recorded in ``skip_log``.
    """

    def __init__(self, inp: _Input, columns: list[str] | None, batch_rows: int,
                 text_columns: list[str], on_invalid: str, skip_log: PartialSummary,
                 schema=None) -> None:
        self.inp, self.columns, self.batch_rows = inp, columns, batch_rows
        self.text_columns, self.on_invalid, self.skip_log = text_columns, on_invalid, skip_log
        self.schema = schema  # of every column (from _input_schema) when all are read
        self.csv_skips: dict[str, _CsvSkips] = {}

    def exact_row(self, path: str, row: int) -> int:
        """A row counted among the rows the parser kept, as a row of the file: add back the
        malformed CSV rows skipped before it (exact for the first 10,000 of them)."""
        skips = self.csv_skips.get(path)
        if skips is None:
            return row
        for skipped in sorted(r for r in skips.rows if r is not None):
            if skipped > row:
                break
            row += 1
        return row

    def __iter__(self) -> Iterator[tuple[int, str, int, Any]]:
        pa = _require_pyarrow()
        for index, path in enumerate(self.inp.files):
            csv_skips = None
            if self.inp.format == "csv":
                csv_skips = self.csv_skips[path] = _CsvSkips(self.on_invalid == "skip")
            reader = _READERS[self.inp.format](
                path, columns=self.columns, batch_rows=self.batch_rows,
                role_columns=self.text_columns, on_invalid=self.on_invalid,
                skips=self.skip_log, csv_skips=csv_skips, file_index=index,
                schema=self.schema)
            pending, pending_rows, start, done = [], 0, 0, 0
            while True:
                try:
                    item = next(reader)
                except StopIteration:
                    break
                except ScoreDataError:
                    raise
                except (pa.ArrowException, OSError, ValueError) as exc:
                    if csv_skips is not None and csv_skips.rows and not csv_skips.skip:
                        raise ScoreDataError(f"malformed CSV row: {csv_skips.first_text}",
                                             file=path, row=csv_skips.rows[0]) from None
                    raise _wrap_arrow_error(
                        exc, path, None, f"{_FORMAT_NAMES[self.inp.format]} (at or after "
                                         f"row {done + pending_rows})") from None
                first_row, batch = item
                if batch.num_rows == 0:
                    continue
                if pending and pending_rows + batch.num_rows > self.batch_rows:
                    yield index, path, start, _concat_batches(pa, pending)
                    done = start + pending_rows
                    pending, pending_rows = [], 0
                if not pending:
                    start = first_row
                pending.append(batch)
                pending_rows += batch.num_rows
                # Coalesce small batches (small row groups, CSV blocks): per-batch overheads
                # and the kernel's one-thread cut-off make tiny batches slow.
                if pending_rows >= self.batch_rows // 2:
                    yield index, path, start, _concat_batches(pa, pending)
                    done = start + pending_rows
                    pending, pending_rows = [], 0
            if pending:
                yield index, path, start, _concat_batches(pa, pending)
            if csv_skips is not None and csv_skips.count:
                first = csv_skips.rows[0]
                self.skip_log.add_skipped(
                    {"malformed": csv_skips.count}, (index, first if first is not None else 0),
                    str(ScoreDataError(f"malformed CSV row: {csv_skips.first_text}",
                                       file=path, row=first)))


# --------------------------------------------------------------------------------------------
# Writing: atomic output files, one writer per format, on a background thread.
# --------------------------------------------------------------------------------------------

def _tmpfile_supported() -> bool:
    """Whether to try unnamed O_TMPFILE outputs (Linux; the filesystem may still refuse)."""
    return sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")


class _AtomicOutput:
    """A file that appears at ``target`` complete or not at all.

    On Linux the data goes to an unnamed O_TMPFILE inode in the target's directory, linked
    and renamed over the target at the end: even a SIGKILL leaves nothing behind. Elsewhere a
    hidden temporary file next to the target is renamed at the end and removed on any error
    or interrupt (a SIGKILL can leave that hidden file, never a partial target).
    """

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        directory = os.path.dirname(self.target)
        self._fd: int | None = None
        self._proc_fd: int | None = None
        self.path = ""
        if _tmpfile_supported():
            try:
                self._fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC,
                                   0o666)
                self._proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_CLOEXEC)
                self.path = f"/proc/self/fd/{self._fd}"
                return
            except OSError:  # filesystem without O_TMPFILE, or no /proc
                self._close_fds()
        handle, self.path = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(self.target)}.", suffix=".partial")
        os.close(handle)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._proc_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._proc_fd = None

    def commit(self) -> None:
        if self._fd is not None:
            # Unique per call, not per process: concurrent runs in one process writing the
            # same --out must not take each other's name (the last rename wins, whole).
            name = os.path.join(os.path.dirname(self.target),
                                f".{os.path.basename(self.target)}.{os.getpid()}."
                                f"{secrets.token_hex(8)}.partial")
            os.link(str(self._fd), name, src_dir_fd=self._proc_fd, follow_symlinks=True)
            try:
                os.replace(name, self.target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(name)
                raise
            self._close_fds()
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o666 & ~umask)  # mkstemp made it 0600
            os.replace(self.path, self.target)

    def abort(self) -> None:
        if self._fd is not None:
            self._close_fds()  # the unnamed inode goes with its last descriptor
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


# Parquet row groups: a batch of at least PARQUET_BATCH_ROWS rows is one; smaller batches are
# gathered into row groups of PARQUET_GATHER_ROWS rows (copied: their arrays are reused by the
# scorer). Gathering batches of ordinary size instead raised a run's peak memory (measured:
# +50 MiB for 2M rows in 20,000-row batches: the copies stay in Arrow's memory pool).
PARQUET_BATCH_ROWS = 1 << 13
PARQUET_GATHER_ROWS = 1 << 16


class _ParquetSink:
    """Parquet with row groups of at least PARQUET_BATCH_ROWS rows, whatever the batch size.

    One row group per batch made --batch-rows 1 write 100,000 row groups for 100,000 rows,
    whose metadata the writer keeps until it closes (1.1-1.7 GiB).
    """

    def __init__(self, path, schema):
        import pyarrow.parquet as pq

        pa = self._pa = _require_pyarrow()
        # Dictionary encoding only where it can pay: on floats (log-probs, rewards) it is
        # tried and abandoned per row group, which doubled the write time in measurements.
        dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
        self._writer = pq.ParquetWriter(path, schema, use_dictionary=dictionary,
                                        compression="snappy")
        self._pending: list = []
        self._rows = 0

    def write_batch(self, batch):
        if batch.num_rows >= PARQUET_BATCH_ROWS:
            self._flush()
            self._writer.write_batch(batch)
            return
        pa = self._pa
        self._pending.append(pa.RecordBatch.from_arrays(
            [pa.concat_arrays([column]) for column in batch.columns], schema=batch.schema))
        self._rows += batch.num_rows
        if len(self._pending) >= 256:
            # Thousands of tiny batches cost far more than their rows (every array has its
            # allocations): keep them as one.
            self._pending = [pa.concat_batches(self._pending)]
        if self._rows >= PARQUET_GATHER_ROWS:
            self._flush()

    def _flush(self):
        if self._rows:
            self._writer.write_table(self._pa.Table.from_batches(self._pending),
                                     row_group_size=self._rows)
        self._pending, self._rows = [], 0

    def close(self):
        self._flush()
        self._writer.close()


class _IpcSink:
    def __init__(self, path, schema):
        pa = _require_pyarrow()
        self._file = pa.OSFile(path, "wb")
        self._writer = pa.ipc.new_file(self._file, schema)

    def write_batch(self, batch):
        self._writer.write_batch(batch)

    def close(self):
        self._writer.close()
        self._file.close()


def _csv_sink(path, schema):
    import pyarrow.csv as pacsv

    return pacsv.CSVWriter(path, schema)


class _JsonlSink:
    """JSON Lines written column-wise with Arrow kernels (no Python loop over rows, except for
    nested types and strings holding rare control characters)."""

    def __init__(self, path, schema):
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._schema = schema
        self._keys = [json.dumps(f.name) + ": " for f in schema]

    def write_batch(self, batch):
        pa = _require_pyarrow()
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        pieces = []
        for index, (key, column) in enumerate(zip(self._keys, batch.columns)):
            pieces.append(pa.scalar(("{" if index == 0 else ", ") + key))
            pieces.append(_json_texts(pa, pc, column))
        pieces.append(pa.scalar("}\n"))
        lines = pc.binary_join_element_wise(*pieces, "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32,
                                count=len(lines) + 1, offset=lines.offset * 4)
        data = lines.buffers()[2]
        self._file.write(memoryview(data)[offsets[0]:offsets[-1]])

    def close(self):
        self._file.close()


def _json_texts(pa, pc, column):
    """JSON texts of an Arrow column's values, as a string array without nulls."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_floating(kind):
        # Non-finite numbers have no JSON form; null is what pandas writes for them too.
        finite = pc.is_finite(column)
        texts = pc.if_else(finite, pc.cast(column, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
        texts = pc.cast(column, pa.string())
    elif pa.types.is_null(kind):
        return pa.array(["null"] * len(column), pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        strings = column.cast(pa.string())
        if pc.any(pc.match_substring_regex(strings, "[\\x00-\\x1f]")).as_py():
            texts = pa.array([None if v is None else json.dumps(v)
                              for v in strings.to_pylist()], pa.string())
        else:
            escaped = pc.replace_substring(pc.replace_substring(strings, "\\", "\\\\"),
                                           '"', '\\"')
            texts = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_temporal(kind):
        texts = pc.binary_join_element_wise('"', pc.cast(column, pa.string()), '"', "")
    else:
        texts = pa.array([None if v is None else json.dumps(v, default=str)
                          for v in column.to_pylist()], pa.string())
    return pc.fill_null(texts, "null")


_SINKS = {"parquet": _ParquetSink, "ipc": _IpcSink, "csv": _csv_sink, "jsonl": _JsonlSink}


class _WriteFailed(Exception):
    """Writing the output failed (disk full, file too large, a type the format cannot hold):
    ``error`` is what the writer raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    def describe(self) -> str:
        if isinstance(self.error, OSError) and self.error.strerror:
            return self.error.strerror
        lines = str(self.error).strip().splitlines()
        return lines[0] if lines else type(self.error).__name__


class _BackgroundWriter:
    """Writes batches on a thread (pyarrow's writers release the GIL), so that encoding and
    disk writes overlap the scoring of the next batch. At most ``depth`` batches wait.
    Whatever the sink raises reaches the caller as :class:`_WriteFailed`."""

    def __init__(self, sink, depth: int = WRITE_QUEUE_DEPTH) -> None:
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dpo-fast-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is None:
                try:
                    self._sink.write_batch(batch)
                except BaseException as exc:  # reported to the main thread
                    self._error = exc

    def write(self, batch) -> None:
        if self._error is not None:
            raise _WriteFailed(self._error)
        self._queue.put(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise _WriteFailed(self._error)
        try:
            self._sink.close()
        except Exception as exc:
            raise _WriteFailed(exc) from exc

    def abort(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._sink.close()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_output_path(out: str, inp: _Input) -> None:
    target = os.path.abspath(out)
    if os.path.isdir(target):
        raise ScoreUsageError(f"--out {out}: is a directory; name the output file")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ScoreUsageError(f"--out {out}: directory {directory} does not exist")
    for path in inp.files:
        if _same_file(path, target):
            raise ScoreUsageError(f"--out {out} is the input file; choose another name")
    # Compared by (device, inode), not by name: through a link, a bind mount or "..", the
    # output's directory (or one above it) may still be one the listing entered.
    ancestor = os.path.realpath(directory)
    while True:
        info = os.stat(ancestor)
        if (info.st_dev, info.st_ino) in inp.directories:
            raise ScoreUsageError(f"--out {out} is inside the input directory, where it "
                                  "would become input of the next run; write it elsewhere")
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            return
        ancestor = parent


# --------------------------------------------------------------------------------------------
# score_dataset: the streaming run.
# --------------------------------------------------------------------------------------------

def _validate_options(batch_rows, on_invalid, quantiles) -> tuple[float, ...]:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ScoreUsageError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    if on_invalid not in ("error", "skip"):
        raise ScoreUsageError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    levels = tuple(float(q) for q in (quantiles or ()))
    for q in levels:
        if not 0.0 <= q <= 1.0:
            raise ScoreUsageError(f"quantile levels must be in [0, 1], got {q!r}")
    return tuple(sorted(set(levels)))


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # optional: no bar rather than no run
        return None
    return tqdm(total=total, unit="pairs", unit_scale=True, file=sys.stderr, delay=0.5,
                dynamic_ncols=True, leave=False)


def score_dataset(source: str, *, out: str | None = None,
                  columns: Mapping[str, str] | str | None = None, reference_free: bool = False,
                  input_format: str | None = None, output_format: str | None = None,
                  batch_rows: int = DEFAULT_BATCH_ROWS, on_invalid: str = "error",
                  quantiles: Sequence[float] | None = DEFAULT_QUANTILES,
                  replace_columns: bool = False, progress: bool = False,
                  **loss_params: Any) -> ScoreSummary:
    """Score a preference dataset file (or directory of files) in bounded memory.

    Parameters
    ----------
    source : str
        A Parquet, Arrow IPC/Feather, CSV or JSON Lines file (text formats may be compressed:
        ``.gz``, ``.bz2``, ``.zst``), or a directory of such files (names starting with ``.``
        or ``_`` are ignored, as pyarrow.dataset does).
    out : str, optional
        Write every scored input row with the columns ``chosen_reward``, ``rejected_reward``,
        ``margin``, ``loss`` (and ``grad_chosen``, ``grad_rejected`` with
        ``compute_grad=True``) added, as float64, in the format of its extension. Written to a
        temporary file and renamed at the end: a failed or interrupted run leaves no partial
        file. It may not be (or be inside) the input.
    columns : mapping or str, optional
        ``{role: column}`` or ``"role=column,..."`` (see :func:`resolve_columns`). Default
        columns: ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps``,
        ``ref_rejected_logps`` (TRL's names).
    reference_free : bool, default False
        Score against a zero reference; without it missing reference columns are an error.
    input_format, output_format : str, optional
        ``parquet``, ``ipc`` (``feather``, ``arrow``), ``csv`` or ``jsonl`` (``json``,
        ``ndjson``), when the extension does not tell.
    batch_rows : int, default 262144
        Rows per record batch: the unit of memory (see the module docstring).
    on_invalid : {"error", "skip"}, default "error"
        A row with a null, non-numeric, NaN or infinite value in a column used (or a
        malformed CSV/JSON line): raise :class:`ScoreDataError` naming file, row and column,
        or skip the row (not written to ``out``) and count it in the summary.
    quantiles : sequence of float or None
        Levels of the margin quantiles to report (exact; None or () for none).
    replace_columns : bool, default False
        Replace input columns named like the added ones; by default that is an error.
    progress : bool, default False
        A tqdm progress bar on stderr (when tqdm is installed).
    **loss_params
        Keyword arguments of :func:`dpo_fast.preference_loss` (``beta``, ``loss_type``,
        ``label_smoothing``, ...), with three meanings specific to a streaming run:
        ``reduction`` (``"mean"`` or ``"sum"``) reduces the summary's ``loss``;
        ``compute_grad=True`` writes the per-pair derivatives as columns; ``n_threads=None``
        with ``out`` uses all CPUs but one, which the writer thread keeps busy.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ScoreUsageError
        Bad options (before any data is read).
    ScoreDataError
        Bad data: the first problem, naming file, row and column.
    """
    started = time.perf_counter()
    levels = _validate_options(batch_rows, on_invalid, quantiles)
    compute_grad = loss_params.get("compute_grad", False)
    inp = _discover(os.fspath(source), input_format)
    out_format = format_of(out, output_format, output=True) if out is not None else None
    if out is not None:
        _check_output_path(out, inp)
    pa = _require_pyarrow()
    schema_names = _first_schema_names(inp)
    roles = resolve_columns(schema_names, columns, reference_free, source=inp.files[0],
                            loss_type=_loss_type_of(loss_params))
    reduction = _check_loss_params(loss_params, [r for r, _ in roles], "dpo-fast score")
    compute_grad = bool(compute_grad)
    batch_params = {k: v for k, v in loss_params.items()
                    if k not in _SUMMARY_PARAMETERS and k != "compute_grad"}
    if out is not None and batch_params.get("n_threads") is None and \
            "n_threads" in _signature().parameters:
        # The writer thread keeps a core busy: a kernel thread on it would wait for it at
        # every OpenMP barrier (measured on 2 cores, 10M rows: the kernel took 0.13-0.26 s
        # with 2 threads, 0.05 s with 1).
        from dpo_fast import _threads

        batch_params["n_threads"] = max(1, _threads.available_cpus() - 1)
    added = ADDED_COLUMNS + (GRAD_COLUMNS if compute_grad else ())
    role_columns = list(dict.fromkeys(column for _, column in roles))
    input_schema = in_schema = out_schema = None
    if out is not None:
        # Every column of every file, one type each: what the output is written with.
        input_schema = _input_schema(inp, role_columns, batch_rows)
        schema_names = input_schema.names
        in_schema, out_schema = _output_schema(pa, input_schema, added)
    clashes = [name for name in added if name in schema_names]
    if out is not None and clashes and not replace_columns:
        raise ScoreDataError(f"the input already has column(s) {', '.join(clashes)}; pass "
                             "--replace-columns to overwrite them", file=inp.files[0])
    # Read as text (CSV) or float64 (JSON Lines): parsed here, so that a bad value is a row to
    # report or skip. In JSON Lines that includes the lengths: a column typed from its values
    # could not hold a bad one.
    text_columns = [column for role, column in roles
                    if role.logps or inp.format in ("csv", "jsonl")]

    parsed_text = inp.format == "csv"
    summary = PartialSummary(levels or None)
    reader = _Reader(inp, None if out is not None else role_columns, batch_rows, text_columns,
                     on_invalid, summary, input_schema)
    # Output arrays are reused; with --out a set is in use until the writer is done with it.
    buffers = BufferRing(WRITE_QUEUE_DEPTH + 3 if out is not None else 1,
                         ("margin",) + added)
    bar = _progress(progress, inp.count_rows() if progress else None)
    try:
        target = _AtomicOutput(out) if out is not None else None
    except OSError as exc:  # e.g. a read-only directory: name --out, not the hidden file
        raise ScoreUsageError(f"--out {out}: cannot create it ({exc.strerror or exc})"
                              ) from None
    writer = None
    try:
        for index, path, first_row, batch in reader:
            def locate(i, path=path, first_row=first_row):
                return path, reader.exact_row(path, first_row + i)

            values = [arrow_values(batch.column(column), role, column, path)
                      for role, column in roles]
            scored = check_and_score(values, batch_params, compute_grad, on_invalid, locate,
                                     buffers)
            if scored.keep is not None:
                row, message = scored.first_skipped
                summary.add_skipped(scored.skipped, (index, locate(row)[1]), message)
                batch = batch.filter(_to_arrow(pa, scored.keep))
            summary.add(scored.outputs, scored.columns[0].values, scored.columns[1].values,
                        scored.metrics)
            if target is not None and batch.num_rows:
                if parsed_text:
                    # CSV role columns were read as text: write the numbers they hold.
                    batch = _with_columns(pa, batch, {c.column: c.values
                                                      for c in scored.columns})
                if writer is None:
                    try:
                        sink = _SINKS[out_format](target.path, out_schema)
                    except Exception as exc:
                        raise _WriteFailed(exc) from exc
                    writer = _BackgroundWriter(sink)
                batch = _conform(pa, batch, in_schema, path)
                arrays = [*batch.columns, *(_to_arrow(pa, scored.outputs[name]) for name in added)]
                writer.write(pa.RecordBatch.from_arrays(arrays, schema=out_schema))
            if bar is not None:
                bar.update(batch.num_rows + sum(scored.skipped.values()))

        def scan(fn, combine):
            # Some margin quantile needs values that were not kept: read the input again (the
            # role columns only) and score it the same way, skipping the same rows.
            result = None
            again = _Reader(inp, role_columns, batch_rows, text_columns, on_invalid,
                            PartialSummary(None))
            for _, path, _, batch in again:
                values = [arrow_values(batch.column(column), role, column, path)
                          for role, column in roles]
                margin = check_and_score(values, batch_params, False, on_invalid,
                                         lambda i, path=path: (path, None)).outputs["margin"]
                if margin.size:
                    part = fn(_order_keys(margin))
                    result = part if result is None else combine(result, part)
            return result

        result = summary.finish(
            reduction, scan=scan, input=inp.source, output=out,
            parameters=effective_parameters(loss_params),
            columns={role.name: column for role, column in roles})
        if writer is not None:
            writer.close()
            writer = None
            try:
                target.commit()
            except OSError as exc:
                raise _WriteFailed(exc) from exc
            target = None
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if target is not None:
            target.abort()
        if isinstance(exc, _WriteFailed):
            # The output format cannot hold these columns (CSV and nested types, say), the
            # disk is full, the file too large for the filesystem.
            raise ScoreDataError(f"cannot write {out_format}: {exc.describe()}",
                                 file=out) from None
        raise
    finally:
        if bar is not None:
            bar.close()
    return _replace(result, seconds=time.perf_counter() - started)


def _replace(summary: ScoreSummary, **changes) -> ScoreSummary:
    import dataclasses

    return dataclasses.replace(summary, **changes)


def _first_schema_names(inp: _Input) -> list[str]:
    """Column names of the first file, without reading its data (but the first block of a text
    file)."""
    pa = _require_pyarrow()
    path = inp.files[0]
    try:
        if inp.format == "parquet":
            import pyarrow.parquet as pq
            return list(pq.ParquetFile(path).schema_arrow.names)
        if inp.format == "ipc":
            with pa.OSFile(path) as source:
                is_file = source.read(6) == b"ARROW1"
                source.seek(0)
                reader = pa.ipc.open_file(source) if is_file else pa.ipc.open_stream(source)
                return list(reader.schema.names)
        if inp.format == "csv":
            return _csv_header(pa, path)
        names: dict[str, None] = {}
        with pa.input_stream(path, compression="detect") as stream:
            lines = stream.read(1 << 20).split(b"\n")
        for line in lines[:1000]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                names.update(dict.fromkeys(record))
        return list(names)
    # ValueError: a corrupted Parquet footer can hold names that are not UTF-8.
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _wrap_arrow_error(exc, path, None, inp.format) from None


# --- The input's schema for --out: every column of every file, each with one type ----------

# Integers a float64 holds exactly: promoting larger ones would change them.
_EXACT_INT = 2**53
# How a CSV column's texts are typed (pass-through columns; role columns are numbers): the
# first type that holds every non-null text of the column in every file, by pyarrow's parsing.
_CSV_LADDER = ("null", "int64", "float64", "string")


class _SchemaBuilder:
    """One schema from the schemas of files or blocks, in order of first appearance: a column
    missing from some of them is null there, int64 and float64 meet at float64 (unless an
    integer beyond 2**53 would change), null meets anything; other type conflicts are an
    error naming the column and both places."""

    def __init__(self, pa) -> None:
        self.pa = pa
        self.types: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        self.big_ints: dict[str, str] = {}

    def add(self, schema, where: str, big_ints: Sequence[str] = ()) -> None:
        pa = self.pa
        for name in big_ints:
            self.big_ints.setdefault(name, where)
        for field_ in schema:
            known = self.types.get(field_.name)
            if known is None:
                self.types[field_.name], self.where[field_.name] = field_.type, where
                continue
            try:
                merged = pa.unify_schemas([pa.schema([pa.field(field_.name, known)]),
                                           pa.schema([field_])],
                                          promote_options="permissive").field(0).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise ScoreDataError(
                    f"column {field_.name!r} is {field_.type} here but {known} in "
                    f"{self.where[field_.name]}; a typed output cannot hold both: convert it "
                    "to one type, or score without --out", file=where) from None
            self.types[field_.name] = merged

    def schema(self):
        pa = self.pa
        for name, kind in self.types.items():
            if pa.types.is_floating(kind) and name in self.big_ints:
                raise ScoreDataError(
                    f"column {name!r} holds integers beyond 2**53 and non-integers elsewhere: "
                    "as float64 the integers would change; convert it to text or score "
                    "without --out", file=self.big_ints[name])
        return pa.schema([pa.field(name, kind) for name, kind in self.types.items()])


def _big_int_columns(pa, table) -> list[str]:
    import pyarrow.compute as pc

    found = []
    for field_, column in zip(table.schema, table.columns):
        if pa.types.is_integer(field_.type) and len(column) and column.null_count < len(column):
            bounds = pc.min_max(column)
            if max(abs(bounds["min"].as_py()), abs(bounds["max"].as_py())) > _EXACT_INT:
                found.append(field_.name)
    return found


def _input_schema(inp: _Input, role_columns: list[str], batch_rows: int):
    """The schema --out writes the input columns with: the same for every file and block.

    Parquet and Arrow IPC: the files' own schemas (metadata only), unified. CSV and JSON
    Lines carry no schema, and a type guessed from the first block would not hold later
    blocks (a key first seen after it dropped, a later ``1.5`` cut to ``1``, text in a column
    empty so far refused): they are read once in full first (the role columns are float64).
    """
    pa = _require_pyarrow()
    builder = _SchemaBuilder(pa)
    for path in inp.files:
        try:
            if inp.format == "parquet":
                import pyarrow.parquet as pq
                builder.add(pq.ParquetFile(path).schema_arrow, path)
            elif inp.format == "ipc":
                with pa.OSFile(path) as source:
                    is_file = source.read(6) == b"ARROW1"
                    source.seek(0)
                    reader = pa.ipc.open_file(source) if is_file else pa.ipc.open_stream(source)
                    builder.add(reader.schema, path)
            elif inp.format == "csv":
                _csv_schema(pa, path, role_columns, batch_rows, builder)
            else:
                _jsonl_schema(pa, path, role_columns, batch_rows, builder)
        except ScoreDataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _wrap_arrow_error(exc, path, None, _FORMAT_NAMES[inp.format]) from None
    return builder.schema().remove_metadata()


def _csv_schema(pa, path, role_columns, batch_rows, builder) -> None:
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    # Every column as text, nulls as pyarrow's CSV reader sees them; malformed rows are
    # passed over here (the scoring pass reports or skips them).
    names = _csv_header(pa, path)
    reader = pacsv.open_csv(
        pa.input_stream(path, compression="detect"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=_csv_block_size(batch_rows)),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                             strings_can_be_null=True))
    ladder = [getattr(pa, kind)() for kind in _CSV_LADDER]
    rank = dict.fromkeys(reader.schema.names, 0)
    big_ints = set()
    for batch in reader:
        for name, column in zip(batch.schema.names, batch.columns):
            if name in role_columns or rank[name] == len(_CSV_LADDER) - 1:
                continue
            texts = pc.drop_null(column)
            if not len(texts):
                continue
            rank[name] = max(rank[name], 1)
            while rank[name] < len(_CSV_LADDER) - 1:
                try:
                    parsed = pc.cast(texts, ladder[rank[name]])
                    if rank[name] == 1 and _big_int_columns(pa, pa.table({name: parsed})):
                        big_ints.add(name)
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    rank[name] += 1
    if any(_CSV_LADDER[rank[n]] == "float64" for n in big_ints):
        # Exact integers and fractions in one column: text keeps both as they were written.
        for name in big_ints:
            rank[name] = len(_CSV_LADDER) - 1
    builder.add(pa.schema([pa.field(name, pa.float64() if name in role_columns else
                                    ladder[rank[name]]) for name in rank]), path)


def _csv_block_size(batch_rows: int) -> int:
    return min(max(batch_rows * 64, 1 << 20), 1 << 26)


def _csv_header(pa, path) -> list[str]:
    """The column names of a CSV file, from its first line."""
    import pyarrow.csv as pacsv

    with pa.input_stream(path, compression="detect") as stream:
        header = stream.read(1 << 20)
    reader = pacsv.open_csv(pa.BufferReader(header.split(b"\n", 1)[0] + b"\n"),
                            read_options=pacsv.ReadOptions(use_threads=False))
    return list(reader.schema.names)


def _jsonl_schema(pa, path, role_columns, batch_rows, builder) -> None:
    role_schema = pa.schema([(c, pa.float64()) for c in role_columns])
    offset = 0
    for chunk in _jsonl_chunks(pa, path, _jsonl_chunk_bytes(batch_rows)):
        where = f"{path} (the lines from row {offset} on)"
        try:
            table = _read_json_chunk(pa, chunk, role_schema, "infer")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Malformed lines (reported or skipped by the scoring pass) or one key holding
            # different kinds of values: type what parses, key by key.
            table = _json_records_table(pa, chunk, role_columns, where)
        # pyarrow puts the explicitly typed columns first: keep the file's order.
        table = table.select(_json_key_order(chunk, table.column_names))
        builder.add(table.schema, where, _big_int_columns(pa, table))
        offset += table.num_rows


def _json_records_table(pa, chunk, role_columns, where):
    columns: dict[str, list] = {}
    records = 0
    for line in chunk.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key in record:
            columns.setdefault(key, [None] * records)
        for key, values in columns.items():
            values.append(record.get(key))
        records += 1
    arrays = {}
    for key, values in columns.items():
        if key in role_columns:
            arrays[key] = pa.nulls(records, pa.float64())
            continue
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            kinds = sorted({type(v).__name__ for v in values if v is not None})
            raise ScoreDataError(
                f"column {key!r} holds values of different kinds ({', '.join(kinds)}); a typed "
                "output cannot keep them as they are: make them one kind, or score without "
                "--out", file=where) from None
    return pa.table(arrays) if arrays else pa.table({})


def _output_schema(pa, schema, added):
    """Input columns (minus replaced ones and file-level metadata: pandas' index metadata
    would not match the rows after skipping) followed by the added float64 columns."""
    kept = pa.schema([f for f in schema if f.name not in added])
    out = pa.schema(list(kept) + [pa.field(name, pa.float64(), nullable=False)
                                  for name in added])
    return kept, out


def _with_columns(pa, batch, replacements):
    """``batch`` with the named columns replaced by arrays (same length)."""
    arrays, fields = [], []
    for field_, column in zip(batch.schema, batch.columns):
        if field_.name in replacements:
            column = _to_arrow(pa, replacements[field_.name])
            field_ = pa.field(field_.name, column.type)
        arrays.append(column)
        fields.append(field_)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _conform(pa, batch, schema, path):
    """The batch's input columns as ``schema`` (the whole input's, from _input_schema): a
    column the batch's file lacks is null, a narrower type is widened."""
    if batch.schema.equals(schema):
        return batch
    arrays = []
    for field_ in schema:
        index = batch.schema.get_field_index(field_.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field_.type))
            continue
        column = batch.column(index)
        if column.type != field_.type:
            try:
                column = column.cast(field_.type)
            except (pa.ArrowException, ValueError) as exc:
                raise ScoreDataError(f"column {field_.name!r} cannot be written as "
                                     f"{field_.type}: {exc}", file=path) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------------------------
# The `dpo-fast score` command.
# --------------------------------------------------------------------------------------------

def _quantile_levels(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(not 0.0 <= q <= 1.0 for q in levels):
        raise argparse.ArgumentTypeError(f"levels must be in [0, 1]: {text!r}")
    return levels


def _positive_int(text: str) -> int:
    try:
        value = float(text)  # 1e6 is fine
    except ValueError:
        value = math.nan
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(value)


def example_path() -> contextlib.AbstractContextManager[str]:
    """Context manager giving a filesystem path of the synthetic example shipped in the
    package (``dpo-fast score --example``)."""
    from importlib import resources

    resource = resources.files("dpo_fast").joinpath("data", "example_pairs.jsonl")

    @contextlib.contextmanager
    def path():
        with resources.as_file(resource) as real:
            yield os.fspath(real)

    return path()


# What a few preference_loss parameters mean for a streaming run (the help text of the others
# is their docstring's first sentence).
_CLI_NOTES = {
    "label_smoothing": " Label smoothing of conservative DPO.",
    "reduction": " Here: how the summary's loss reduces (mean or sum).",
    "compute_grad": " Here: the per-pair derivatives, written as columns grad_chosen and "
                    "grad_rejected of --out.",
    "n_threads": " Threads of the loss kernel; default: the CPUs this process may use.",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``dpo-fast score``'s options, the loss parameters read from preference_loss."""
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="Parquet, Arrow IPC/Feather, CSV or JSON Lines file, or a "
                             "directory of them")
    parser.add_argument("--out", metavar="OUTPUT",
                        help="write the input rows with chosen_reward, rejected_reward, "
                             "margin, loss (and gradients with --grad) added; format from the "
                             "extension; written atomically, never over the input")
    parser.add_argument("--example", action="store_true",
                        help="score the small synthetic example shipped with dpo_fast")
    parser.add_argument("--columns", action="append", metavar="ROLE=COLUMN,...",
                        help="column names: chosen, rejected, ref_chosen, ref_rejected, "
                             "chosen_length, rejected_length (default: chosen_logps, "
                             "rejected_logps, ref_chosen_logps, ref_rejected_logps, ...)")
    parser.add_argument("--reference-free", action="store_true",
                        help="score against a zero reference (reference columns not read)")
    parser.add_argument("--input-format", metavar="FORMAT",
                        help="parquet, ipc (feather), csv or jsonl, if the extension does "
                             "not tell")
    parser.add_argument("--output-format", metavar="FORMAT",
                        help="format of --out, if its extension does not tell")
    parser.add_argument("--batch-rows", type=_positive_int, default=DEFAULT_BATCH_ROWS,
                        metavar="N", help=f"rows per record batch, the unit of memory "
                                          f"(default {DEFAULT_BATCH_ROWS})")
    parser.add_argument("--on-invalid", choices=("error", "skip"), default="error",
                        help="a row with a null/non-numeric/NaN/inf value or a malformed "
                             "line: stop with an error naming it (default), or skip it and "
                             "report the count")
    parser.add_argument("--quantiles", type=_quantile_levels, metavar="Q,Q,...|none",
                        default=DEFAULT_QUANTILES,
                        help="margin quantile levels, exact (default: 0,.01,.05,.25,.5,.75,"
                             ".95,.99,1)")
    parser.add_argument("--replace-columns", action="store_true",
                        help="replace input columns named like the added ones (default: "
                             "error)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        dest="summary_format", help="summary on stdout (default: table)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on a Dask cluster (distributed scheduler address) through "
                             "dpo_fast.dask; needs dpo_fast[dask]")
    group = parser.add_argument_group(
        "loss parameters", "keyword arguments of dpo_fast.preference_loss; an option not given "
                           "keeps preference_loss's default")
    # A future preference_loss parameter named like one of the options above gets a prefix.
    taken = {flag for action in parser._actions for flag in action.option_strings}
    for option in loss_options():
        flag = option.flag if option.flag not in taken else "--loss-" + option.flag[2:]
        help_text = option.help.replace("``", "")
        names = sorted(getattr(_losses, "LOSS_TYPES", ()))
        if option.parameter == "loss_type" and not all(n in help_text for n in names):
            help_text += f" One of: {', '.join(names)}."
        help_text += _CLI_NOTES.get(option.parameter, "")
        help_text = f"{help_text} (default: {option.default!r})".strip().replace("%", "%%")
        if option.kind == "bool":
            group.add_argument(flag, dest=option.dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        item = re.sub(r"^list\[|\]$", "", option.kind.split("|")[-1]).upper()
        group.add_argument(flag, dest=option.dest, type=option.parse, default=argparse.SUPPRESS,
                           metavar=item + (",..." if "list" in option.kind else ""),
                           help=help_text)


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM as an exception in the main thread, so that temporary files are removed."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _json_numbers(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "inf", "-inf" and "nan": JSON has no
    such numbers (Python's own json would write the invalid ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(item) for item in value]
    return value


def run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``dpo-fast score`` for parsed options.

    Returns
    -------
    int
        0, or 1 for a data error (one line on stderr naming file, row and column); usage
        errors exit with status 2 through ``parser.error``.
    """
    if args.example and args.input:
        parser.error("give INPUT or --example, not both")
    if not args.example and not args.input:
        parser.error("INPUT is required (or --example for the shipped sample)")
    params = {option.parameter: getattr(args, option.dest) for option in loss_options()
              if hasattr(args, option.dest)}
    options = dict(out=args.out, columns=args.columns, reference_free=args.reference_free,
                   input_format=args.input_format, output_format=args.output_format,
                   batch_rows=args.batch_rows, on_invalid=args.on_invalid,
                   quantiles=args.quantiles, replace_columns=args.replace_columns)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_terminate_cleanly())
            source = stack.enter_context(example_path()) if args.example else args.input
            if args.scheduler:
                from dpo_fast import dask as dpo_dask

                summary = dpo_dask._run_cli(args.scheduler, source, params=params, **options)
            else:
                summary = score_dataset(
                    source, progress=not args.quiet and sys.stderr.isatty(), **options,
                    **params)
            if args.example:
                summary = _replace(summary, input="example (synthetic): "
                                   + os.path.basename(source))
    except ScoreUsageError as exc:
        parser.error(str(exc))
    except ImportError as exc:
        parser.error(str(exc))
    except ScoreDataError as exc:
        print(f"dpo-fast score: error: {exc}", file=sys.stderr)
        return _EXIT_DATA
    except MemoryError:
        print(f"dpo-fast score: error: out of memory with --batch-rows {args.batch_rows}; "
              "lower it (memory grows with the rows of one batch)", file=sys.stderr)
        return _EXIT_DATA
    if args.summary_format == "json":
        json.dump(_json_numbers(summary.to_dict()), sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(summary.format_table())
    if summary.skipped:
        print(f"dpo-fast score: skipped {summary.skipped:,} invalid rows "
              f"(first: {summary.first_skipped})", file=sys.stderr)
    return 0
