"""The scoring section of ``dpo-fast bench``: ``dpo_fast.score.score_dataset`` end to end on
a Parquet file, throughput and peak memory (``python bench/bench_score.py`` runs it alone).

A Parquet file of ``rows`` preference pairs (an int64 id and the four float64 log-prob
columns, row groups of 1Mi rows, snappy) is generated in a temporary directory, then three
programs each read it and write the same output (the input rows plus four float64 columns) to
Parquet, each in its own process:

``dpo-fast``
    ``dpo_fast.score.score_dataset(FILE, out=OUT.parquet, beta=0.1, batch_rows=...)`` (the
    public API the ``dpo-fast score --out`` command calls), printing its summary as JSON.
``pandas``
    :data:`.baselines.PANDAS_SCRIPT`: ``read_parquet``, rewards / margin / loss as column
    arithmetic with ``np.logaddexp``, the same summary with ``np.quantile``, ``to_parquet``.
``io-bound``
    :data:`.baselines.IO_SCRIPT`: pyarrow alone, the same reader and writer, the added columns
    copies of four input columns: no computation. dpo-fast can at best match it.

Each run's wall time is taken around the child process (start-up and imports included, the
same for all three). Its peak memory is reported by the child itself when it exits
(:data:`PEAK_REPORTER`: VmHWM on Linux). Rounds are interleaved so that a noisy machine slows
all programs alike; the report gives medians of the times and the largest peak memory. With
``memory_check``, dpo-fast also runs on files 1/8, 1/4 and 1/2 the size, to show that its peak
memory does not grow with the input. Targets are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import harness
from .baselines import IO_SCRIPT, PANDAS_SCRIPT
from .targets import SCORE_TARGET_X_IO, SCORE_TARGET_X_PANDAS

__all__ = [
    "PEAK_REPORTER",
    "ScoreConfig",
    "check_agreement",
    "commands",
    "format_report",
    "format_score",
    "main",
    "make_input",
    "run_child",
    "run_score",
]

BETA = 0.1
ROW_GROUP_ROWS = 1 << 20

# Prepended to every child: at exit, write the process's peak resident memory (MiB) to the
# file named by $BENCH_PEAK_FILE.
PEAK_REPORTER = r"""
import atexit as _atexit, os as _os, sys as _sys

def _report_peak():
    peak = None
    if _os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as fh:
            peak = next(int(l.split()[1]) / 1024 for l in fh if l.startswith("VmHWM:"))
    elif _os.name == "nt":
        import psutil
        peak = psutil.Process().memory_info().peak_wset / 2**20
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes
    with open(_os.environ["BENCH_PEAK_FILE"], "w") as fh:
        fh.write(repr(peak))

_atexit.register(_report_peak)
"""

# dpo-fast's child: the public API, its summary as JSON (the same dict `dpo-fast score
# --format json` prints).
DPO_FAST_SCRIPT = r"""
import json, sys
from dpo_fast.score import score_dataset

source, out, beta, batch_rows = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
summary = score_dataset(source, out=out, beta=beta, batch_rows=batch_rows)
print(json.dumps(summary.to_dict()))
"""


@dataclass
class ScoreConfig:
    """What the scoring section measures.

    Attributes
    ----------
    rows : int
        Pairs in the generated file.
    repeats : int
        Interleaved rounds.
    batch_rows : int or None
        ``batch_rows`` of dpo-fast, also the I/O bound's batch size (None: dpo-fast's
        default).
    directory : str or None
        Where the temporary files go (None: TMPDIR).
    memory_check : bool
        Also run dpo-fast on files 1/8, 1/4 and 1/2 the size.
    """

    rows: int = 10_000_000
    repeats: int = 3
    batch_rows: int | None = None
    directory: str | None = None
    memory_check: bool = True

    @classmethod
    def quick(cls) -> ScoreConfig:
        """The smoke configuration: 20,000 rows, one round, no memory check."""
        return cls(rows=20_000, repeats=1, memory_check=False)


def make_input(path: str, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic pairs to ``path`` (Parquet), in bounded memory.

    Parameters
    ----------
    path : str
        Output file.
    rows : int
        Number of pairs.
    seed : int, default 0
        Seed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, ROW_GROUP_ROWS):
        n = min(ROW_GROUP_ROWS, rows - start)
        ref_chosen = rng.normal(-60.0, 8.0, n)
        ref_rejected = rng.normal(-65.0, 8.0, n)
        table = pa.table({
            "id": np.arange(start, start + n, dtype=np.int64),
            "chosen_logps": ref_chosen + rng.normal(0.5, 2.0, n),
            "rejected_logps": ref_rejected + rng.normal(-0.5, 2.0, n),
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    writer.close()


def _child_env() -> dict[str, str]:
    """The environment for the children: they import the same dpo_fast as this process."""
    import dpo_fast

    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
    return env


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """Run one program in its own process.

    Parameters
    ----------
    argv : list of str
        The command (one of :func:`commands`).

    Returns
    -------
    tuple
        ``(wall seconds, peak RSS in MiB, stdout)``.

    Raises
    ------
    RuntimeError
        When the program fails (with the end of its stderr).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory() as scratch:
        env = _child_env()
        env["BENCH_PEAK_FILE"] = os.path.join(scratch, "peak")
        started = time.perf_counter()
        proc = subprocess.run(argv, stdout=out, stderr=err, env=env)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}): "
                               f"{err.read().decode()[-2000:]}")
        with open(env["BENCH_PEAK_FILE"]) as fh:
            peak = float(fh.read())
        return elapsed, peak, out.read().decode()


def commands(source: str, out_dir: str, batch_rows: int) -> dict[str, list[str]]:
    """The three programs' command lines.

    Parameters
    ----------
    source : str
        The input Parquet file.
    out_dir : str
        Where they write their outputs.
    batch_rows : int
        dpo-fast's and the I/O bound's batch size.

    Returns
    -------
    dict of str to list of str
        ``dpo-fast``, ``pandas``, ``io-bound``.
    """
    py = sys.executable
    return {
        "dpo-fast": [py, "-c", PEAK_REPORTER + DPO_FAST_SCRIPT, source,
                     os.path.join(out_dir, "dpo_fast.parquet"), str(BETA), str(batch_rows)],
        "pandas": [py, "-c", PEAK_REPORTER + PANDAS_SCRIPT, source,
                   os.path.join(out_dir, "pandas.parquet"), str(BETA)],
        "io-bound": [py, "-c", PEAK_REPORTER + IO_SCRIPT, source,
                     os.path.join(out_dir, "io.parquet"), str(batch_rows)],
    }


def check_agreement(dpo_json: str, pandas_json: str) -> dict[str, float]:
    """Largest relative differences between the two summaries (a sanity check).

    Parameters
    ----------
    dpo_json, pandas_json : str
        The two programs' standard output.

    Returns
    -------
    dict of str to float
        Relative difference of the loss and of each metric, absolute one of the quantiles.
    """
    ours, theirs = json.loads(dpo_json), json.loads(pandas_json.strip().splitlines()[-1])
    diffs = {"loss": abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])}
    for name, value in ours["metrics"].items():
        diffs[name] = abs(value - theirs[name]) / max(abs(theirs[name]), 1e-300)
    quantile_diff = max(abs(v - theirs["quantiles"][str(float(q))])
                        for q, v in ours["margin"]["quantiles"].items())
    diffs["quantiles (abs)"] = quantile_diff
    return diffs


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message, flush=True)
    else:
        harness.progress(message.strip())


def run_score(config: ScoreConfig, verbose: bool = False) -> dict[str, Any]:
    """Run the section (needs pyarrow and pandas).

    Parameters
    ----------
    config : ScoreConfig
        Rows, rounds, batch size, directory, memory check.
    verbose : bool, default False
        Print each run as it ends (the script does; ``dpo-fast bench`` keeps stdout for its
        report).

    Returns
    -------
    dict
        ``rows``, ``repeats``, ``batch_rows``, ``machine``, ``input_mb``, ``agreement``,
        ``programs`` (``seconds``, ``rows_per_s``, ``peak_rss_mib``, ``samples`` each) and,
        with the memory check, ``memory_check``.
    """
    from dpo_fast.score import DEFAULT_BATCH_ROWS

    rows, repeats = config.rows, config.repeats
    batch_rows = config.batch_rows or DEFAULT_BATCH_ROWS
    results: dict = {"rows": rows, "repeats": repeats, "batch_rows": batch_rows,
                     "machine": {"python": platform.python_version(),
                                 "platform": platform.platform(),
                                 "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(dir=config.directory) as tmp:
        source = os.path.join(tmp, "pairs.parquet")
        started = time.perf_counter()
        make_input(source, rows)
        results["input_mb"] = os.path.getsize(source) / 2**20
        _say(f"generated {rows:,} rows ({results['input_mb']:.0f} MiB) in "
             f"{time.perf_counter() - started:.1f} s", verbose)
        cmds = commands(source, tmp, batch_rows)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        outputs: dict[str, str] = {}
        for round_ in range(repeats):
            for name, argv in cmds.items():
                elapsed, peak, stdout = run_child(argv)
                samples[name].append((elapsed, peak))
                outputs[name] = stdout
                _say(f"  round {round_ + 1}: {name:<9} {elapsed:7.2f} s  "
                     f"peak {peak:7.0f} MiB", verbose)
        results["agreement"] = check_agreement(outputs["dpo-fast"], outputs["pandas"])
        results["programs"] = {}
        for name, values in samples.items():
            seconds = statistics.median(v[0] for v in values)
            results["programs"][name] = {
                "seconds": seconds, "rows_per_s": rows / seconds,
                "peak_rss_mib": max(v[1] for v in values),
                "samples": values,
            }
        if config.memory_check:
            # dpo-fast's peak memory on files 1/8, 1/4 and 1/2 the size (and the full one
            # above): it must not grow with the input.
            results["memory_check"] = []
            for fraction in (8, 4, 2):
                small_rows = max(rows // fraction, 1)
                small = os.path.join(tmp, f"small_{fraction}.parquet")
                make_input(small, small_rows)
                peaks = [run_child(commands(small, tmp, batch_rows)["dpo-fast"])[1]
                         for _ in range(repeats)]
                results["memory_check"].append({"rows": small_rows,
                                                "peak_rss_mib": max(peaks)})
                os.unlink(small)
            results["memory_check"].append({"rows": rows, "peak_rss_mib": max(
                peak for _, peak in samples["dpo-fast"])})
    return results


def format_report(results: dict) -> str:
    """The section's report (the script prints it as is).

    Parameters
    ----------
    results : dict
        What :func:`run_score` returned.

    Returns
    -------
    str
        Programs table, ratios against the targets, memory check, agreement.
    """
    programs = results["programs"]
    ours, io, pandas = programs["dpo-fast"], programs["io-bound"], programs["pandas"]
    lines = [f"dpo-fast score --out: {results['rows']:,} rows "
             f"({results['input_mb']:.0f} MiB Parquet), batch {results['batch_rows']:,} rows, "
             f"median of {results['repeats']}",
             "",
             f"{'program':<10}{'seconds':>9}{'rows/s':>14}{'peak RSS':>11}",
             ]
    for name, p in programs.items():
        lines.append(f"{name:<10}{p['seconds']:9.2f}{p['rows_per_s']:14,.0f}"
                     f"{p['peak_rss_mib']:8.0f} MiB")
    x_io = ours["seconds"] / io["seconds"]
    x_pandas = pandas["seconds"] / ours["seconds"]
    lines += ["",
              f"dpo-fast time / I/O bound time : {x_io:.2f}x  (target <= {SCORE_TARGET_X_IO}x: "
              f"{'met' if x_io <= SCORE_TARGET_X_IO else 'NOT met'})",
              f"pandas time / dpo-fast time    : {x_pandas:.2f}x  (target >= "
              f"{SCORE_TARGET_X_PANDAS}x: "
              f"{'met' if x_pandas >= SCORE_TARGET_X_PANDAS else 'NOT met'})"]
    if "memory_check" in results:
        peaks = ", ".join(f"{c['rows']:,} rows {c['peak_rss_mib']:.0f} MiB"
                          for c in results["memory_check"])
        lines.append(f"dpo-fast peak RSS by input size (max of {results['repeats']}): {peaks} "
                     "(target: no growth with the file)")
    worst = max(results["agreement"].items(), key=lambda kv: kv[1])
    lines.append(f"summary vs pandas: largest difference {worst[1]:.2e} ({worst[0]})")
    return "\n".join(lines)


def format_score(section: dict[str, Any]) -> list[str]:
    """The report lines of the section in ``dpo-fast bench``.

    Parameters
    ----------
    section : dict
        What :func:`run_score` returned, or ``{"skipped": reason}``.

    Returns
    -------
    list of str
        A blank line, then the section's report.
    """
    if "skipped" in section:
        return ["", f"Scoring a file: skipped ({section['skipped']})"]
    return ["", "Scoring a file: " + format_report(section)]


# ------------------------------------------------------------------ bench/bench_score.py


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python bench/bench_score.py [--rows N] [--repeats R] [--json PATH]``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.
    """
    parser = argparse.ArgumentParser(
        description="End-to-end benchmark of dpo_fast.score.score_dataset (dpo-fast score "
                    "--out): throughput and peak memory.")
    parser.add_argument("--rows", type=harness.parse_count, default=ScoreConfig.rows,
                        help="pairs in the generated file (default 1e7)")
    parser.add_argument("--repeats", type=harness.parse_count, default=ScoreConfig.repeats,
                        help="interleaved rounds (default 3)")
    parser.add_argument("--batch-rows", type=harness.parse_count, default=None,
                        help="dpo-fast's --batch-rows, also the I/O bound's batch size "
                             "(default: dpo-fast's default)")
    parser.add_argument("--dir", help="where to put the temporary files (default: TMPDIR)")
    parser.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                        help="skip the runs on smaller files")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers as JSON")
    args = parser.parse_args(argv)
    config = ScoreConfig(rows=args.rows, repeats=args.repeats, batch_rows=args.batch_rows,
                         directory=args.dir, memory_check=args.memory_check)
    results = run_score(config, verbose=True)
    print()
    print(format_report(results))
    if args.json:
        harness.write_json(results, args.json)
    return 0

