"""`dpo-fast score` against corrupted binary files (issue 18): a deterministic fuzz pass.

From small valid inputs -- Parquet (snappy, 3 row groups; and uncompressed with data page v2),
an Arrow IPC file (3 record batches) and a zstd-compressed IPC stream, with pass-through
columns of several types (int64, string, list<int64>, float32, dictionary-encoded string, some
nulls) -- corrupted variants are derived with a seeded ``random.Random``:

* bytes flipped, set to 0xFF or zeroed (single bytes and short runs) in the footer (Parquet:
  the last 8 + footer-length bytes; IPC file: the footer flatbuffer and its length) and in
  the middle (Parquet page headers and page data; IPC schema, dictionary and record batch
  metadata and bodies);
* truncations at fixed and random points (message and page boundaries included);
* structured corruptions: the Parquet footer length (0, huge, ...), the magic bytes, integers
  of the Thrift footer and of page headers, the Arrow schema stored in the Parquet metadata;
  for IPC: message and body lengths, a record batch's row count, field node lengths and null
  counts, buffer offsets and lengths, string and list offset entries, dictionary indices and
  ids, compressed buffers' length prefixes, the file footer's blocks and its length;
* damage that passes a reader's own checks: a field name or a string value that is not UTF-8,
  Parquet dictionary indices past the dictionary.

Every variant is scored without ``--out`` and with ``--out`` in each output format (Parquet,
CSV, JSON Lines, Arrow IPC; these runs print the summary as JSON). The promise checked: exit
status 0 (then a summary is printed and the output file reads back with pyarrow, passes full
validation -- UTF-8, offsets, dictionary indices -- and has one row per pair scored) or 1/2
with one ``dpo-fast score: error:`` line on stderr and no traceback, the output file absent
and nothing left next to it; never a signal, never a hang, no thread left running.

Harness: starting a Python with pyarrow costs far more than scoring a 60-row file, so the
jobs run in chunks inside a child process (:data:`DRIVER`) that calls ``dpo_fast.cli.main``
once per job with its stdout/stderr redirected (at the file-descriptor level, so that output
of native code is seen too) and reports ``begin``/``end`` lines on a pipe. A signal or a hang
is attributed to the job that began and did not end (faulthandler writes the Python frames to
that job's stderr); the job is then re-run alone with ``python -m dpo_fast`` to confirm (when
it runs clean alone, the jobs the same child ran just before it are re-run one by one: the
state one left behind may be the cause), and the rest of the chunk goes on in a new child.
Every problem is collected; the test fails once with the whole list, grouped by origin, each
group with a variant that reproduces it (its description says how it was made).

``DPO_FAST_FUZZ_SCALE`` (as in test_fuzz_*.py) scales the number of random and sampled
structured variants (scale 1: ~430 variants, ~2,200 runs, ~25 s on 2 cores);
``DPO_FAST_FUZZ_FILES_REPORT=PATH`` writes the findings as JSON.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_score import make_pairs, read
from test_score_hostile import PACKAGE_PARENT, _cli, _one_line_error

SCALE = float(os.environ.get("DPO_FAST_FUZZ_SCALE", "1"))
REPORT = os.environ.get("DPO_FAST_FUZZ_FILES_REPORT")
ROWS, GROUP = 60, 25  # 3 row groups / record batches: 25, 25, 10 rows
OUTPUTS = (None, "parquet", "csv", "jsonl", "arrow")  # None: no --out
CHUNK = 120  # jobs per child process
JOB_TIMEOUT = 60.0  # seconds one job may take before it counts as a hang (a job takes ~10 ms)
ALONE_TIMEOUT = 15.0  # for the re-run of a crashing or hanging job alone (~1 s normally)
CONFIRMED = 3  # crashes or hangs re-run alone at most (one per origin): the rest is the same


def _count(n: float) -> int:
    return max(1, int(n * SCALE))


# --------------------------------------------------------------------------------------------
# The valid inputs
# --------------------------------------------------------------------------------------------

def _table(reference: bool, lists: bool) -> pa.Table:
    data = make_pairs(ROWS, seed=7, reference=reference)
    rng = np.random.default_rng(7)
    columns = {
        "id": pa.array(data["id"]),
        "prompt": pa.array([None if i % 11 == 3 else str(p) for i, p in
                            enumerate(data["prompt"])]),
    }
    if lists:
        columns["tokens"] = pa.array([None if i % 13 == 5 else list(range(i % 6))
                                      for i in range(ROWS)], pa.list_(pa.int64()))
    weight = rng.random(ROWS).astype(np.float32)
    columns["weight"] = pa.array(weight, mask=np.arange(ROWS) % 17 == 2)
    columns["label"] = pa.array([("good", "bad", "tie")[i % 3] for i in range(ROWS)]
                                ).dictionary_encode()
    for name in data:
        if name.endswith("logps"):
            columns[name] = pa.array(data[name])
    return pa.table(columns)


def _ipc(table: pa.Table, stream: bool, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=GROUP)
    return sink.getvalue().to_pybytes()


def _parquet(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=GROUP, **options)
    return sink.getvalue().to_pybytes()


@dataclasses.dataclass(frozen=True)
class Base:
    name: str
    kind: str  # "parquet", "ipc-file" or "ipc-stream"
    ext: str
    data: bytes
    schema: pa.Schema
    flags: tuple[str, ...]  # options every run of this input needs


def _bases() -> dict[str, Base]:
    full = _table(reference=True, lists=True)
    free = _table(reference=False, lists=True)
    flat_free = _table(reference=False, lists=False)
    flat = _table(reference=True, lists=False)
    bases = [
        Base("parquet", "parquet", ".parquet", _parquet(full), full.schema, ()),
        Base("parquet-plain", "parquet", ".parquet",
             _parquet(flat_free, compression="none", data_page_version="2.0"),
             flat_free.schema, ("--reference-free",)),
        Base("ipc-file", "ipc-file", ".arrow", _ipc(free, stream=False), free.schema,
             ("--reference-free",)),
        Base("ipc-stream-zstd", "ipc-stream", ".arrows", _ipc(flat, stream=True,
                                                              compression="zstd"),
             flat.schema, ()),
    ]
    return {base.name: base for base in bases}


# --------------------------------------------------------------------------------------------
# Mutations: each variant is its bytes and a description that reproduces it
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    base: str
    how: str  # how it was made from the base bytes: the reproduction
    data: bytes


def _patch(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


def _byte_op(rng: random.Random, data: bytes, lo: int, hi: int, region: str,
             base: str) -> Variant:
    """One random byte corruption in data[lo:hi]: a bit flipped, or a run of 1-8 bytes set to
    0xFF or to zero."""
    pos = rng.randrange(lo, hi)
    op = rng.choice(("flip", "flip", "ff", "zero"))
    if op == "flip":
        bit = rng.randrange(8)
        new = bytes([data[pos] ^ (1 << bit)])
        how = f"{region}: byte {pos} ^= 0x{1 << bit:02x}"
    else:
        run = 1 if rng.random() < 0.6 else rng.randint(2, 8)
        run = min(run, len(data) - pos)
        new = (b"\xff" if op == "ff" else b"\x00") * run
        how = f"{region}: bytes {pos}..{pos + run - 1} := 0x{new[0]:02x}"
    return Variant(base, how, _patch(data, pos, new))


def _sample(rng: random.Random, candidates: list[Variant], k: float) -> list[Variant]:
    """``k`` (scaled) of ``candidates``, in their order; all of them at a large enough scale."""
    count = _count(k)
    if count >= len(candidates):
        return candidates
    return [candidates[i] for i in sorted(rng.sample(range(len(candidates)), count))]


def _truncations(rng: random.Random, base: str, data: bytes, marks: dict[str, int]
                 ) -> list[Variant]:
    size = len(data)
    cuts = {"empty": 0, "1 byte": 1, "4 bytes": 4, "8 bytes": 8, "a quarter": size // 4,
            "half": size // 2, "all but 1 byte": size - 1, "all but 4 bytes": size - 4,
            "all but 8 bytes": size - 8, "all but 10 bytes": size - 10}
    cuts.update(marks)
    for _ in range(_count(6)):
        point = rng.randrange(1, size)
        cuts[f"random point {point}"] = point
    return [Variant(base, f"truncated to {at} bytes ({what})", data[:at])
            for what, at in cuts.items() if 0 <= at < size]


# --- Thrift compact protocol (the Parquet footer and page headers) ---------------------------

THRIFT = {
    "FileMetaData": {1: "version", 2: ("schema", "SchemaElement"), 3: "num_rows",
                     4: ("row_groups", "RowGroup"), 5: ("key_value_metadata", "KeyValue"),
                     6: "created_by", 7: ("column_orders", None)},
    "RowGroup": {1: ("columns", "ColumnChunk"), 2: "total_byte_size", 3: "num_rows",
                 4: ("sorting_columns", None), 5: "file_offset", 6: "total_compressed_size",
                 7: "ordinal"},
    "ColumnChunk": {1: "file_path", 2: "file_offset", 3: ("meta_data", "ColumnMetaData"),
                    4: "offset_index_offset", 5: "offset_index_length",
                    6: "column_index_offset", 7: "column_index_length"},
    "ColumnMetaData": {1: "type", 2: "encodings", 3: "path_in_schema", 4: "codec",
                       5: "num_values", 6: "total_uncompressed_size",
                       7: "total_compressed_size", 8: ("key_value_metadata", "KeyValue"),
                       9: "data_page_offset", 10: "index_page_offset",
                       11: "dictionary_page_offset", 12: ("statistics", "Statistics"),
                       13: ("encoding_stats", "PageEncodingStats"), 14: "bloom_filter_offset",
                       15: "bloom_filter_length", 16: ("size_statistics", None)},
    "SchemaElement": {1: "type", 2: "type_length", 3: "repetition_type", 4: "name",
                      5: "num_children", 6: "converted_type", 7: "scale", 8: "precision",
                      9: "field_id", 10: ("logicalType", None)},
    "Statistics": {1: "max", 2: "min", 3: "null_count", 4: "distinct_count", 5: "max_value",
                   6: "min_value"},
    "KeyValue": {1: "key", 2: "value"},
    "PageEncodingStats": {1: "page_type", 2: "encoding", 3: "count"},
    "PageHeader": {1: "type", 2: "uncompressed_page_size", 3: "compressed_page_size", 4: "crc",
                   5: ("data_page_header", "DataPageHeader"),
                   7: ("dictionary_page_header", "DictionaryPageHeader"),
                   8: ("data_page_header_v2", "DataPageHeaderV2")},
    "DataPageHeader": {1: "num_values", 2: "encoding", 3: "definition_level_encoding",
                       4: "repetition_level_encoding", 5: ("statistics", "Statistics")},
    "DictionaryPageHeader": {1: "num_values", 2: "encoding", 3: "is_sorted"},
    "DataPageHeaderV2": {1: "num_values", 2: "num_nulls", 3: "num_rows", 4: "encoding",
                         5: "definition_levels_byte_length", 6: "repetition_levels_byte_length",
                         7: "is_compressed", 8: ("statistics", "Statistics")},
}
# The integers worth more than a random pick: counts, sizes, offsets, types.
KEY_INTS = {"num_rows", "num_values", "num_nulls", "num_children", "type", "repetition_type",
            "converted_type", "type_length", "total_compressed_size", "data_page_offset",
            "dictionary_page_offset", "file_offset", "total_uncompressed_size", "codec",
            "uncompressed_page_size", "compressed_page_size", "encoding", "null_count",
            "definition_levels_byte_length", "repetition_levels_byte_length", "encodings"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if n < 0 else n << 1


def _encode_varint(n: int, length: int | None = None) -> bytes:
    """``n`` (unsigned) as a varint; with ``length``, in exactly that many bytes (masked)."""
    out = bytearray()
    if length is not None:
        n &= (1 << (7 * length)) - 1
        for i in range(length):
            out.append((n & 0x7F) | (0x80 if i < length - 1 else 0))
            n >>= 7
        return bytes(out)
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


@dataclasses.dataclass(frozen=True)
class ThriftInt:
    name: str  # e.g. FileMetaData.row_groups[1].columns[3].meta_data.data_page_offset
    field: str  # the last name: data_page_offset
    start: int
    end: int
    value: int
    length_prefix: bool  # a binary's length, not an integer field


def _thrift_struct(data, pos, struct_name, name, out):
    names = THRIFT.get(struct_name or "", {})
    last = 0
    while True:
        header = data[pos]
        pos += 1
        if header == 0:
            return pos
        kind, delta = header & 0x0F, header >> 4
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(data, pos)
            fid = _unzigzag(raw)
        last = fid
        entry = names.get(fid, str(fid))
        field, child = entry if isinstance(entry, tuple) else (entry, None)
        pos = _thrift_value(data, pos, kind, child, f"{name}.{field}", field, out)


def _thrift_value(data, pos, kind, struct_name, name, field, out):
    if kind in (1, 2):  # booleans live in the field header
        return pos
    if kind == 3:
        return pos + 1
    if kind in (4, 5, 6):
        start = pos
        raw, pos = _varint(data, pos)
        out.append(ThriftInt(name, field, start, pos, _unzigzag(raw), False))
        return pos
    if kind == 7:
        return pos + 8
    if kind == 8:
        start = pos
        size, pos = _varint(data, pos)
        out.append(ThriftInt(name, field, start, pos, size, True))
        return pos + size
    if kind in (9, 10):
        header = data[pos]
        pos += 1
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size, pos = _varint(data, pos)
        for i in range(size):
            if element in (1, 2):
                pos += 1
            else:
                pos = _thrift_value(data, pos, element, struct_name, f"{name}[{i}]", field, out)
        return pos
    if kind == 11:
        size, pos = _varint(data, pos)
        if size:
            kinds = data[pos]
            pos += 1
            for i in range(size):
                pos = _thrift_value(data, pos, kinds >> 4, None, f"{name}{{{i}}}", field, out)
                pos = _thrift_value(data, pos, kinds & 0x0F, None, f"{name}[{i}]", field, out)
        return pos
    if kind == 12:
        return _thrift_struct(data, pos, struct_name, name, out)
    raise ValueError(f"thrift type {kind} at {pos}")


class Page(collections.namedtuple("Page", "start body end header column kind")):
    """A Parquet page: header at ``start``, data at ``body``..``end``; ``kind`` is the
    PageHeader type (0 data page, 2 dictionary page, 3 data page v2)."""


def _parquet_layout(data: bytes):
    """(footer start, footer length, the footer's integers, the pages, the ARROW:schema
    value's byte range)."""
    (footer_len,) = struct.unpack_from("<i", data, len(data) - 8)
    start = len(data) - 8 - footer_len
    ints: list[ThriftInt] = []
    assert _thrift_struct(data, start, "FileMetaData", "FileMetaData", ints) == len(data) - 8
    schema_value = None
    for key, value in zip(ints, ints[1:]):
        if key.name.endswith(".key") and data[key.end:key.end + key.value] == b"ARROW:schema":
            schema_value = (value.end, value.end + value.value)
    pages = []
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    for g in range(metadata.num_row_groups):
        for c in range(metadata.num_columns):
            chunk = metadata.row_group(g).column(c)
            pos = chunk.data_page_offset
            if chunk.has_dictionary_page:
                pos = min(pos, chunk.dictionary_page_offset)
            end = pos + chunk.total_compressed_size
            while pos < end:
                header: list[ThriftInt] = []
                name = f"row group {g}, column {chunk.path_in_schema}: PageHeader at {pos}"
                body = _thrift_struct(data, pos, "PageHeader", name, header)
                size = next(i.value for i in header if i.field == "compressed_page_size")
                kind = next(i.value for i in header if i.field == "type")
                pages.append(Page(pos, body, body + size, header, chunk.path_in_schema, kind))
                pos = body + size
    return start, footer_len, ints, pages, schema_value


BIG = (2**31 - 1, 2**32 + 5, 2**62, 2**63 - 1, -1, -(2**31), -(2**63))


def _parquet_variants(base: Base, rng: random.Random) -> list[Variant]:
    data, name = base.data, base.name
    size = len(data)
    footer, footer_len, ints, pages, schema_value = _parquet_layout(data)
    out = []
    # Random bytes: the footer (with its length and magic), then pages (headers and data).
    for _ in range(_count(14)):
        out.append(_byte_op(rng, data, footer, size, f"footer ({footer_len} bytes at "
                                                    f"{footer})", name))
    for _ in range(_count(7)):
        page = rng.choice(pages)
        out.append(_byte_op(rng, data, page.start, page.body, f"page header at {page.start} "
                            f"({page.column})", name))
    for _ in range(_count(10)):
        page = rng.choice(pages)
        if page.end > page.body:
            out.append(_byte_op(rng, data, page.body, page.end, f"page data {page.body}.."
                                f"{page.end - 1} ({page.column})", name))
    # Truncations, at page and footer boundaries too.
    marks = {"the data pages only": footer, "before the footer length": size - 8,
             "inside the footer": footer + footer_len // 2, "after the first magic": 4}
    marks.update((f"end of page data at {page.end}", page.end) for page in pages[::7])
    marks.update((f"inside page header at {page.start}", page.start + 2)
                 for page in pages[3::11])
    out += _truncations(rng, name, data, marks)
    # The footer length field and the magic numbers.
    structured: list[Variant] = []
    for value in (0, 1, 7, footer_len - 1, footer_len + 1, size - 8, size, 2**31 - 1, -1,
                  -footer_len):
        structured.append(Variant(name, f"footer length field (bytes {size - 8}..{size - 5}) := "
                                 f"{value}", _patch(data, size - 8, struct.pack("<i", value))))
    out += structured[:1] + structured[7:9]  # 0, huge, -1: always
    structured = structured[1:7] + structured[9:]
    out.append(Variant(name, "trailing magic := b'PARE' (encrypted footer)",
                       _patch(data, size - 4, b"PARE")))
    structured.append(Variant(name, "trailing magic := b'PAR0'",
                              _patch(data, size - 4, b"PAR0")))
    structured.append(Variant(name, "leading magic := b'PAR0'", _patch(data, 0, b"PAR0")))
    # Integers of the Thrift footer, re-encoded (any length; the footer length is fixed up):
    # the key ones (counts, sizes, offsets, types) mostly, any other sometimes.
    keyed = [i for i in ints if i.field in KEY_INTS or i.length_prefix]
    for _ in range(_count(24)):
        target = rng.choice(keyed if rng.random() < 0.8 else ints)
        choices = [0, target.value + 1, target.value - 1, target.value * 1000, *BIG]
        value = rng.choice([v for v in choices if v >= 0] if target.length_prefix else choices)
        if target.length_prefix:
            value = min(value, 2**63 - 1)
            encoded = _encode_varint(value)
        else:
            value = max(min(value, 2**63 - 1), -(2**63))
            encoded = _encode_varint(_zigzag(value))
        new_footer = data[footer:target.start] + encoded + data[target.end:size - 8]
        what = "length prefix of " if target.length_prefix else ""
        structured.append(Variant(name, f"footer thrift: {what}{target.name} (bytes "
                                        f"{target.start}..{target.end - 1}, was {target.value})"
                                        f" := {value} (footer length fixed up)",
                           data[:footer] + new_footer + struct.pack("<i", len(new_footer))
                           + b"PAR1"))
    # Integers of page headers, rewritten in place (same byte count, so nothing moves).
    header_ints = [i for page in pages for i in page.header]
    for _ in range(_count(12)):
        target = rng.choice(header_ints)
        length = target.end - target.start
        top = (1 << (7 * length - 1)) - 1
        value = rng.choice([0, -1, top, -top - 1, target.value + 1, target.value - 1])
        encoded = _encode_varint(value if target.length_prefix else _zigzag(value), length)
        structured.append(Variant(name, f"page header thrift: {target.name} (bytes "
                                        f"{target.start}..{target.end - 1}, was {target.value})"
                                        f" := {value} (same length)",
                           _patch(data, target.start, encoded)))
    # The Arrow schema Parquet keeps in its metadata (base64 of an IPC schema message):
    # corrupted after decoding, re-encoded to the same length.
    if schema_value is not None:
        lo, hi = schema_value
        blob = bytearray(base64.b64decode(data[lo:hi]))
        for _ in range(_count(6)):
            pos = rng.randrange(8, len(blob))
            value = rng.choice((0xFF, 0x00, blob[pos] ^ (1 << rng.randrange(8))))
            mutated = bytes(blob[:pos]) + bytes([value]) + bytes(blob[pos + 1:])
            encoded = base64.b64encode(mutated)
            assert len(encoded) == hi - lo
            structured.append(Variant(name, f"ARROW:schema metadata (base64 at {lo}..{hi - 1}): "
                                     f"decoded byte {pos} := 0x{value:02x}, re-encoded",
                               _patch(data, lo, encoded)))
    return out + _sample(rng, structured, 30) + _parquet_values(base, pages, ints,
                                                                schema_value)


def _parquet_values(base: Base, pages: list[Page], ints: list[ThriftInt],
                    schema_value: tuple[int, int] | None) -> list[Variant]:
    """Damage that stays inside what a Parquet reader checks: a field name or a string value
    that is not UTF-8, dictionary indices past the dictionary (0xFF bytes at the end of a
    data page of the dictionary-encoded column, where the indices are)."""
    data, name = base.data, base.name
    out = []
    for target in ints:
        if target.length_prefix and data[target.end:target.end + target.value] == b"prompt":
            out.append(Variant(name, f"footer thrift: {target.name} b'prompt' (bytes "
                                     f"{target.end}..) := b'\\xffrompt' (not UTF-8)",
                               _patch(data, target.end, b"\xff")))
    if schema_value is not None:
        lo, hi = schema_value
        blob = base64.b64decode(data[lo:hi])
        at = blob.index(b"prompt")
        encoded = base64.b64encode(blob[:at] + b"\xff" + blob[at + 1:])
        out.append(Variant(name, f"ARROW:schema metadata (base64 at {lo}..{hi - 1}): decoded "
                                 f"field name b'prompt' at {at} := b'\\xffrompt', re-encoded",
                           _patch(data, lo, encoded)))
    for page in pages:
        if page.column == "prompt":  # dictionary-encoded too: its values are in the dictionary page
            at = data.find(b"quoted", page.body, page.end)
            if at >= 0:
                out.append(Variant(name, f"page data ({page.column}, page at {page.start}): "
                                         f"b'quoted' at {at} := b'\\xffuoted' (not UTF-8)",
                                   _patch(data, at, b"\xff")))
        if page.column == "label" and page.kind == 2:
            at = data.find(b"good", page.body, page.end)
            if at >= 0:
                out.append(Variant(name, f"dictionary page ({page.column}, at {page.start}): "
                                         f"b'good' at {at} := b'\\xffood' (not UTF-8)",
                                   _patch(data, at, b"\xff")))
        if page.column == "label" and page.kind != 2:
            for run in (1, 3):
                out.append(Variant(name, f"page data ({page.column}, page at {page.start}): "
                                         f"last {run} bytes ({page.end - run}..{page.end - 1})"
                                         " := 0xff (dictionary indices out of range)",
                                   _patch(data, page.end - run, b"\xff" * run)))
    return out


# --- Flatbuffers (Arrow IPC messages and the IPC file footer) --------------------------------

class _Flat:
    """A flatbuffer table at ``pos``: field positions, sub-tables, vectors of structs."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos
        self.vtable = pos - struct.unpack_from("<i", data, pos)[0]
        self.vtable_size = struct.unpack_from("<H", data, self.vtable)[0]

    @classmethod
    def root(cls, data: bytes, pos: int) -> _Flat:
        return cls(data, pos + struct.unpack_from("<I", data, pos)[0])

    def field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, self.vtable + slot)[0]
        return self.pos + offset if offset else None

    def table(self, index: int) -> _Flat | None:
        pos = self.field(index)
        return None if pos is None else _Flat.root(self.data, pos)

    def vector(self, index: int, element: int) -> tuple[int | None, list[int]]:
        """(position of the vector's count, positions of its elements)."""
        pos = self.field(index)
        if pos is None:
            return None, []
        start = pos + struct.unpack_from("<I", self.data, pos)[0]
        count = struct.unpack_from("<I", self.data, start)[0]
        return start, [start + 4 + element * k for k in range(count)]


@dataclasses.dataclass
class Message:
    start: int
    kind: str  # "schema", "dictionary", "batch" or "end"
    meta_len: int
    body: int
    body_len: int
    body_len_pos: int | None = None
    length_pos: int | None = None  # the record batch's row count
    nodes: list[int] = dataclasses.field(default_factory=list)
    buffers: list[int] = dataclasses.field(default_factory=list)
    dictionary_id_pos: int | None = None
    compressed: bool = False


def _ipc_messages(data: bytes, pos: int) -> list[Message]:
    messages = []
    while pos + 8 <= len(data):
        if struct.unpack_from("<I", data, pos)[0] != 0xFFFFFFFF:
            break
        (meta_len,) = struct.unpack_from("<i", data, pos + 4)
        if meta_len == 0:
            messages.append(Message(pos, "end", 0, pos + 8, 0))
            break
        flat = _Flat.root(data, pos + 8)
        kind_code = data[flat.field(1)] if flat.field(1) is not None else 0
        body_len_pos = flat.field(3)
        body_len = struct.unpack_from("<q", data, body_len_pos)[0] if body_len_pos else 0
        message = Message(pos, {1: "schema", 2: "dictionary", 3: "batch"}.get(kind_code, "?"),
                          meta_len, pos + 8 + meta_len, body_len, body_len_pos)
        header = flat.table(2)
        batch = None
        if message.kind == "batch":
            batch = header
        elif message.kind == "dictionary":
            message.dictionary_id_pos = header.field(0)
            batch = header.table(1)
        if batch is not None:
            message.length_pos = batch.field(0)
            message.nodes = batch.vector(1, 16)[1]
            message.buffers = batch.vector(2, 16)[1]
            message.compressed = batch.field(3) is not None
        messages.append(message)
        pos = message.body + body_len
    return messages


def _buffer_layout(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """Names of a record batch's field nodes and of its buffers, in IPC order."""
    nodes, buffers = [], []

    def visit(name, kind):
        nodes.append(name)
        if pa.types.is_dictionary(kind):
            kind = kind.index_type
            buffers.extend([f"{name} validity", f"{name} indices"])
        elif pa.types.is_string(kind) or pa.types.is_binary(kind):
            buffers.extend([f"{name} validity", f"{name} offsets", f"{name} data"])
        elif pa.types.is_list(kind):
            buffers.extend([f"{name} validity", f"{name} offsets"])
            visit(f"{name}.item", kind.value_type)
        else:
            buffers.extend([f"{name} validity", f"{name} data"])

    for field in schema:
        visit(field.name, field.type)
    return nodes, buffers


def _ipc_variants(base: Base, rng: random.Random) -> list[Variant]:
    data, name = base.data, base.name
    size = len(data)
    is_file = base.kind == "ipc-file"
    start = 8 if is_file else 0
    messages = _ipc_messages(data, start)
    batches = [m for m in messages if m.kind == "batch"]
    dictionaries = [m for m in messages if m.kind == "dictionary"]
    assert len(batches) == 3 and dictionaries, messages
    node_names, buffer_names = _buffer_layout(base.schema)
    assert len(batches[0].nodes) == len(node_names)
    assert len(batches[0].buffers) == len(buffer_names)
    out: list[Variant] = []

    structured: list[Variant] = []

    def put(how, pos, new, always=False):
        (out if always else structured).append(Variant(name, how, _patch(data, pos, new)))

    # Random bytes, region by region.
    regions = []
    for number, m in enumerate(messages):
        label = f"{m.kind} message {number} at {m.start}"
        if m.kind != "end":
            regions.append((f"{label}: metadata", m.start, m.body))
        if m.body_len:
            regions.append((f"{label}: body", m.body, m.body + m.body_len))
    footer_len = footer = None
    if is_file:
        (footer_len,) = struct.unpack_from("<i", data, size - 10)
        footer = size - 10 - footer_len
        for _ in range(_count(12)):
            out.append(_byte_op(rng, data, footer, size, f"file footer ({footer_len} bytes at "
                                                        f"{footer}, length and magic after)",
                                name))
    weights = [0.5 if "metadata" in r[0] else 1.0 for r in regions]
    for _ in range(_count(22)):
        region, lo, hi = rng.choices(regions, weights)[0]
        out.append(_byte_op(rng, data, lo, hi, region, name))
    # Truncations at message boundaries and inside them.
    marks = {}
    for number, m in enumerate(messages):
        marks[f"before {m.kind} message {number}"] = m.start
        marks[f"inside the metadata of {m.kind} message {number}"] = m.start + 12
        if m.body_len:
            marks[f"inside the body of {m.kind} message {number}"] = m.body + m.body_len // 2
    if is_file:
        marks["before the footer"] = footer
    out += _truncations(rng, name, data, marks)

    # Lengths in message framing and metadata.
    for number, m in ((0, batches[0]), (2, batches[2]), ("d", dictionaries[0])):
        what = f"record batch {number}" if number != "d" else "dictionary batch 0"
        for value in (2**31 - 1, -8, 0, m.meta_len + 8):
            put(f"{what} (message at {m.start}): metadata length := {value}", m.start + 4,
                struct.pack("<i", value), always=number == 0 and value == 2**31 - 1)
        for value in (2**62, 2**31, -1, 0, m.body_len - 8):
            put(f"{what}: bodyLength (at {m.body_len_pos}) := {value}", m.body_len_pos,
                struct.pack("<q", value))
        (rows,) = struct.unpack_from("<q", data, m.length_pos)
        for value in (rows + 1, rows * 1000, 2**31 - 1, 2**62, -1, 0):
            put(f"{what}: row count (RecordBatch.length at {m.length_pos}) := {value} "
                f"(was {rows})", m.length_pos, struct.pack("<q", value),
                always=number == 0 and value in (rows + 1, 2**31 - 1))
    if dictionaries[0].dictionary_id_pos is not None:
        put("dictionary batch 0: id := 99 (no such dictionary)",
            dictionaries[0].dictionary_id_pos, struct.pack("<q", 99))
    for m, number in ((batches[0], 0), (batches[2], 2)):
        (rows,) = struct.unpack_from("<q", data, m.length_pos)
        for node in ("prompt", "tokens", "tokens.item", "label", "chosen_logps"):
            if node not in node_names:
                continue
            pos = m.nodes[node_names.index(node)]
            for value, field in ((rows + 1, "length"), (2**40, "length"), (-1, "length"),
                                 (rows, "null_count"), (2**40, "null_count"),
                                 (-5, "null_count")):
                at = pos + (0 if field == "length" else 8)
                put(f"record batch {number}: field node {node!r} {field} (at {at}) := {value}",
                    at, struct.pack("<q", value))
        for buffer in ("prompt offsets", "prompt data", "tokens offsets", "tokens.item data",
                       "label indices", "chosen_logps data", "weight validity"):
            if buffer not in buffer_names:
                continue
            pos = m.buffers[buffer_names.index(buffer)]
            offset, length = struct.unpack_from("<qq", data, pos)
            for field, value in (("offset", 2**40), ("offset", m.body_len - 8),
                                 ("offset", -64), ("length", 2**40),
                                 ("length", m.body_len + 64), ("length", 0)):
                at = pos + (0 if field == "offset" else 8)
                put(f"record batch {number}: buffer {buffer!r} {field} (at {at}) := {value} "
                    f"(was offset {offset}, length {length})", at, struct.pack("<q", value))
            if m.compressed and length >= 8:
                # A compressed buffer starts with its uncompressed length (-1: not compressed).
                at = m.body + offset
                (prefix,) = struct.unpack_from("<q", data, at)
                for value in (2**40, 2**62, -1, 0, prefix + 1, prefix // 2):
                    put(f"record batch {number}: compressed buffer {buffer!r} uncompressed "
                        f"length prefix (at {at}) := {value} (was {prefix})", at,
                        struct.pack("<q", value), always=value == 2**40 and number == 0
                        and buffer == "prompt data")

    # Offsets and dictionary indices inside the bodies (uncompressed bodies only).
    for m, number in ((batches[0], 0), (batches[1], 1)):
        if m.compressed:
            continue
        for buffer in ("prompt offsets", "tokens offsets", "label indices"):
            if buffer not in buffer_names:
                continue
            offset, length = struct.unpack_from("<qq", data, m.buffers[buffer_names.index(
                buffer)])
            entries = length // 4
            for slot in (1, entries // 2, entries - 1):
                at = m.body + offset + 4 * slot
                for value in (10**8, -1, 2**31 - 1):
                    if buffer == "label indices" and value == 10**8:
                        value = 3  # one past the dictionary's three values
                    put(f"record batch {number}: {buffer} entry {slot} (at {at}) := {value}", at,
                        struct.pack("<i", value), always=number == 0 and
                        slot == entries // 2 and value in (10**8, 3))
            if buffer != "label indices":
                at = m.body + offset + 4 * (entries // 2)
                (before,) = struct.unpack_from("<i", data, at - 4)
                put(f"record batch {number}: {buffer} entry {entries // 2} (at {at}) := "
                    f"{max(before - 3, 0)} (decreasing)", at,
                    struct.pack("<i", max(before - 3, 0)))
    d = dictionaries[0]
    if not d.compressed:
        offset, length = struct.unpack_from("<qq", data, d.buffers[1])
        last = d.body + offset + length - 4
        for value in (10**8, -1):
            put(f"dictionary batch 0: values' last offset (at {last}) := {value}", last,
                struct.pack("<i", value))

    if is_file:
        # The footer: its length field, its record batch and dictionary blocks.
        for value in (0, 4, footer_len + 1, size, 2**31 - 1, -1):
            put(f"file footer length field (at {size - 10}) := {value} (was {footer_len})",
                size - 10, struct.pack("<i", value), always=value == 2**31 - 1)
        flat = _Flat.root(data, footer)
        for index, what in ((3, "recordBatches"), (2, "dictionaries")):
            count_at, blocks = flat.vector(index, 24)
            if count_at is None:
                continue
            put(f"file footer: {what} count (at {count_at}) := 2**31", count_at,
                struct.pack("<I", 2**31))
            for number, at in enumerate(blocks[:1] + blocks[-1:]):
                number = 0 if number == 0 else len(blocks) - 1
                offset, meta, body = struct.unpack_from("<qi4xq", data, at)
                for field, pos, fmt, values in (
                        ("offset", at, "<q", (2**40, -8, 0, offset + 8, size - 16)),
                        ("metaDataLength", at + 8, "<i", (2**31 - 1, 0, -1, meta + 8)),
                        ("bodyLength", at + 16, "<q", (2**40, 0, -1, body + 64))):
                    for value in values:
                        put(f"file footer: {what}[{number}].{field} (at {pos}) := {value}",
                            pos, struct.pack(fmt, value), always=value == 2**40 and
                            number == 0 and what == "recordBatches")
    return out + _sample(rng, structured, 45) + _ipc_values(base, messages)


def _ipc_values(base: Base, messages: list[Message]) -> list[Variant]:
    """A field name or a string value that is not UTF-8 (where the bytes are not compressed)."""
    data, name = base.data, base.name
    out = []
    schemas = [(f"schema message at {m.start}", m.start, m.body) for m in messages
               if m.kind == "schema"]
    if base.kind == "ipc-file":
        (footer_len,) = struct.unpack_from("<i", data, len(data) - 10)
        schemas.append(("file footer", len(data) - 10 - footer_len, len(data)))
    for where, lo, hi in schemas:
        at = data.find(b"prompt", lo, hi)
        out.append(Variant(name, f"{where}: field name b'prompt' at {at} := b'\\xffrompt' "
                                 "(not UTF-8)", _patch(data, at, b"\xff")))
    for number, m in enumerate(messages):
        if m.kind in ("batch", "dictionary") and not m.compressed:
            for text in (b"quoted", b"good"):
                at = data.find(text, m.body, m.body + m.body_len)
                if at >= 0:
                    out.append(Variant(name, f"{m.kind} message {number}: value {text!r} at {at} "
                                             "first byte := 0xff (not UTF-8)",
                                       _patch(data, at, b"\xff")))
    return out


def _variants() -> list[Variant]:
    """Every variant of every base, deduplicated by content."""
    out, seen = [], set()
    for base in _bases().values():
        rng = random.Random(f"dpo_fast fuzz files {base.name}")
        made = (_parquet_variants if base.kind == "parquet" else _ipc_variants)(base, rng)
        for variant in made:
            key = hashlib.sha1(variant.data).digest()
            if key not in seen and variant.data != base.data:
                seen.add(key)
                out.append(variant)
    return out


# --------------------------------------------------------------------------------------------
# The harness: jobs run in chunks in a child; begin/end lines attribute a crash or a hang
# --------------------------------------------------------------------------------------------

DRIVER = r"""
import faulthandler, json, os, sys, threading, traceback, warnings
channel = os.fdopen(int(sys.argv[1]), "w", buffering=1)
faulthandler.enable()  # writes to fd 2: the stderr file of the job running at the time
warnings.simplefilter("always")
from dpo_fast import cli
jobs = json.load(sys.stdin)
saved = os.dup(1), os.dup(2)
for job in jobs:
    channel.write(json.dumps({"begin": job["id"]}) + "\n")
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(out, 1); os.dup2(err, 2); os.close(out); os.close(err)
    exception = frames = None
    # A hang: every thread's frames go to the job's stderr before the parent kills the child.
    faulthandler.dump_traceback_later(float(sys.argv[2]))
    try:
        code = cli.main(job["argv"])
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException as exc:
        code = 1  # what the interpreter would exit with, after printing the traceback
        traceback.print_exc()
        exception = f"{type(exc).__name__}: {exc}"
        frames = [f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}: {f.line}"
                  for f in traceback.extract_tb(exc.__traceback__)
                  if os.sep + "dpo_fast" + os.sep in f.filename]
    faulthandler.cancel_dump_traceback_later()
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    threads = [t.name for t in threading.enumerate()
               if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    channel.write(json.dumps({"end": job["id"], "code": code, "exception": exception,
                              "frames": frames, "threads": threads}) + "\n")
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return env


def _run_chunk(jobs: list[dict], workdir: str) -> tuple[dict[int, dict], list[dict]]:
    """Run ``jobs`` in one child: (results by job id, the jobs not run because the child died
    or hung on an earlier one)."""
    read_end, write_end = os.pipe()
    with open(os.path.join(workdir, "driver.log"), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(write_end),
                                 str(JOB_TIMEOUT * 0.8)],
                                stdin=subprocess.PIPE, stdout=log, stderr=log,
                                pass_fds=(write_end,), env=_child_env(), cwd=workdir,
                                start_new_session=True)
    os.close(write_end)
    lines: queue.Queue = queue.Queue()

    def pump():
        with os.fdopen(read_end) as channel:
            for line in channel:
                lines.put(json.loads(line))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc.stdin.write(json.dumps(jobs).encode())
    proc.stdin.close()
    results: dict[int, dict] = {}
    current = None
    started: list[int] = []  # the jobs this child began, in order
    while True:
        try:
            line = lines.get(timeout=JOB_TIMEOUT)
        except queue.Empty:  # the current job hangs
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join()
            if current is None:
                raise AssertionError("the fuzz driver hung before its first job") from None
            results[current] = {"code": None, "hang": True, "after": started[:-1]}
            break
        if line is None:
            status = proc.wait()
            if current is not None and current not in results:
                results[current] = {"code": status, "crash": True, "after": started[:-1]}
            elif status != 0:
                with open(os.path.join(workdir, "driver.log"), errors="replace") as fh:
                    raise AssertionError(f"the fuzz driver failed ({status}): {fh.read()}")
            break
        if "begin" in line:
            current = line["begin"]
            started.append(current)
        else:
            results[line["end"]] = line
    return results, [job for job in jobs if job["id"] not in results]


def _run_jobs(jobs: list[dict], workdir: str) -> dict[int, dict]:
    results: dict[int, dict] = {}
    pending = list(jobs)
    while pending:
        done, rest = _run_chunk(pending[:CHUNK], workdir)
        results.update(done)
        pending = rest + pending[CHUNK:]
    return results


# --------------------------------------------------------------------------------------------
# Judging one outcome
# --------------------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _stderr_problem(code: int, stderr: str) -> str | None:
    """None when stderr is the promised one-line error, else what is wrong with it."""
    proc = types.SimpleNamespace(returncode=code, stderr=stderr)
    try:
        _one_line_error(proc)
    except (AssertionError, IndexError):
        return "not a one-line error"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dpo-fast score: error: ")]
    # Exit status 1: the message alone. Exit status 2: argparse's usage lines first.
    extra = lines[:-1] if code == 1 else [line for line in lines[:-1]
                                          if not line.startswith(("usage:", " "))]
    if len(errors) != 1 or extra:
        return "more than the one-line error on stderr"
    return None


def _judge(job: dict, result: dict) -> list[tuple[str, str]]:
    """[(finding class, detail)] for one job: empty when the promise holds."""
    out = job["out"]
    stderr = _read_text(job["stderr"]).strip()
    stdout = _read_text(job["stdout"])
    # (faulthandler's list of extension modules is left out: long, and no help)
    tail = "\n    ".join([line for line in stderr.splitlines()
                          if not line.startswith("Extension modules")][-12:])
    if result.get("hang"):
        return [("hang", f"no result after {JOB_TIMEOUT:.0f} s; stderr (faulthandler):\n"
                         f"    {tail}")]
    code = result["code"]
    if result.get("crash"):
        return [("crash", f"the process died with status {code}"
                          + (f" (signal {signal.Signals(-code).name})" if code < 0 else "")
                          + f"; stderr (faulthandler):\n    {tail}")]
    found = []
    if result.get("exception"):
        frames = "\n      ".join(result["frames"] or ["(no dpo_fast frame)"])
        found.append(("traceback", f"{result['exception']}\n      {frames}"))
    elif "Traceback" in stderr or "Exception in thread" in stderr:
        found.append(("traceback", f"printed on stderr:\n    {tail}"))
    if result.get("threads"):
        found.append(("thread left running", f"{result['threads']} (the CLI would not exit)"))
    if code not in (0, 1, 2):
        found.append(("wrong exit code", f"exit status {code!r}; stderr: {stderr[-300:]}"))
    elif code == 0:
        if "pairs" not in stdout:
            found.append(("no summary", f"exit status 0 but stdout is {stdout[:200]!r}"))
        if out is not None:
            try:
                table = read(out)
                rows = table.num_rows
            except Exception as exc:  # noqa: BLE001 - any failure to read back is a finding
                found.append(("unreadable output", f"{type(exc).__name__}: {exc}"))
            else:
                try:  # Parquet readers do not check UTF-8 or dictionary indices: do it here
                    table.validate(full=True)
                except pa.ArrowInvalid as exc:
                    found.append(("invalid values in the output", str(exc)))
                pairs = json.loads(stdout)["pairs"] if stdout.lstrip().startswith("{") else None
                if pairs is not None and rows != pairs:
                    found.append(("output rows differ from pairs",
                                  f"{rows} rows written, {pairs} pairs scored"))
    else:
        if not result.get("exception"):
            problem = _stderr_problem(code, stderr)
            if problem:
                found.append((problem, f"exit status {code}; stderr:\n    {tail}"))
        if out is not None and os.path.exists(out):
            found.append(("partial output left", f"exit status {code} but {out} exists"))
    if out is not None:
        stray = sorted(set(os.listdir(os.path.dirname(out))) - {os.path.basename(out)})
        if stray:
            found.append(("partial output left", f"files left next to the output: {stray}"))
    return found


def _alone(job: dict) -> tuple[bool, str]:
    """Run one job alone, as ``python -m dpo_fast``: (whether it crashed or did not exit,
    what happened)."""
    if job["out"] is not None and os.path.exists(job["out"]):
        os.remove(job["out"])
    try:
        proc = _cli(*job["argv"], timeout=ALONE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return True, f"no exit within {ALONE_TIMEOUT:.0f} s"
    last = proc.stderr.strip().splitlines()[-1:] or [""]
    return proc.returncode < 0, f"exit status {proc.returncode}; {last[0][:160]}"


def _confirm_alone(job: dict, result: dict, jobs: list[dict], variants: list[Variant]) -> str:
    """Re-run a crashing or hanging job alone; when that runs clean, the jobs the same child
    ran just before it (most recent first, up to 3), one by one: the state one of them left
    (a corrupted heap, say) may be what failed."""
    bad, what = _alone(job)
    lines = [f"alone (python -m dpo_fast): {what}"]
    if not bad:
        lines[0] += "; NOT reproduced alone. Jobs run before it in the same process, alone:"
        for earlier in reversed(result.get("after", [])[-3:]):
            other = jobs[earlier]
            bad, what = _alone(other)
            lines.append(f"  {variants[other['variant']].base}: "
                         f"{variants[other['variant']].how} (--out {other['output']}): {what}")
            if bad:
                break
    return "\n    ".join(lines)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

def _jobs_for(variants: list[Variant], bases: dict[str, Base], workdir: str) -> list[dict]:
    jobs = []
    for number, variant in enumerate(variants):
        base = bases[variant.base]
        folder = os.path.join(workdir, f"v{number}")
        os.mkdir(folder)
        source = os.path.join(folder, "input" + base.ext)
        with open(source, "wb") as fh:
            fh.write(variant.data)
        for output in OUTPUTS:
            job_id = len(jobs)
            out = None
            argv = ["score", source, *base.flags]
            if output is not None:
                out_dir = os.path.join(folder, f"out-{output}")
                os.mkdir(out_dir)
                out = os.path.join(out_dir, f"scored.{output}")
                argv += ["--out", out, "--format", "json"]
            jobs.append({"id": job_id, "argv": argv, "out": out, "variant": number,
                         "output": output,
                         "stdout": os.path.join(folder, f"{job_id}.stdout"),
                         "stderr": os.path.join(folder, f"{job_id}.stderr")})
    return jobs


def _report(findings: list[dict], variants: list[Variant], jobs: int, seconds: float) -> str:
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for finding in findings:
        detail = finding["detail"]
        # One group per class and origin (exception and innermost frame, or first line).
        signature = re.sub(r"\d+", "N", detail.splitlines()[0][:120])
        frames = [line.strip() for line in detail.splitlines()[1:] if ".py:" in line]
        native = [line.strip() for line in detail.splitlines()  # faulthandler's, innermost 1st
                  if line.strip().startswith("File ") and f"{os.sep}dpo_fast{os.sep}" in line]
        if frames:
            signature += " @ " + frames[-1].split(":")[0] + ":" + frames[-1].split(" in ")[-1]
        elif native:
            signature += " @ " + re.sub(r"line \d+ ", "", native[0].split(os.sep)[-1])
        groups[(finding["class"], signature)].append(finding)
    lines = [f"{len(findings)} findings in {len(groups)} groups ({len(variants)} variants, "
             f"{jobs} runs, {seconds:.0f} s):"]
    for (cls, signature), members in sorted(groups.items()):
        first = next((m for m in members if m.get("alone")), members[0])
        argv = " ".join(os.path.basename(a) if os.sep in a else a for a in first["argv"])
        lines.append(f"\n[{cls}] x{len(members)}: {signature}")
        lines.append(f"  e.g. {first['base']}: {first['how']}")
        lines.append(f"       dpo-fast {argv}")
        lines.append("    " + first["detail"].replace("\n", "\n  "))
        if first.get("alone"):
            lines.append(f"    {first['alone']}")
        for other in [m for m in members if m is not first][:5]:
            lines.append(f"  also {other['base']}: {other['how']} (--out {other['output']})")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def bases():
    return _bases()


def test_the_valid_inputs_score_in_every_output_format(tmp_path, bases):
    """The harness itself: the uncorrupted inputs succeed (CSV cannot hold the list column:
    a one-line error) and their outputs read back."""
    variants = [Variant(name, "unchanged", base.data) for name, base in bases.items()]
    jobs = _jobs_for(variants, bases, str(tmp_path))
    results = _run_jobs(jobs, str(tmp_path))
    for job in jobs:
        result = results[job["id"]]
        assert _judge(job, result) == [], (job, result)
        lists = "tokens" in bases[variants[job["variant"]].base].schema.names
        expected = 1 if job["output"] == "csv" and lists else 0
        assert result["code"] == expected, (job, _read_text(job["stderr"]))


def test_the_mutations_hit_what_they_say(bases):
    parquet = bases["parquet"].data
    footer, footer_len, ints, pages, schema_value = _parquet_layout(parquet)
    rows = [i for i in ints if i.name == "FileMetaData.num_rows"]
    assert [i.value for i in rows] == [ROWS]
    assert schema_value is not None
    metadata = pq.ParquetFile(pa.BufferReader(parquet)).metadata
    assert len(pages) >= metadata.num_row_groups * metadata.num_columns
    ipc = bases["ipc-file"]
    messages = _ipc_messages(ipc.data, 8)
    counts = [struct.unpack_from("<q", ipc.data, m.length_pos)[0] for m in messages
              if m.kind == "batch"]
    assert counts == [25, 25, 10]
    assert not any(m.compressed for m in messages)
    assert any(m.compressed for m in _ipc_messages(bases["ipc-stream-zstd"].data, 0))
    assert _encode_varint(_zigzag(-1)) == b"\x01"
    assert _varint(_encode_varint(300, 3), 0) == (300, 3)


def test_corrupted_files_never_crash_hang_or_leave_a_traceback(tmp_path, bases):
    started = time.perf_counter()
    variants = _variants()
    workdir = str(tmp_path)
    jobs = _jobs_for(variants, bases, workdir)
    results = _run_jobs(jobs, workdir)
    findings = []
    outcomes: collections.Counter = collections.Counter()
    confirmed: set[str] = set()
    for job in jobs:
        result = results[job["id"]]
        outcomes[result.get("code")] += 1
        variant = variants[job["variant"]]
        for cls, detail in _judge(job, result):
            finding = {"class": cls, "detail": detail, "base": variant.base,
                       "how": variant.how, "output": job["output"], "argv": job["argv"]}
            origin = cls + "".join(line for line in detail.splitlines() if "File " in line)
            if cls in ("crash", "hang") and origin not in confirmed and \
                    len(confirmed) < CONFIRMED:
                confirmed.add(origin)
                finding["alone"] = _confirm_alone(job, result, jobs, variants)
            findings.append(finding)
    seconds = time.perf_counter() - started
    text = _report(findings, variants, len(jobs), seconds)
    if REPORT:
        with open(REPORT, "w") as fh:
            json.dump({"variants": len(variants), "runs": len(jobs), "seconds": seconds,
                       "outcomes": {str(k): v for k, v in outcomes.items()},
                       "findings": findings, "report": text}, fh, indent=1)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndpo_fast fuzz files: {len(variants)} variants, {len(jobs)} runs, exit statuses "
          f"{dict(outcomes)}, {seconds:.1f} s (DPO_FAST_FUZZ_SCALE={SCALE:g})")
    assert not findings, text
