"""The input's schema for ``--out``: every column of every file, each with one type, and
record batches conformed to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dpo_fast.score.arrow import to_arrow
from dpo_fast.score.errors import ScoreDataError, require_pyarrow
from dpo_fast.score.readers import (
    FORMAT_NAMES,
    InputFiles,
    arrow_error,
    csv_block_size,
    csv_header,
    json_key_order,
    jsonl_chunk_bytes,
    jsonl_chunks,
    read_json_chunk,
)

__all__ = ["conform", "input_schema", "output_schema", "with_columns"]

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


def input_schema(inp: InputFiles, role_columns: list[str], batch_rows: int,
                 bool_columns: Sequence[str] = ()):
    """The schema --out writes the input columns with: the same for every file and block.

    Parquet and Arrow IPC: the files' own schemas (metadata only), unified. CSV and JSON
    Lines carry no schema, and a type guessed from the first block would not hold later
    blocks (a key first seen after it dropped, a later ``1.5`` cut to ``1``, text in a column
    empty so far refused): they are read once in full first (the role columns are float64;
    ``bool_columns``, unpaired labels in JSON Lines, boolean: a bad value there is a row).
    """
    pa = require_pyarrow()
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
                _jsonl_schema(pa, path, role_columns, batch_rows, builder, bool_columns)
        except ScoreDataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise arrow_error(exc, path, None, FORMAT_NAMES[inp.format]) from None
    return builder.schema().remove_metadata()


def _csv_schema(pa, path, role_columns, batch_rows, builder) -> None:
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    # Every column as text, nulls as pyarrow's CSV reader sees them; malformed rows are
    # passed over here (the scoring pass reports or skips them).
    names = csv_header(pa, path)
    reader = pacsv.open_csv(
        pa.input_stream(path, compression="detect"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=csv_block_size(batch_rows)),
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


def _jsonl_schema(pa, path, role_columns, batch_rows, builder, bool_columns=()) -> None:
    role_types = {**{c: pa.float64() for c in role_columns},
                  **{c: pa.bool_() for c in bool_columns}}
    role_schema = pa.schema(list(role_types.items()))
    offset = 0
    for chunk in jsonl_chunks(pa, path, jsonl_chunk_bytes(batch_rows)):
        where = f"{path} (the lines from row {offset} on)"
        try:
            table = read_json_chunk(pa, chunk, role_schema, "infer")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Malformed lines (reported or skipped by the scoring pass) or one key holding
            # different kinds of values: type what parses, key by key.
            table = _json_records_table(pa, chunk, role_types, where)
        # pyarrow puts the explicitly typed columns first: keep the file's order.
        table = table.select(json_key_order(chunk, table.column_names))
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
        if key in role_columns:  # a mapping of the role columns to their types
            arrays[key] = pa.nulls(records, role_columns[key])
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


def output_schema(pa, schema, added):
    """Input columns (minus replaced ones and file-level metadata: pandas' index metadata
    would not match the rows after skipping) followed by the added float64 columns."""
    kept = pa.schema([f for f in schema if f.name not in added])
    out = pa.schema(list(kept) + [pa.field(name, pa.float64(), nullable=False)
                                  for name in added])
    return kept, out


def with_columns(pa, batch, replacements):
    """``batch`` with the named columns replaced by arrays (same length)."""
    arrays, fields = [], []
    for field_, column in zip(batch.schema, batch.columns):
        if field_.name in replacements:
            column = to_arrow(pa, replacements[field_.name])
            field_ = pa.field(field_.name, column.type)
        arrays.append(column)
        fields.append(field_)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def conform(pa, batch, schema, path):
    """The batch's input columns as ``schema`` (the whole input's, from input_schema): a
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


