"""Corrupted variants of a valid Parquet file (tests/test_fuzz_files.py): its layout read from
the Thrift compact protocol (the footer's integers, the pages and their headers, the Arrow
schema kept in the metadata), then random bytes, truncations at page and footer boundaries,
re-encoded footer and page header integers, and damage a reader's own checks let through
(names and values that are not UTF-8, dictionary indices out of range).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import random
import struct

import pyarrow as pa
import pyarrow.parquet as pq
from file_mutations import Base, Variant, byte_op, count, patch, sample, truncations

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


def varint(data: bytes, pos: int) -> tuple[int, int]:
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


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if n < 0 else n << 1


def encode_varint(n: int, length: int | None = None) -> bytes:
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
            raw, pos = varint(data, pos)
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
        raw, pos = varint(data, pos)
        out.append(ThriftInt(name, field, start, pos, _unzigzag(raw), False))
        return pos
    if kind == 7:
        return pos + 8
    if kind == 8:
        start = pos
        size, pos = varint(data, pos)
        out.append(ThriftInt(name, field, start, pos, size, True))
        return pos + size
    if kind in (9, 10):
        header = data[pos]
        pos += 1
        size, element = header >> 4, header & 0x0F
        if size == 15:
            size, pos = varint(data, pos)
        for i in range(size):
            if element in (1, 2):
                pos += 1
            else:
                pos = _thrift_value(data, pos, element, struct_name, f"{name}[{i}]", field, out)
        return pos
    if kind == 11:
        size, pos = varint(data, pos)
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


def parquet_layout(data: bytes):
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


def parquet_variants(base: Base, rng: random.Random) -> list[Variant]:
    data, name = base.data, base.name
    size = len(data)
    footer, footer_len, ints, pages, schema_value = parquet_layout(data)
    out = []
    # Random bytes: the footer (with its length and magic), then pages (headers and data).
    for _ in range(count(14)):
        out.append(byte_op(rng, data, footer, size, f"footer ({footer_len} bytes at "
                                                   f"{footer})", name))
    for _ in range(count(7)):
        page = rng.choice(pages)
        out.append(byte_op(rng, data, page.start, page.body, f"page header at {page.start} "
                           f"({page.column})", name))
    for _ in range(count(10)):
        page = rng.choice(pages)
        if page.end > page.body:
            out.append(byte_op(rng, data, page.body, page.end, f"page data {page.body}.."
                               f"{page.end - 1} ({page.column})", name))
    # Truncations, at page and footer boundaries too.
    marks = {"the data pages only": footer, "before the footer length": size - 8,
             "inside the footer": footer + footer_len // 2, "after the first magic": 4}
    marks.update((f"end of page data at {page.end}", page.end) for page in pages[::7])
    marks.update((f"inside page header at {page.start}", page.start + 2)
                 for page in pages[3::11])
    out += truncations(rng, name, data, marks)
    # The footer length field and the magic numbers.
    structured: list[Variant] = []
    for value in (0, 1, 7, footer_len - 1, footer_len + 1, size - 8, size, 2**31 - 1, -1,
                  -footer_len):
        structured.append(Variant(name, f"footer length field (bytes {size - 8}..{size - 5}) := "
                                 f"{value}", patch(data, size - 8, struct.pack("<i", value))))
    out += structured[:1] + structured[7:9]  # 0, huge, -1: always
    structured = structured[1:7] + structured[9:]
    out.append(Variant(name, "trailing magic := b'PARE' (encrypted footer)",
                       patch(data, size - 4, b"PARE")))
    structured.append(Variant(name, "trailing magic := b'PAR0'",
                              patch(data, size - 4, b"PAR0")))
    structured.append(Variant(name, "leading magic := b'PAR0'", patch(data, 0, b"PAR0")))
    # Integers of the Thrift footer, re-encoded (any length; the footer length is fixed up):
    # the key ones (counts, sizes, offsets, types) mostly, any other sometimes.
    keyed = [i for i in ints if i.field in KEY_INTS or i.length_prefix]
    for _ in range(count(24)):
        target = rng.choice(keyed if rng.random() < 0.8 else ints)
        choices = [0, target.value + 1, target.value - 1, target.value * 1000, *BIG]
        value = rng.choice([v for v in choices if v >= 0] if target.length_prefix else choices)
        if target.length_prefix:
            value = min(value, 2**63 - 1)
            encoded = encode_varint(value)
        else:
            value = max(min(value, 2**63 - 1), -(2**63))
            encoded = encode_varint(zigzag(value))
        new_footer = data[footer:target.start] + encoded + data[target.end:size - 8]
        what = "length prefix of " if target.length_prefix else ""
        structured.append(Variant(name, f"footer thrift: {what}{target.name} (bytes "
                                        f"{target.start}..{target.end - 1}, was {target.value})"
                                        f" := {value} (footer length fixed up)",
                           data[:footer] + new_footer + struct.pack("<i", len(new_footer))
                           + b"PAR1"))
    # Integers of page headers, rewritten in place (same byte count, so nothing moves).
    header_ints = [i for page in pages for i in page.header]
    for _ in range(count(12)):
        target = rng.choice(header_ints)
        length = target.end - target.start
        top = (1 << (7 * length - 1)) - 1
        value = rng.choice([0, -1, top, -top - 1, target.value + 1, target.value - 1])
        encoded = encode_varint(value if target.length_prefix else zigzag(value), length)
        structured.append(Variant(name, f"page header thrift: {target.name} (bytes "
                                        f"{target.start}..{target.end - 1}, was {target.value})"
                                        f" := {value} (same length)",
                           patch(data, target.start, encoded)))
    # The Arrow schema Parquet keeps in its metadata (base64 of an IPC schema message):
    # corrupted after decoding, re-encoded to the same length.
    if schema_value is not None:
        lo, hi = schema_value
        blob = bytearray(base64.b64decode(data[lo:hi]))
        for _ in range(count(6)):
            pos = rng.randrange(8, len(blob))
            value = rng.choice((0xFF, 0x00, blob[pos] ^ (1 << rng.randrange(8))))
            mutated = bytes(blob[:pos]) + bytes([value]) + bytes(blob[pos + 1:])
            encoded = base64.b64encode(mutated)
            assert len(encoded) == hi - lo
            structured.append(Variant(name, f"ARROW:schema metadata (base64 at {lo}..{hi - 1}): "
                                     f"decoded byte {pos} := 0x{value:02x}, re-encoded",
                               patch(data, lo, encoded)))
    return out + sample(rng, structured, 30) + _parquet_values(base, pages, ints,
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
                               patch(data, target.end, b"\xff")))
    if schema_value is not None:
        lo, hi = schema_value
        blob = base64.b64decode(data[lo:hi])
        at = blob.index(b"prompt")
        encoded = base64.b64encode(blob[:at] + b"\xff" + blob[at + 1:])
        out.append(Variant(name, f"ARROW:schema metadata (base64 at {lo}..{hi - 1}): decoded "
                                 f"field name b'prompt' at {at} := b'\\xffrompt', re-encoded",
                           patch(data, lo, encoded)))
    for page in pages:
        if page.column == "prompt":  # dictionary-encoded too: its values are in the dictionary page
            at = data.find(b"quoted", page.body, page.end)
            if at >= 0:
                out.append(Variant(name, f"page data ({page.column}, page at {page.start}): "
                                         f"b'quoted' at {at} := b'\\xffuoted' (not UTF-8)",
                                   patch(data, at, b"\xff")))
        if page.column == "label" and page.kind == 2:
            at = data.find(b"good", page.body, page.end)
            if at >= 0:
                out.append(Variant(name, f"dictionary page ({page.column}, at {page.start}): "
                                         f"b'good' at {at} := b'\\xffood' (not UTF-8)",
                                   patch(data, at, b"\xff")))
        if page.column == "label" and page.kind != 2:
            for run in (1, 3):
                out.append(Variant(name, f"page data ({page.column}, page at {page.start}): "
                                         f"last {run} bytes ({page.end - run}..{page.end - 1})"
                                         " := 0xff (dictionary indices out of range)",
                                   patch(data, page.end - run, b"\xff" * run)))
    return out

