"""``dpo-fast score`` and ``dpo-fast info`` through the command line: subprocess and in-process.

Exit codes (0 / 1 data / 2 usage) and one-line messages, JSON and table summaries equal to the
library's, ``python -m dpo_fast`` = ``dpo-fast``, the progress bar only on a terminal, atomic
output when the process is killed or interrupted mid-run, and memory that does not grow with
the input.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_score import LOGPS, _csv_line, assert_summary_matches, make_pairs, read, write

import dpo_fast
from dpo_fast import cli, score

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT,
                                                      env.get("PYTHONPATH")]))
    return env


def _run(*args, timeout=120, **kwargs):
    """``python -m dpo_fast ARGS`` in a child that imports the same dpo_fast as the tests."""
    return subprocess.run([sys.executable, "-m", "dpo_fast", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          **kwargs)


def _json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(5000, seed=21)


@pytest.fixture
def parquet_file(tmp_path, pairs):
    return write(tmp_path / "pairs.parquet", pairs, row_group_size=1000)


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------

def test_json_summary_equals_the_library(parquet_file, pairs):
    proc = _run("score", parquet_file, "--format", "json", "--beta", "0.2",
                "--label-smoothing", "0.1", "--batch-rows", "999")
    summary = _json(proc)
    assert proc.stderr == ""  # no progress bar: stderr is not a terminal
    library = score.score_dataset(parquet_file, beta=0.2, label_smoothing=0.1,
                                  batch_rows=999)
    expected = library.to_dict()
    for key in ("pairs", "loss", "metrics", "margin", "columns", "skipped", "reduction"):
        assert summary[key] == expected[key], key
    assert summary["parameters"]["beta"] == 0.2
    assert summary["parameters"]["label_smoothing"] == 0.1
    assert summary["parameters"]["loss_type"] == "sigmoid"
    assert set(summary["metrics"]) == {"rewards/chosen", "rewards/rejected",
                                       "rewards/accuracies", "rewards/margins",
                                       "logps/chosen", "logps/rejected"}
    assert set(summary["margin"]["quantiles"]) == {repr(float(q))
                                                   for q in score.DEFAULT_QUANTILES}
    assert_summary_matches(library, pairs, beta=0.2, label_smoothing=0.1)


def test_table_summary(parquet_file, capsys):
    assert cli.main(["score", parquet_file, "--quiet"]) == 0
    out = capsys.readouterr().out
    for text in ("pairs", "5,000", "loss (mean)", "rewards/chosen", "rewards/rejected",
                 "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                 "negative margins", "margin quantiles", "min", "50%", "max", "beta=0.1",
                 "for 5,000 pairs"):
        assert text in out, text
    assert "pairs/s" not in out  # a sub-second run: its rate would be mostly start-up


def test_table_summary_gives_a_rate_only_for_a_run_of_a_second_or_more():
    summary = score.ScoreSummary(pairs=3_000_000, loss=0.5, reduction="mean", metrics={},
                                 margin_quantiles={}, negative_margin_share=0.1, seconds=2.0)
    assert summary.format_table().splitlines()[-1].split() == [
        "time", "2.000", "s", "for", "3,000,000", "pairs", "(1,500,000", "pairs/s)"]
    short = score.ScoreSummary(pairs=300, loss=0.5, reduction="mean", metrics={},
                               margin_quantiles={}, negative_margin_share=0.1, seconds=0.07)
    assert short.format_table().splitlines()[-1].split() == [
        "time", "0.070", "s", "for", "300", "pairs"]


def test_python_m_is_the_dpo_fast_command(parquet_file):
    scripts = [ep for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.name == "dpo-fast"] if hasattr(importlib.metadata, "entry_points") else []
    if scripts:  # installed: the console script is cli.main, as is python -m dpo_fast
        assert scripts[0].value == "dpo_fast.cli:main"
    import dpo_fast.__main__ as main_module

    assert main_module.main is cli.main
    by_module = _json(_run("score", parquet_file, "--format", "json"))
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from dpo_fast.cli import main; sys.exit(main())",
         "score", parquet_file, "--format", "json"], capture_output=True, text=True,
        env=_env(), timeout=120)
    by_entry_point = _json(proc)
    by_module.pop("seconds")
    by_entry_point.pop("seconds")
    assert by_module == by_entry_point


def test_version_and_info():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"dpo-fast {dpo_fast.__version__}"
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    for text in ("dpo_fast", dpo_fast.__version__, "openmp", "threads", "simd",
                 dpo_fast.simd_level(), "pyarrow"):
        assert text in proc.stdout
    info = _json(_run("info", "--format", "json"))
    assert info["version"] == dpo_fast.__version__
    assert info["openmp"] is dpo_fast.openmp_enabled()
    assert info["simd"] == dpo_fast.simd_level()
    assert info["simd"] in info["simd_supported"]
    assert info["threads"] >= 1
    assert info["optional"]["pyarrow"] == pa.__version__


def test_example():
    proc = _run("score", "--example")
    assert proc.returncode == 0, proc.stderr
    assert "synthetic" in proc.stdout and "300" in proc.stdout
    # 300 rows take a fraction of a second, mostly start-up: rows and time, no rate.
    assert "s for 300 pairs" in proc.stdout and "pairs/s" not in proc.stdout
    summary = _json(_run("score", "--example", "--format", "json"))
    assert summary["pairs"] == 300 and summary["input"].startswith("example (synthetic)")


def test_formats_columns_and_reference_free_options(tmp_path, pairs):
    renamed = {"c": pairs["chosen_logps"], "r": pairs["rejected_logps"], "id": pairs["id"]}
    source = write(tmp_path / "policy.data", renamed, "csv")
    out = tmp_path / "scored.bin"
    summary = _json(_run("score", source, "--input-format", "csv", "--columns", "chosen=c",
                         "--columns", "rejected=r", "--reference-free", "--out", out,
                         "--output-format", "feather", "--format", "json", "--grad"))
    assert summary["columns"] == {"chosen": "c", "rejected": "r"}
    table = read(out, "ipc")
    assert table.column_names == ["c", "r", "id", *score.ADDED_COLUMNS, *score.GRAD_COLUMNS]
    result = dpo_fast.preference_loss(pairs["chosen_logps"], pairs["rejected_logps"],
                                      reduction="none", compute_grad=True)
    np.testing.assert_array_equal(table.column("loss").to_numpy(), result.losses)
    np.testing.assert_array_equal(table.column("grad_rejected").to_numpy(),
                                  result.grad_rejected)


def test_reduction_threads_and_quantile_options(parquet_file, pairs):
    summary = _json(_run("score", parquet_file, "--format", "json", "--reduction", "sum",
                         "--threads", "1", "--quantiles", "0.1,0.9"))
    assert summary["reduction"] == "sum" and summary["parameters"]["n_threads"] == 1
    losses = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), reduction="none").losses
    assert summary["loss"] == pytest.approx(losses.sum(), rel=1e-12)
    assert list(summary["margin"]["quantiles"]) == ["0.1", "0.9"]
    summary = _json(_run("score", parquet_file, "--format", "json", "--quantiles", "none"))
    assert summary["margin"]["quantiles"] == {}


def test_help_shows_every_loss_parameter():
    proc = _run("score", "--help")
    assert proc.returncode == 0
    for option in score.loss_options():
        assert option.flag in proc.stdout


def test_help_texts_are_written_for_the_command_line():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["score"]
                    .format_help().split())
    assert "--reduction {mean,sum}" in text
    assert "--f-divergence-type {reverse_kl,forward_kl,js_divergence,alpha_divergence}" in text
    assert "one of sigmoid, hinge, ipo" in text
    # No API docstring pasted in, no "Here: ...", no reST markup, no repeated sentence.
    for bad in ("Here:", "``", "OpenMP threads. Threads", "Also return the derivatives",
                "(default: None)"):
        assert bad not in text, bad
    assert "--threads INT threads of the loss kernel (default: the CPUs" in text
    assert "--grad, --no-grad also write each pair's derivatives" in text


# --------------------------------------------------------------------------------------------
# Exit codes and messages
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--beta", "abc"], "argument --beta: not a float: 'abc'"),
    (["--beta", "-1"], "--beta must be finite and in"),
    (["--beta", "0"], "--beta must be finite and in [1e-300, 1e300], got 0.0"),
    (["--label-smoothing", "0.6"], "--label-smoothing must be in"),
    (["--loss-type", "nope"], "unknown --loss-type 'nope'"),
    (["--loss-type", "aot"], "couples the pairs"),
    (["--reduction", "none"], "--reduction must be 'mean' or 'sum'"),
    (["--threads", "0"], "argument --threads: not a positive integer: '0'"),
    (["--batch-rows", "0"], "argument --batch-rows: not a positive integer"),
    (["--on-invalid", "ignore"], "invalid choice"),
    (["--quantiles", "2"], "levels must be in [0, 1]"),
    (["--input-format", "xlsx"], "unknown format 'xlsx'"),
    (["--columns", "temperature=x"], "unknown role 'temperature'"),
    (["--columns", "chosen"], "ROLE=COLUMN"),
    (["--out", "OUT.txt"], "--output-format"),
    (["--example"], "not both"),
])
def test_bad_options_exit_2_with_one_line_naming_the_option(parquet_file, tmp_path, args,
                                                            message):
    args = [str(tmp_path / "o.txt") if a == "OUT.txt" else a for a in args]
    proc = _run("score", parquet_file, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no usage block before it
    assert lines[0].startswith("dpo-fast score: error: ") and message in lines[0], lines[0]
    assert "n_threads" not in lines[0] and "label_smoothing" not in lines[0]


def test_an_unknown_option_is_argparses_usage_error():
    proc = _run("score", "x.parquet", "--bogus")
    assert proc.returncode == 2
    assert "usage: dpo-fast" in proc.stderr and "unrecognized arguments: --bogus" in proc.stderr


@pytest.mark.parametrize("args, status, message", [
    ([], 2, "INPUT is required"),
    (["missing.parquet"], 1, "missing.parquet: no such file or directory"),
    (["data.unknown"], 2, "--input-format"),
])
def test_errors_about_the_input(tmp_path, args, status, message):
    (tmp_path / "data.unknown").write_text("x")
    proc = _run("score", *args, cwd=tmp_path)
    assert proc.returncode == status and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("columns, typo", [
    ((), "ref_chosen_logp"),  # the file's column is misspelt
    (("--columns", "ref_chosen=ref_chosen_lgps"), None),  # the mapping is misspelt
])
def test_a_mistyped_reference_column_suggests_the_closest_name(tmp_path, pairs, columns,
                                                               typo):
    data = dict(pairs)
    if typo:
        data[typo] = data.pop("ref_chosen_logps")
    path = write(tmp_path / "typo.parquet", data)
    proc = _run("score", path, *columns)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    expected = typo or "ref_chosen_logps"
    assert f"did you mean {expected!r}? Map it with --columns ref_chosen={expected}" in line
    assert "--reference-free" not in line


def _bad_files(tmp_path, pairs):
    """name -> (path, expected row, column, words in the message)."""
    files = {}
    data = {k: v.copy() for k, v in pairs.items()}
    data["rejected_logps"][1234] = np.nan
    files["nan"] = (write(tmp_path / "nan.parquet", data, row_group_size=1000), 1234,
                    "rejected_logps", "not finite")
    table = pa.table({k: (pa.array(list(v)) if v.dtype == object else pa.array(v))
                      for k, v in pairs.items()})
    nulls = table.column("ref_chosen_logps").to_pylist()
    nulls[4321] = None
    table = table.set_column(table.column_names.index("ref_chosen_logps"), "ref_chosen_logps",
                             pa.array(nulls, pa.float64()))
    files["null"] = (write(tmp_path / "null.arrow", table), 4321, "ref_chosen_logps", "null")
    csv_path = write(tmp_path / "text.csv", pairs)
    lines = open(csv_path).read().splitlines(keepends=True)
    fields = next(csv.reader([lines[1 + 77]]))
    fields[2] = "abc"  # chosen_logps
    lines[1 + 77] = _csv_line(fields)
    open(csv_path, "w").writelines(lines)
    files["text"] = (csv_path, 77, "chosen_logps", "'abc' is not a number")
    missing = {k: v for k, v in pairs.items() if k != "ref_rejected_logps"}
    files["missing"] = (write(tmp_path / "missing.parquet", missing), None,
                        "ref_rejected_logps", "--reference-free")
    json_path = write(tmp_path / "lines.jsonl", pairs)
    lines = open(json_path).read().splitlines(keepends=True)
    lines[2500] = lines[2500][:40] + "\n"
    open(json_path, "w").writelines(lines)
    files["malformed"] = (json_path, 2500, None, "invalid JSON")
    return files


@pytest.mark.parametrize("case", ["nan", "null", "text", "missing", "malformed"])
def test_data_errors_exit_1_with_one_line_naming_file_row_column(tmp_path, pairs, case):
    path, row, column, words = _bad_files(tmp_path, pairs)[case]
    out = tmp_path / "scored.parquet"
    proc = _run("score", path, "--out", out, "--batch-rows", "1000")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"dpo-fast score: error: {path}: ")
    if row is not None:
        assert f": row {row}: " in line
    if column is not None:
        assert f"column '{column}'" in line
    assert words in line
    assert proc.stdout == ""
    assert not out.exists()
    if case != "missing":
        proc = _run("score", path, "--on-invalid", "skip", "--format", "json")
        summary = _json(proc)
        assert summary["skipped"] == 1 and summary["pairs"] == 4999
        assert "skipped 1 invalid rows" in proc.stderr


def test_output_over_the_input_is_refused(parquet_file):
    blob = open(parquet_file, "rb").read()
    proc = _run("score", parquet_file, "--out", parquet_file)
    assert proc.returncode == 2 and "is the input file" in proc.stderr
    assert open(parquet_file, "rb").read() == blob


# --------------------------------------------------------------------------------------------
# Progress bar, interrupts, memory
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def large_file(tmp_path_factory):
    """2 million pairs (~75 MB of Parquet): long enough a run to interrupt."""
    folder = tmp_path_factory.mktemp("large")
    path = folder / "large.parquet"
    writer = None
    for start in range(0, 2_000_000, 500_000):
        part = make_pairs(500_000, seed=start)
        part.pop("prompt")
        part["id"] += start
        table = pa.table(part)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    writer.close()
    return str(path)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_only_on_a_terminal(large_file, tmp_path, quiet):
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    # A terminal of 24 x 100 characters (a fresh pty has 0 columns: no room for a bar).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        # Long enough (CSV output: ~2 s) for the bar, which appears after half a second.
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpo_fast", "score", large_file, "--batch-rows", "20000",
             "--out", str(tmp_path / "o.csv"), *(["--quiet"] if quiet else [])],
            stdout=subprocess.PIPE, stderr=slave, env=_env())
        os.close(slave)
        captured = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            captured += chunk
        proc.wait(timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0
    if quiet:
        assert b"pairs/s" not in captured
    else:
        assert b"pairs/s" in captured or b"Mpairs" in captured or b"kpairs" in captured


def _in_progress(proc, folder):
    """Whether the child is writing its output yet: an unnamed O_TMPFILE it holds open
    (Linux) or a hidden .partial file in the output folder."""
    if any(name.endswith(".partial") for name in os.listdir(folder)):
        return True
    fd_dir = f"/proc/{proc.pid}/fd"
    if os.path.isdir(fd_dir):
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith(str(folder)) and "(deleted)" in target:
                return True
    return False


KILLS = [("kill", None)]
if hasattr(signal, "SIGINT") and os.name == "posix":
    KILLS += [("SIGINT", 130), ("SIGTERM", 128 + signal.SIGTERM)]


@pytest.mark.parametrize("how, code", KILLS)
def test_killed_mid_run_leaves_no_partial_output(large_file, tmp_path, how, code):
    folder = tmp_path / "outputs"
    folder.mkdir()
    out = folder / "scored.csv"  # CSV: a slow writer, so the run lasts a few seconds
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpo_fast", "score", large_file, "--out", str(out),
         "--batch-rows", "10000", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not _in_progress(proc, folder):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.01)
        time.sleep(0.2)  # a few batches into the file
        assert proc.poll() is None, "the run finished before it could be interrupted"
        if how == "kill":
            proc.kill()
        else:
            proc.send_signal(getattr(signal, how))
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if out.exists():
        # On a loaded machine the signal can land after the output was committed (the
        # summary is still being computed): then the file must be whole, never partial.
        with open(out, newline="") as handle:
            assert sum(1 for _ in csv.reader(handle)) == 2_000_000 + 1
        assert os.listdir(folder) == [out.name]
        return
    if code is not None:
        assert proc.returncode == code, stderr.decode()
        assert "Traceback" not in stderr.decode()
    if code is not None or sys.platform.startswith("linux"):
        # Interrupts clean up; a SIGKILL leaves nothing either on Linux (O_TMPFILE).
        assert os.listdir(folder) == []


def _peak_rss_mib(args):
    """Run ``dpo-fast ARGS`` in a child and return its peak resident memory in MiB.

    Measured by the child itself: on Linux VmHWM, the high-water mark of its own address
    space (ru_maxrss would include the parent's: a vfork()ed child inherits the parent's
    high-water mark at exec).
    """
    code = (
        "import sys, os\n"
        "from dpo_fast.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "if os.name == 'nt':\n"
        "    import psutil\n"
        "    peak = psutil.Process().memory_info().peak_wset / 2**20\n"
        "elif os.path.exists('/proc/self/status'):\n"
        "    with open('/proc/self/status') as fh:\n"
        "        line = next(l for l in fh if l.startswith('VmHWM:'))\n"
        "    peak = int(line.split()[1]) / 2**10\n"
        "else:\n"
        "    import resource\n"
        "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
        "print(peak, file=sys.stderr)\n"
        "sys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stderr.strip().splitlines()[-1])


def test_memory_does_not_grow_with_the_input(large_file, tmp_path):
    """The same run over 200,000 and 2,000,000 rows in 20,000-row batches: an input 10x
    larger and 100x the batch size (76 MB more to read, 144 MB more to write). Memory that
    grew with the input would need at least the 76 MB; measured, the larger run peaks 12-18
    MiB higher (allocator high-water noise and the quantile state, capped at 32 MiB)."""
    small = tmp_path / "small.parquet"
    pq.write_table(pq.read_table(large_file).slice(0, 200_000), small,
                   row_group_size=100_000)
    args = ["--batch-rows", "20000", "--quiet", "--format", "json"]
    peak_small = _peak_rss_mib(["score", small, "--out", tmp_path / "a.parquet", *args])
    peak_large = _peak_rss_mib(["score", large_file, "--out", tmp_path / "b.parquet", *args])
    extra_input_mib = (os.path.getsize(large_file) - os.path.getsize(small)) / 2**20
    assert peak_large - peak_small < 40, (
        f"peak RSS {peak_small:.0f} -> {peak_large:.0f} MiB for {extra_input_mib:.0f} MiB "
        "more input")
