"""The file fuzzing's ground (tests/test_fuzz_files.py): the valid inputs it corrupts, the
:class:`Variant` a mutation yields, and the byte-level mutations both formats share (bytes
flipped, zeroed or set to 0xFF; truncations; sampling of the structured ones).

The format-aware mutations build on these: Parquet and its Thrift footer and page headers in
parquet_mutations.py, Arrow IPC and its Flatbuffers metadata in ipc_mutations.py.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fuzz_support import SCALE
from test_score import make_pairs

ROWS, GROUP = 60, 25  # 3 row groups / record batches: 25, 25, 10 rows


def count(n: float) -> int:
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


def bases() -> dict[str, Base]:
    full = _table(reference=True, lists=True)
    free = _table(reference=False, lists=True)
    flat_free = _table(reference=False, lists=False)
    flat = _table(reference=True, lists=False)
    inputs = [
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
    return {base.name: base for base in inputs}


# --------------------------------------------------------------------------------------------
# Mutations: each variant is its bytes and a description that reproduces it
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    base: str
    how: str  # how it was made from the base bytes: the reproduction
    data: bytes


def patch(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


def byte_op(rng: random.Random, data: bytes, lo: int, hi: int, region: str,
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
    return Variant(base, how, patch(data, pos, new))


def sample(rng: random.Random, candidates: list[Variant], k: float) -> list[Variant]:
    """``k`` (scaled) of ``candidates``, in their order; all of them at a large enough scale."""
    wanted = count(k)
    if wanted >= len(candidates):
        return candidates
    return [candidates[i] for i in sorted(rng.sample(range(len(candidates)), wanted))]


def truncations(rng: random.Random, base: str, data: bytes, marks: dict[str, int]
                ) -> list[Variant]:
    size = len(data)
    cuts = {"empty": 0, "1 byte": 1, "4 bytes": 4, "8 bytes": 8, "a quarter": size // 4,
            "half": size // 2, "all but 1 byte": size - 1, "all but 4 bytes": size - 4,
            "all but 8 bytes": size - 8, "all but 10 bytes": size - 10}
    cuts.update(marks)
    for _ in range(count(6)):
        point = rng.randrange(1, size)
        cuts[f"random point {point}"] = point
    return [Variant(base, f"truncated to {at} bytes ({what})", data[:at])
            for what, at in cuts.items() if 0 <= at < size]

