"""dpo_fast.score against hostile and careless inputs (issue 18): no crash, no hang, no row lost
or counted twice, no pass-through value changed; a one-line error instead.

Each corrupt input is built here. The command-line cases run in a subprocess with a timeout,
so that a crash (negative exit status) or a hang fails the test instead of the run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_score import LOGPS, make_pairs, read, write

import dpo_fast
from dpo_fast.score import ScoreDataError, ScoreUsageError, score_dataset
from dpo_fast.score import readers as score_readers
from dpo_fast.score import writers as score_writers

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))


def cli(*args, timeout=120, cwd=None):
    """``python -m dpo_fast ARGS`` in a child importing the same dpo_fast as the tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "dpo_fast", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def one_line_error(proc, *texts):
    """Exit 1 or 2 with exactly one stderr line holding ``texts``: no traceback, no crash."""
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("dpo-fast score: error: "), proc.stderr
    for text in texts:
        assert text in lines[-1], (text, proc.stderr)


# --------------------------------------------------------------------------------------------
# 1. Arrow IPC whose buffers lie about their contents
# --------------------------------------------------------------------------------------------

def _ipc_bytes(table, stream: bool) -> bytes:
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _corrupt_string_offset(data: bytes, slot: int) -> bytes:
    """Set the ``slot``-th int32 offset of the first string column (texts of 6 bytes each:
    offsets 0, 6, 12, ...) far past the end of its data buffer."""
    start = data.find(struct.pack("<iii", 0, 6, 12))
    assert start >= 0
    return data[:start + 4 * slot] + struct.pack("<i", 10**8) + data[start + 4 * slot + 4:]


@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
@pytest.mark.parametrize("out", ["x.parquet", "x.csv", "x.jsonl", "x.arrow"])
def test_corrupted_arrow_ipc_is_a_one_line_error_not_a_crash(tmp_path, stream, out):
    n = 1000
    data = make_pairs(n, reference=False)
    table = pa.table({"chosen_logps": data["chosen_logps"],
                      "rejected_logps": data["rejected_logps"],
                      "note": pa.array([f"note-{i % 10}" for i in range(n)])})
    source = tmp_path / ("bad.arrows" if stream else "bad.arrow")
    source.write_bytes(_corrupt_string_offset(_ipc_bytes(table, stream), 500))
    proc = cli("score", str(source), "--input-format", "ipc", "--reference-free",
               "--out", str(tmp_path / out))
    one_line_error(proc, str(source), "malformed Arrow IPC", "record batch 0",
                   "out of bounds")
    assert not (tmp_path / out).exists()


# --------------------------------------------------------------------------------------------
# 3. and 7. Directory inputs: links that loop, outputs reached through links
# --------------------------------------------------------------------------------------------

def _directory_of_parts(folder, parts=2, rows=500):
    folder.mkdir()
    for part in range(parts):
        write(folder / f"part-{part}.parquet", make_pairs(rows, seed=part))
    return folder


def test_a_link_back_to_the_directory_counts_every_file_once(tmp_path):
    folder = _directory_of_parts(tmp_path / "data")
    (folder / "latest").symlink_to(".")
    summary = score_dataset(str(folder))
    assert summary.pairs == 1000
    assert score_readers.discover(str(folder), None).files == [
        str(folder / "part-0.parquet"), str(folder / "part-1.parquet")]


def test_two_link_loops_end_and_count_every_file_once(tmp_path):
    folder = _directory_of_parts(tmp_path / "data")
    sub = folder / "sub"
    sub.mkdir()
    write(sub / "part-2.parquet", make_pairs(500, seed=2))
    (sub / "up").symlink_to("..")
    (sub / "again").symlink_to(".")
    (folder / "loop").symlink_to("sub")
    (folder / "alias.parquet").symlink_to("part-0.parquet")  # a second name of one file
    proc = cli("score", str(folder), "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"pairs": 1500' in proc.stdout


def test_a_dangling_link_in_the_input_is_a_one_line_error(tmp_path):
    folder = _directory_of_parts(tmp_path / "data")
    (folder / "gone.parquet").symlink_to(tmp_path / "nowhere.parquet")
    proc = cli("score", str(folder))
    one_line_error(proc, "gone.parquet", "cannot read it")


@pytest.mark.parametrize("how", ["link to the input", "link inside the input", "dot-dot"])
def test_out_inside_the_input_is_refused_whatever_the_path_says(tmp_path, how):
    folder = _directory_of_parts(tmp_path / "data")
    (folder / "sub").mkdir()
    if how == "link to the input":
        (tmp_path / "alias").symlink_to(folder)
        out = tmp_path / "alias" / "scored.parquet"
    elif how == "link inside the input":  # a linked directory the listing enters
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (folder / "more").symlink_to(elsewhere)
        out = elsewhere / "scored.parquet"
    else:
        out = folder / "sub" / ".." / "scored.parquet"
    with pytest.raises(ScoreUsageError, match="inside the input directory"):
        score_dataset(str(folder), out=str(out))
    assert not os.path.exists(out)


# --------------------------------------------------------------------------------------------
# 5., 6. and 10. Pass-through columns come out as they went in, whatever the block boundaries,
# the file order or --on-invalid
# --------------------------------------------------------------------------------------------

def _jsonl(path, records):
    with open(path, "w") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return str(path)


def _records(n, **extra):
    data = make_pairs(n)
    return [{**{k: float(data[k][i]) for k in LOGPS}, "id": i, **extra} for i in range(n)]


# With batch_rows up to 8192 the text readers take 1 MiB blocks: 12,000 records of ~150 bytes
# fill more than one.
MANY = 12_000
BLOCK_ROWS = 4096  # batch_rows giving the smallest (1 MiB) text blocks


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_jsonl_key_first_seen_after_the_first_block_is_written(tmp_path, on_invalid):
    records = _records(MANY)
    for i in range(MANY - 1000, MANY):
        records[i]["judge_note"] = f"late {i}"
    source = _jsonl(tmp_path / "late.jsonl", records)
    out = tmp_path / "o.parquet"
    summary = score_dataset(source, out=str(out), batch_rows=BLOCK_ROWS,
                            on_invalid=on_invalid)
    assert summary.pairs == MANY and summary.skipped == 0
    notes = read(out).column("judge_note").to_pylist()
    assert notes == [None] * (MANY - 1000) + [f"late {i}" for i in range(MANY - 1000, MANY)]


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_jsonl_later_fractions_in_an_integer_column_are_kept(tmp_path, on_invalid):
    records = _records(MANY, score=1)
    records[-1]["score"] = 1.5
    source = _jsonl(tmp_path / "widen.jsonl", records)
    out = tmp_path / "o.jsonl"
    summary = score_dataset(source, out=str(out), batch_rows=BLOCK_ROWS,
                            on_invalid=on_invalid)
    assert summary.pairs == MANY and summary.skipped == 0
    scores = [json.loads(line)["score"] for line in open(out)]
    assert scores == [1] * (MANY - 1) + [1.5]


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_jsonl_column_null_in_the_first_block_then_text(tmp_path, on_invalid):
    records = _records(MANY, comment=None)
    records[-5]["comment"] = "finally some text"
    source = _jsonl(tmp_path / "nulls.jsonl", records)
    out = tmp_path / "o.parquet"
    summary = score_dataset(source, out=str(out), batch_rows=BLOCK_ROWS,
                            on_invalid=on_invalid)
    assert summary.pairs == MANY and summary.skipped == 0
    comments = read(out).column("comment").to_pylist()
    assert comments[-5] == "finally some text" and comments.count(None) == MANY - 1


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_jsonl_column_of_mixed_kinds_is_one_error_in_every_mode(tmp_path, on_invalid):
    records = _records(200, tag=7)
    records[150]["tag"] = "seven"
    source = _jsonl(tmp_path / "mixed.jsonl", records)
    with pytest.raises(ScoreDataError, match="'tag' holds values of different kinds"):
        score_dataset(source, out=str(tmp_path / "o.parquet"), on_invalid=on_invalid)
    # Without --out the column is not read: nothing to refuse.
    assert score_dataset(source, on_invalid=on_invalid).pairs == 200


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_one_json_line_longer_than_a_block_is_read(tmp_path, on_invalid):
    records = _records(50)
    records[20]["essay"] = "x" * (3 << 20)
    source = _jsonl(tmp_path / "long.jsonl", records)
    out = tmp_path / "o.parquet"
    for kwargs in ({}, {"out": str(out)}):
        summary = score_dataset(source, on_invalid=on_invalid, **kwargs)
        assert summary.pairs == 50 and summary.skipped == 0
    assert len(read(out).column("essay")[20].as_py()) == 3 << 20


@pytest.mark.parametrize("reverse", [False, True])
def test_directory_files_with_other_columns_are_unified_in_any_name_order(tmp_path, reverse):
    folder = tmp_path / "parts"
    folder.mkdir()
    plain, noted = ("part-1", "part-0") if reverse else ("part-0", "part-1")
    write(folder / f"{plain}.parquet", make_pairs(300, seed=0))
    with_note = make_pairs(200, seed=1)
    with_note["judge_note"] = np.array([f"note {i}" for i in range(200)], dtype=object)
    write(folder / f"{noted}.parquet", with_note)
    out = tmp_path / "o.parquet"
    summary = score_dataset(str(folder), out=str(out))
    assert summary.pairs == 500
    table = read(out)
    notes = table.column("judge_note").to_pylist()
    assert sorted(n for n in notes if n is not None) == sorted(f"note {i}" for i in range(200))
    assert notes.count(None) == 300


def test_directory_files_with_clashing_column_types_are_one_error(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write(folder / "a.parquet", make_pairs(100, seed=0))
    other = make_pairs(100, seed=1)
    other["id"] = np.array([f"id-{i}" for i in range(100)], dtype=object)
    write(folder / "b.parquet", other)
    proc = cli("score", str(folder), "--out", str(tmp_path / "o.parquet"))
    one_line_error(proc, "b.parquet", "column 'id' is string here but int64 in",
                   "a.parquet")


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
@pytest.mark.parametrize("out_name", [None, "o.csv", "o.parquet"])
def test_csv_column_empty_in_the_first_block_then_text(tmp_path, on_invalid, out_name):
    n = 20_000  # well over one 1 MiB CSV block
    data = make_pairs(n)
    data["remark"] = np.array([""] * (n - 3) + ["late text", "", "more"], dtype=object)
    data["grade"] = np.array(["1"] * (n - 1) + ["1.5"], dtype=object)
    source = write(tmp_path / "late.csv", data)
    out = None if out_name is None else tmp_path / out_name
    summary = score_dataset(source, out=None if out is None else str(out), batch_rows=BLOCK_ROWS,
                            on_invalid=on_invalid)
    assert summary.pairs == n and summary.skipped == 0
    if out is not None:
        table = read(out)
        remarks = table.column("remark").to_pylist()
        assert [r for r in remarks if r] == ["late text", "more"]
        assert table.column("grade").to_pylist()[-2:] == [1.0, 1.5]


# --------------------------------------------------------------------------------------------
# 9. Lengths: not read where the loss ignores them; an empty completion is a row, not a batch
# --------------------------------------------------------------------------------------------

def _pairs_with_lengths(tmp_path, n=100, empty_row=70):
    data = make_pairs(n)
    data["chosen_length"] = np.full(n, 12, dtype=np.int64)
    data["rejected_length"] = np.full(n, 9, dtype=np.int64)
    data["chosen_length"][empty_row] = 0
    return write(tmp_path / "lengths.parquet", data)


@pytest.mark.parametrize("on_invalid", ["error", "skip"])
def test_lengths_a_loss_does_not_read_are_not_validated(tmp_path, on_invalid):
    source = _pairs_with_lengths(tmp_path)
    summary = score_dataset(source, batch_rows=32, on_invalid=on_invalid, loss_type="sigmoid")
    assert summary.pairs == 100 and summary.skipped == 0
    assert "chosen_length" not in summary.columns.values()


def test_an_empty_completion_is_reported_at_its_row_in_the_file(tmp_path):
    source = _pairs_with_lengths(tmp_path)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(source, batch_rows=32, loss_type="simpo", reference_free=True)
    assert str(info.value) == (f"{source}: row 70: column 'chosen_length': 0 is not a token "
                               "count (lengths must be >= 1)")
    summary = score_dataset(source, batch_rows=32, loss_type="simpo", reference_free=True,
                            on_invalid="skip")
    assert summary.pairs == 99 and summary.skipped == 1


# --------------------------------------------------------------------------------------------
# 11. Tiny batches do not make tiny Parquet row groups (whose metadata filled memory)
# --------------------------------------------------------------------------------------------

def test_tiny_batches_write_few_row_groups(tmp_path):
    data = make_pairs(3000)
    source = write(tmp_path / "in.parquet", data)
    out = tmp_path / "o.parquet"
    summary = score_dataset(source, out=str(out), batch_rows=1)
    assert summary.pairs == 3000
    assert pq.ParquetFile(out).num_row_groups == 1
    expected = score_dataset(source, out=str(tmp_path / "default.parquet"))
    assert read(tmp_path / "default.parquet").equals(read(out))
    assert expected.loss == summary.loss


# --------------------------------------------------------------------------------------------
# The one-line errors that were tracebacks, and values the Dask path and the CLI must agree on
# --------------------------------------------------------------------------------------------

def test_a_duplicated_role_column_is_a_one_line_error(tmp_path):
    values = np.linspace(-5.0, -1.0, 10)
    table = pa.Table.from_arrays([pa.array(values), pa.array(values), pa.array(values - 1)],
                                 names=["chosen_logps", "chosen_logps", "rejected_logps"])
    source = tmp_path / "dup.parquet"
    pq.write_table(table, source)
    one_line_error(cli("score", str(source), "--reference-free"), "column 'chosen_logps'",
                   "the input has 2 columns of this name")


@pytest.mark.parametrize("kind", [pa.int64(), pa.uint64()])
def test_integer_log_probs_beyond_2_53_are_read_like_numpy_does(tmp_path, kind):
    sign = 1 if kind == pa.uint64() else -1
    chosen = [sign * (2**60 + 1)] + [sign * 3] * 9
    table = pa.table({"chosen_logps": pa.array(chosen, kind),
                      "rejected_logps": pa.array(np.linspace(-5.0, -1.0, 10))})
    source = tmp_path / "big.parquet"
    pq.write_table(table, source)
    summary = score_dataset(str(source), reference_free=True, out=str(tmp_path / "o.parquet"))
    expected = dpo_fast.preference_loss(np.array(chosen, dtype=np.float64),
                                        table.column("rejected_logps").to_numpy())
    assert summary.pairs == 10 and summary.loss == expected.loss


def test_numbers_written_with_spaces_are_numbers_as_in_the_dask_path(tmp_path):
    source = tmp_path / "spaces.csv"
    source.write_text("chosen_logps,rejected_logps\n -2,-3\n-1 ,\t-2 \n")
    summary = score_dataset(str(source), reference_free=True)
    expected = dpo_fast.preference_loss(np.array([-2.0, -1.0]), np.array([-3.0, -2.0]))
    assert summary.pairs == 2 and summary.loss == expected.loss


def test_json_summary_of_an_infinite_loss_is_valid_json(tmp_path):
    table = pa.table({"chosen_logps": pa.array([-1e308] * 4),
                      "rejected_logps": pa.array([1e308] * 4)})
    source = tmp_path / "inf.parquet"
    pq.write_table(table, source)
    proc = cli("score", str(source), "--reference-free", "--beta", "1e300", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # strict: no Infinity / NaN literals
    assert summary["loss"] == "inf"


def test_out_that_cannot_be_created_names_the_users_path(tmp_path, monkeypatch):
    source = write(tmp_path / "in.parquet", make_pairs(20))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(score_writers.os, "open", refuse)
    monkeypatch.setattr(score_writers.tempfile, "mkstemp", refuse)
    out = tmp_path / "o.parquet"
    with pytest.raises(ScoreUsageError) as info:
        score_dataset(source, out=str(out))
    assert str(info.value) == f"--out {out}: cannot create it (Permission denied)"


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   OSError(27, "File too large")])
def test_a_failed_write_is_a_one_line_error_and_leaves_no_output(tmp_path, monkeypatch, error):
    source = write(tmp_path / "in.parquet", make_pairs(100))
    out = tmp_path / "o.parquet"

    class FullDisk:
        def __init__(self, path, schema):
            pass

        def write_batch(self, batch):
            raise error

        def close(self):
            pass

    monkeypatch.setitem(score_writers.SINKS, "parquet", FullDisk)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(source, out=str(out))
    assert str(info.value) == f"{out}: cannot write parquet: {error.strerror}"
    assert os.listdir(tmp_path) == ["in.parquet"]


def test_concurrent_runs_writing_one_out_never_collide(tmp_path):
    import concurrent.futures

    source = write(tmp_path / "in.parquet", make_pairs(2000))
    out = tmp_path / "o.parquet"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(score_dataset, source, out=str(out)) for _ in range(24)]
        summaries = [run.result() for run in runs]  # raised FileExistsError/FileNotFoundError
    assert {s.pairs for s in summaries} == {2000}
    assert read(out).num_rows == 2000
    assert sorted(os.listdir(tmp_path)) == ["in.parquet", "o.parquet"]


def test_huge_batch_rows_allocates_only_what_the_data_needs(tmp_path):
    source = write(tmp_path / "in.parquet", make_pairs(1000))
    proc = cli("score", source, "--batch-rows", "1e12", "--out", str(tmp_path / "o.parquet"),
               "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pairs"] == 1000


def test_margin_quantiles_equal_numpy_bit_for_bit_with_signed_zeros(tmp_path):
    chosen = np.array([-0.0, 0.0, -0.0, -1.0, 0.0, 2.0, -0.0])
    rejected = np.array([0.0, -0.0, 0.0, 0.0, 0.0, -0.0, 0.0])
    table = pa.table({"chosen_logps": chosen, "rejected_logps": rejected})
    source = tmp_path / "zeros.parquet"
    pq.write_table(table, source)
    out = tmp_path / "o.parquet"
    summary = score_dataset(str(source), reference_free=True, out=str(out),
                            quantiles=[0.0, 0.25, 0.5, 0.75, 1.0])
    margin = read(out).column("margin").to_numpy()
    assert not np.signbit(margin[margin == 0]).any()  # -0.0 never written
    expected = np.quantile(margin, list(summary.margin_quantiles))
    got = np.array(list(summary.margin_quantiles.values()))
    assert got.tobytes() == expected.tobytes()


def test_the_dask_path_and_the_cli_agree_on_spaces_and_big_integers(tmp_path):
    dd = pytest.importorskip("dask.dataframe", reason='needs dask: pip install "dpo_fast[dask]"')
    import pandas as pd

    from dpo_fast import dask as dpo_dask

    texts = pd.DataFrame({"chosen_logps": [" -2", "-1 ", "-4"],
                          "rejected_logps": ["-3", "\t-2", "-1"]})
    big = pd.DataFrame({"chosen_logps": np.array([2**60 + 1, 3, 5], dtype=np.uint64),
                        "rejected_logps": [1.0, 2.0, 3.0]})
    for frame, name in ((texts, "texts.csv"), (big, "big.parquet")):
        path = tmp_path / name
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        by_cli = score_dataset(str(path), reference_free=True)
        by_dask = dpo_dask.summarize(dd.from_pandas(frame, npartitions=2), reference_free=True)
        assert by_cli.pairs == by_dask.pairs == 3
        assert by_cli.loss == pytest.approx(by_dask.loss, rel=1e-14)  # sums per partition
        assert by_cli.margin_quantiles == by_dask.margin_quantiles
