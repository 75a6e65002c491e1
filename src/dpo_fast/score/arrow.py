"""Arrow arrays to and from NumPy: column values of a record batch as :class:`ColumnValues`.

Text (CSV) is parsed as numbers here, so that a bad value is a row to report or skip. The
conversions avoid ``Array.to_numpy`` / ``pyarrow.array``, which import pandas on first use.
"""

from __future__ import annotations

import numpy as np

from dpo_fast.score.columns import ColumnRole, ColumnValues
from dpo_fast.score.errors import ScoreDataError, require_pyarrow

__all__ = ["LABEL_TYPE_FIX", "arrow_labels", "arrow_values", "text_labels", "to_arrow"]

_NUMBER_PATTERN = (r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
                   r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])$")

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
        pc.cast(strings.take(to_arrow(pa, good)), pa.float64())
    except (pa.ArrowInvalid, ValueError):
        suspects = np.arange(count)
    stack = [suspects]
    while stack:
        rows = stack.pop()
        if rows.size == 0:
            continue
        try:
            pc.cast(strings.take(to_arrow(pa, rows)), pa.float64())
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


def to_arrow(pa, values: np.ndarray):
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
    pa = require_pyarrow()
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
            array = pc.if_else(to_arrow(pa, empty), pa.scalar(None, array.type), array)
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
            numbers = pc.cast(pc.if_else(to_arrow(pa, replace), "0", strings), pa.float64())
        values = _numpy_view(pa, numbers)
        if not role.logps and values.size and np.all(values == np.round(values)) \
                and np.all(np.abs(values) < 2.0**53):
            values = values.astype(np.int64)  # lengths written as text stay integers
        out.values = values
        return out
    raise ScoreDataError(f"has type {kind}, which holds no numbers (every row)", file=source,
                         column=column)




# The one message for a label column of a type that holds no booleans (also dpo_fast.dask's).
LABEL_TYPE_FIX = ("is not boolean; the label column holds true (desirable) or false "
                  "(undesirable), TRL's unpaired format: write it as booleans (0/1 and other "
                  "numbers are refused, not guessed)")
_TRUE, _FALSE = "true", "false"


def text_labels(lowered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, not-a-boolean mask) of trimmed, lower-cased label texts: "true" / "false"
    (CSV's booleans, as pyarrow, pandas and Python write them), every other text refused
    (dpo_fast.dask's rule; the Arrow path below computes the same with pyarrow.compute)."""
    values = lowered == _TRUE
    return values, ~(values | (lowered == _FALSE))


def arrow_labels(array, role: ColumnRole, column: str, source: str | None) -> ColumnValues:
    """A label column as :class:`ColumnValues` of bool: Arrow booleans as they are, text
    (CSV, or a string column) ``true``/``false`` in any case; nulls and other texts masked.
    Any other type (integers, floats, ...) raises ScoreDataError for the whole column."""
    pa = require_pyarrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    out = ColumnValues(role, column, np.zeros(len(array), dtype=bool),
                       raw=lambda i, a=array: a[i].as_py())
    if array.null_count:
        out.null = _numpy_bools(pa, array.is_null())
    if pa.types.is_null(kind):
        return out
    if pa.types.is_boolean(kind):
        out.values = _numpy_bools(pa, array.fill_null(False) if array.null_count else array)
        return out
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or \
            str(kind) == "string_view":
        import pyarrow.compute as pc

        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(array.cast(pa.string())))

        def mask(text):
            return _numpy_bools(pa, pc.equal(lowered, text).fill_null(False))

        out.values, false, empty = mask(_TRUE), mask(_FALSE), mask("")
        bad = ~(out.values | false | empty)
        if out.null is not None:
            bad &= ~out.null
        if empty.any():  # an empty CSV field is a missing value
            out.null = empty if out.null is None else out.null | empty
        if bad.any():
            out.non_boolean = bad
        return out
    raise ScoreDataError(f"has type {kind}, which {LABEL_TYPE_FIX}", file=source,
                         column=column)
