"""Corrupted variants of a valid Arrow IPC file or stream (tests/test_fuzz_files.py): its
messages read from their Flatbuffers metadata (record batches, dictionaries, field nodes,
buffers, the file footer's blocks), then random bytes, truncations at message boundaries,
lengths, offsets, row counts, dictionary ids and indices, compressed buffers' length prefixes
and the footer set to bad values, and names and values that are not UTF-8.
"""

from __future__ import annotations

import dataclasses
import random
import struct

import pyarrow as pa
from file_mutations import Base, Variant, byte_op, count, patch, sample, truncations

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


def ipc_messages(data: bytes, pos: int) -> list[Message]:
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


def ipc_variants(base: Base, rng: random.Random) -> list[Variant]:
    data, name = base.data, base.name
    size = len(data)
    is_file = base.kind == "ipc-file"
    start = 8 if is_file else 0
    messages = ipc_messages(data, start)
    batches = [m for m in messages if m.kind == "batch"]
    dictionaries = [m for m in messages if m.kind == "dictionary"]
    assert len(batches) == 3 and dictionaries, messages
    node_names, buffer_names = _buffer_layout(base.schema)
    assert len(batches[0].nodes) == len(node_names)
    assert len(batches[0].buffers) == len(buffer_names)
    out: list[Variant] = []

    structured: list[Variant] = []

    def put(how, pos, new, always=False):
        (out if always else structured).append(Variant(name, how, patch(data, pos, new)))

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
        for _ in range(count(12)):
            out.append(byte_op(rng, data, footer, size, f"file footer ({footer_len} bytes at "
                                                       f"{footer}, length and magic after)",
                               name))
    weights = [0.5 if "metadata" in r[0] else 1.0 for r in regions]
    for _ in range(count(22)):
        region, lo, hi = rng.choices(regions, weights)[0]
        out.append(byte_op(rng, data, lo, hi, region, name))
    # Truncations at message boundaries and inside them.
    marks = {}
    for number, m in enumerate(messages):
        marks[f"before {m.kind} message {number}"] = m.start
        marks[f"inside the metadata of {m.kind} message {number}"] = m.start + 12
        if m.body_len:
            marks[f"inside the body of {m.kind} message {number}"] = m.body + m.body_len // 2
    if is_file:
        marks["before the footer"] = footer
    out += truncations(rng, name, data, marks)

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
    return out + sample(rng, structured, 45) + _ipc_values(base, messages)


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
                                 "(not UTF-8)", patch(data, at, b"\xff")))
    for number, m in enumerate(messages):
        if m.kind in ("batch", "dictionary") and not m.compressed:
            for text in (b"quoted", b"good"):
                at = data.find(text, m.body, m.body + m.body_len)
                if at >= 0:
                    out.append(Variant(name, f"{m.kind} message {number}: value {text!r} at {at} "
                                             "first byte := 0xff (not UTF-8)",
                                       patch(data, at, b"\xff")))
    return out

