"""Reading: the files of an input and their format, and per-format streaming readers.

A directory is walked (:func:`discover`); each file is streamed by its format's own pyarrow
reader (:class:`BatchReader`), small batches coalesced up to ``batch_rows``.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dpo_fast.score.columns import describe_invalid
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError, require_pyarrow
from dpo_fast.score.summary import PartialSummary

__all__ = ["FORMAT_NAMES", "INPUT_FORMATS", "OUTPUT_FORMATS", "BatchReader", "InputFiles",
           "arrow_error", "column_names", "csv_block_size", "csv_header", "discover",
           "format_of", "json_key_order", "jsonl_chunk_bytes", "jsonl_chunks",
           "read_json_chunk"]

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
class InputFiles:
    source: str
    files: list[str]
    format: str
    # (device, inode) of every directory the listing entered: what --out must stay out of.
    directories: frozenset[tuple[int, int]] = frozenset()

    def count_rows(self) -> int | None:
        """Rows, when the files' metadata tells it cheaply (Parquet, Arrow IPC files)."""
        pa = require_pyarrow()
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


def discover(source: str, input_format: str | None) -> InputFiles:
    """The files of ``source`` (a file, or a directory walked by :func:`_list_directory`) and
    their format."""
    if not os.path.exists(source):
        raise ScoreDataError("no such file or directory", file=source)
    if not os.path.isdir(source):
        return InputFiles(source, [source], format_of(source, input_format))
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
    return InputFiles(source, files, fmt, directories)


def arrow_error(exc: Exception, file: str, row: int | None, what: str) -> ScoreDataError:
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
    pa = require_pyarrow()
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
            raise arrow_error(exc, path, offset, f"Parquet (batch {number}, "
                                    "from this row on)") from None
        yield offset, batch
        offset += batch.num_rows


def _read_ipc(path, columns, batch_rows, **_):
    pa = require_pyarrow()
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
                raise arrow_error(exc, path, offset, f"Arrow IPC (record batch {number}, "
                                        "from this row on)") from None
            for start in range(0, batch.num_rows, batch_rows):
                part = batch.slice(start, batch_rows)
                yield offset, part
                offset += part.num_rows


def _read_csv(path, columns, batch_rows, role_columns, csv_skips, schema=None, **_):
    pa = require_pyarrow()
    import pyarrow.csv as pacsv

    # Role columns are read as text and parsed here, so that a bad value is a row to report
    # (or skip), not a failure of the whole block. The other columns, when read, get the types
    # of the whole input (input_schema), not ones guessed from the first block. Serial
    # parsing: pyarrow only numbers the rows it rejects when it parses in order.
    types = {f.name: f.type for f in schema} if schema is not None else {}
    types.update((c, pa.string()) for c in role_columns)
    convert = pacsv.ConvertOptions(column_types=types,
                                   include_columns=list(columns) if columns else None)
    reader = pacsv.open_csv(
        pa.input_stream(path, compression="detect"),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=csv_block_size(batch_rows)),
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


def jsonl_chunk_bytes(batch_rows: int) -> int:
    return min(max(batch_rows * 128, 1 << 20), 1 << 26)


def jsonl_chunks(pa, path, chunk_bytes) -> Iterator[bytes]:
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


def read_json_chunk(pa, chunk, schema, unexpected):
    import pyarrow.json as pajson

    # One block for the whole chunk: with pyarrow's default 1 MiB blocks, a longer line fails
    # ("straddling object") although it is valid.
    return pajson.read_json(
        pa.BufferReader(chunk), read_options=pajson.ReadOptions(block_size=len(chunk) + 1),
        parse_options=pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior=unexpected))


def _read_jsonl(path, columns, batch_rows, role_columns, on_invalid, skips,
                file_index=0, schema=None, bool_columns=(), **_):
    """JSON Lines in chunks of whole lines parsed by pyarrow; a chunk pyarrow rejects is
    re-read line by line in Python to name (or skip) the exact bad line. pyarrow's own row
    numbers in JSON errors count from the start of an internal block, not of the file.

    ``schema`` (every column, from :func:`input_schema`) is given when all columns are read.
    Otherwise only the role columns are, as float64; other keys are not parsed at all."""
    pa = require_pyarrow()
    role_types = {c: pa.float64() for c in role_columns}
    role_types.update((c, pa.bool_()) for c in bool_columns)  # unpaired labels
    offset = 0
    for chunk in jsonl_chunks(pa, path, jsonl_chunk_bytes(batch_rows)):
        try:
            if schema is not None:
                table = read_json_chunk(pa, chunk, schema, "ignore")
                table = table.select(schema.names).cast(schema)
            else:
                table = read_json_chunk(pa, chunk, pa.schema(list(role_types.items())),
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


def json_key_order(chunk: bytes, names: list[str]) -> list[str]:
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
            for column, kind in role_types.items():
                value = record.get(column)
                if value is None:
                    problem = ("null", column, describe_invalid("null", None))
                elif kind == pa.bool_():
                    if not isinstance(value, bool):
                        problem = ("non-boolean", column,
                                   describe_invalid("non-boolean", value))
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    problem = ("non-numeric", column, describe_invalid("non-numeric", value))
                elif not math.isfinite(value):
                    problem = ("non-finite", column, describe_invalid("non-finite", value))
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
        raise arrow_error(error, path, offset, "JSON Lines (from this row on)")
    if not good:
        return None, records
    return pa.Table.from_pylist(good, schema=schema if schema is not None else
                                pa.schema(list(role_types.items()))), records


_READERS = {"parquet": _read_parquet, "ipc": _read_ipc, "csv": _read_csv, "jsonl": _read_jsonl}


def _concat_batches(pa, batches):
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


FORMAT_NAMES = {"parquet": "Parquet", "ipc": "Arrow IPC", "csv": "CSV", "jsonl": "JSON Lines"}


class BatchReader:
    """The record batches of an input, file after file: ``(file index, file, first row,
    batch)``, small batches coalesced up to ``batch_rows``.

    ``text_columns`` are read as text (CSV) or float64 (JSON Lines) so that a bad value is a
    row to report or skip rather than a failure of a whole block; ``bool_columns`` (JSON
    Lines: unpaired labels) as booleans, a line holding anything else reported or skipped.
    Rows skipped while parsing (malformed CSV/JSON lines, under ``on_invalid="skip"``) are
    recorded in ``skip_log``.
    """

    def __init__(self, inp: InputFiles, columns: list[str] | None, batch_rows: int,
                 text_columns: list[str], on_invalid: str, skip_log: PartialSummary,
                 schema=None, bool_columns: list[str] = ()) -> None:
        self.inp, self.columns, self.batch_rows = inp, columns, batch_rows
        self.bool_columns = list(bool_columns)
        self.text_columns, self.on_invalid, self.skip_log = text_columns, on_invalid, skip_log
        self.schema = schema  # of every column (from input_schema) when all are read
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
        pa = require_pyarrow()
        for index, path in enumerate(self.inp.files):
            csv_skips = None
            if self.inp.format == "csv":
                csv_skips = self.csv_skips[path] = _CsvSkips(self.on_invalid == "skip")
            reader = _READERS[self.inp.format](
                path, columns=self.columns, batch_rows=self.batch_rows,
                role_columns=self.text_columns, on_invalid=self.on_invalid,
                skips=self.skip_log, csv_skips=csv_skips, file_index=index,
                schema=self.schema, bool_columns=self.bool_columns)
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
                    raise arrow_error(
                        exc, path, None, f"{FORMAT_NAMES[self.inp.format]} (at or after "
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


def column_names(inp: InputFiles) -> list[str]:
    """Column names of the first file, without reading its data (but the first block of a text
    file)."""
    pa = require_pyarrow()
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
            return csv_header(pa, path)
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
        raise arrow_error(exc, path, None, inp.format) from None


def csv_block_size(batch_rows: int) -> int:
    return min(max(batch_rows * 64, 1 << 20), 1 << 26)


def csv_header(pa, path) -> list[str]:
    """The column names of a CSV file, from its first line."""
    import pyarrow.csv as pacsv

    with pa.input_stream(path, compression="detect") as stream:
        header = stream.read(1 << 20)
    reader = pacsv.open_csv(pa.BufferReader(header.split(b"\n", 1)[0] + b"\n"),
                            read_options=pacsv.ReadOptions(use_threads=False))
    return list(reader.schema.names)
