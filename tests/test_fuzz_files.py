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

The jobs run in chunks in a child process that reports which job began and which ended, so
that a signal or a hang is attributed to one job, which is then re-run alone to confirm.
Every problem is collected; the test fails once with the whole list, grouped by origin, each
group with a variant that reproduces it (its description says how it was made).

Where the rest lives: the valid inputs, :class:`Variant` and the shared byte-level mutations
in file_mutations.py; the Parquet/Thrift mutations in parquet_mutations.py; the Arrow
IPC/Flatbuffers mutations in ipc_mutations.py; the child-process harness and the judging of
each outcome in file_fuzz_harness.py. This module holds the tests, the list of jobs and the
report.

``DPO_FAST_FUZZ_SCALE`` (as in test_fuzz_*.py) scales the number of random and sampled
structured variants (scale 1: ~430 variants, ~2,200 runs, ~25 s on 2 cores);
``DPO_FAST_FUZZ_FILES_REPORT=PATH`` writes the findings as JSON.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import shutil
import struct
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from file_fuzz_harness import confirm_alone, judge, read_text, run_jobs
from file_mutations import ROWS, Base, Variant, bases
from fuzz_support import SCALE
from ipc_mutations import ipc_messages, ipc_variants
from parquet_mutations import encode_varint, parquet_layout, parquet_variants, varint, zigzag

REPORT = os.environ.get("DPO_FAST_FUZZ_FILES_REPORT")
OUTPUTS = (None, "parquet", "csv", "jsonl", "arrow")  # None: no --out
CONFIRMED = 3  # crashes or hangs re-run alone at most (one per origin): the rest is the same


def _variants() -> list[Variant]:
    """Every variant of every base, deduplicated by content."""
    out, seen = [], set()
    for base in bases().values():
        rng = random.Random(f"dpo_fast fuzz files {base.name}")
        made = (parquet_variants if base.kind == "parquet" else ipc_variants)(base, rng)
        for variant in made:
            key = hashlib.sha1(variant.data).digest()
            if key not in seen and variant.data != base.data:
                seen.add(key)
                out.append(variant)
    return out


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


@pytest.fixture(scope="module", name="bases")
def valid_bases():
    return bases()


def test_the_valid_inputs_score_in_every_output_format(tmp_path, bases):
    """The harness itself: the uncorrupted inputs succeed (CSV cannot hold the list column:
    a one-line error) and their outputs read back."""
    variants = [Variant(name, "unchanged", base.data) for name, base in bases.items()]
    jobs = _jobs_for(variants, bases, str(tmp_path))
    results = run_jobs(jobs, str(tmp_path))
    for job in jobs:
        result = results[job["id"]]
        assert judge(job, result) == [], (job, result)
        lists = "tokens" in bases[variants[job["variant"]].base].schema.names
        expected = 1 if job["output"] == "csv" and lists else 0
        assert result["code"] == expected, (job, read_text(job["stderr"]))


def test_the_mutations_hit_what_they_say(bases):
    parquet = bases["parquet"].data
    footer, footer_len, ints, pages, schema_value = parquet_layout(parquet)
    rows = [i for i in ints if i.name == "FileMetaData.num_rows"]
    assert [i.value for i in rows] == [ROWS]
    assert schema_value is not None
    metadata = pq.ParquetFile(pa.BufferReader(parquet)).metadata
    assert len(pages) >= metadata.num_row_groups * metadata.num_columns
    ipc = bases["ipc-file"]
    messages = ipc_messages(ipc.data, 8)
    counts = [struct.unpack_from("<q", ipc.data, m.length_pos)[0] for m in messages
              if m.kind == "batch"]
    assert counts == [25, 25, 10]
    assert not any(m.compressed for m in messages)
    assert any(m.compressed for m in ipc_messages(bases["ipc-stream-zstd"].data, 0))
    assert encode_varint(zigzag(-1)) == b"\x01"
    assert varint(encode_varint(300, 3), 0) == (300, 3)


def test_corrupted_files_never_crash_hang_or_leave_a_traceback(tmp_path, bases):
    started = time.perf_counter()
    variants = _variants()
    workdir = str(tmp_path)
    jobs = _jobs_for(variants, bases, workdir)
    results = run_jobs(jobs, workdir)
    findings = []
    outcomes: collections.Counter = collections.Counter()
    confirmed: set[str] = set()
    for job in jobs:
        result = results[job["id"]]
        outcomes[result.get("code")] += 1
        variant = variants[job["variant"]]
        for cls, detail in judge(job, result):
            finding = {"class": cls, "detail": detail, "base": variant.base,
                       "how": variant.how, "output": job["output"], "argv": job["argv"]}
            origin = cls + "".join(line for line in detail.splitlines() if "File " in line)
            if cls in ("crash", "hang") and origin not in confirmed and \
                    len(confirmed) < CONFIRMED:
                confirmed.add(origin)
                finding["alone"] = confirm_alone(job, result, jobs, variants)
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
