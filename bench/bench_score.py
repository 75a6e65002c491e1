"""End-to-end benchmark of ``dpo-fast score --out`` (issue 6): throughput and peak memory.

Run from a checkout after building (``pip install ".[cli]"``, or an in-place build with
``PYTHONPATH=src``)::

    python bench/bench_score.py                      # 10M rows, 3 interleaved rounds
    python bench/bench_score.py --rows 2e6 --repeats 1 --json score.json

A Parquet file of ``--rows`` preference pairs (an int64 id and the four float64 log-prob
columns, row groups of 1Mi rows, snappy) is generated on the fly in a temporary directory
(``--dir``), then three programs each read it and write the same output (the input rows plus
four float64 columns) to Parquet, each in its own process:

``dpo-fast``
    ``python -m dpo_fast score FILE --out OUT.parquet --quiet --format json`` (run through
    runpy, so that the peak reporter comes first): the shipped command, with its summary
    (loss, TRL metrics, exact margin quantiles).
``pandas``
    A straightforward pandas + NumPy script doing the same work (:data:`PANDAS_SCRIPT`):
    ``read_parquet``, rewards/margin/loss as column arithmetic with ``np.logaddexp``, the
    same summary with ``np.quantile``, ``to_parquet``.
``io-bound``
    pyarrow alone (:data:`IO_SCRIPT`): the same reader (``ParquetFile.iter_batches``, same
    batch size), the same writer settings on the same kind of background writer thread, and
    as the four added columns copies of four input columns (same size, same kind of data) --
    no computation at all. dpo-fast can at best match it.

Each run's wall time is taken around the child process (start-up and imports included, the
same for all three). Its peak memory is reported by the child itself when it exits
(:data:`PEAK_REPORTER`): VmHWM on Linux, the high-water mark of the child's own address space.
(``ru_maxrss`` from ``wait4`` would not do: a child started with vfork() inherits the parent's
high-water mark at exec, so it would report this script's own peak if that were higher.)
Rounds are interleaved so that a noisy machine slows all programs alike; the report gives
medians of the times and the largest peak memory. Unless ``--no-memory-check``, dpo-fast also
runs on files 1/8, 1/4 and 1/2 the size, to show that its peak memory does not grow with the
input.

Targets (issue 6): dpo-fast within 1.3x of the I/O bound, >= 2x the pandas script, and a peak
memory that does not grow with the file. They are printed next to the measurements, never
asserted.
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

import numpy as np

BETA = 0.1
ROW_GROUP_ROWS = 1 << 20
TARGET_X_IO = 1.3
TARGET_X_PANDAS = 2.0

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

DPO_FAST_SCRIPT = r"""
import runpy
runpy.run_module("dpo_fast", run_name="__main__")  # = python -m dpo_fast ARGS
"""

PANDAS_SCRIPT = r"""
import sys, json
import numpy as np
import pandas as pd

source, out, beta = sys.argv[1], sys.argv[2], float(sys.argv[3])
df = pd.read_parquet(source)
chosen_reward = beta * (df["chosen_logps"] - df["ref_chosen_logps"])
rejected_reward = beta * (df["rejected_logps"] - df["ref_rejected_logps"])
margin = chosen_reward - rejected_reward
loss = np.logaddexp(0.0, -margin)  # -log(sigmoid(margin)), stable
df["chosen_reward"] = chosen_reward
df["rejected_reward"] = rejected_reward
df["margin"] = margin
df["loss"] = loss
levels = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]
summary = {
    "pairs": len(df), "loss": float(loss.mean()),
    "rewards/chosen": float(chosen_reward.mean()),
    "rewards/rejected": float(rejected_reward.mean()),
    "rewards/accuracies": float((chosen_reward > rejected_reward).mean()),
    "rewards/margins": float(margin.mean()),
    "logps/chosen": float(df["chosen_logps"].mean()),
    "logps/rejected": float(df["rejected_logps"].mean()),
    "quantiles": dict(zip(map(str, levels), np.quantile(margin.to_numpy(), levels).tolist())),
    "negative_share": float((margin < 0).mean()),
}
df.to_parquet(out, index=False)
print(json.dumps(summary))
"""

IO_SCRIPT = r"""
import sys, queue, threading
import pyarrow as pa
import pyarrow.parquet as pq

source, out, batch_rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
handle = pq.ParquetFile(source, pre_buffer=False)
copies = [("chosen_reward", "chosen_logps"), ("rejected_reward", "rejected_logps"),
          ("margin", "ref_chosen_logps"), ("loss", "ref_rejected_logps")]
writer, jobs, rows = None, queue.Queue(maxsize=2), 0

def drain():
    while (batch := jobs.get()) is not None:
        writer.write_batch(batch)

thread = None
for batch in handle.iter_batches(batch_size=batch_rows, use_threads=True):
    arrays = list(batch.columns) + [batch.column(src) for _, src in copies]
    names = batch.schema.names + [name for name, _ in copies]
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    if writer is None:
        dictionary = [f.name for f in batch.schema if not pa.types.is_floating(f.type)]
        writer = pq.ParquetWriter(out, batch.schema, use_dictionary=dictionary,
                                  compression="snappy")
        thread = threading.Thread(target=drain, daemon=True)
        thread.start()
    jobs.put(batch)
    rows += batch.num_rows
jobs.put(None)
thread.join()
writer.close()
print(rows)
"""


def make_input(path: str, rows: int, seed: int = 0) -> None:
    """Write ``rows`` synthetic pairs to ``path`` (Parquet), in bounded memory."""
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
    """Run ``argv``; return (wall seconds, peak RSS in MiB, stdout). Raises on failure."""
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
    py = sys.executable
    return {
        "dpo-fast": [py, "-c", PEAK_REPORTER + DPO_FAST_SCRIPT, "score", source, "--out",
                     os.path.join(out_dir, "dpo_fast.parquet"), "--quiet", "--format", "json",
                     "--beta", str(BETA), "--batch-rows", str(batch_rows)],
        "pandas": [py, "-c", PEAK_REPORTER + PANDAS_SCRIPT, source,
                   os.path.join(out_dir, "pandas.parquet"), str(BETA)],
        "io-bound": [py, "-c", PEAK_REPORTER + IO_SCRIPT, source,
                     os.path.join(out_dir, "io.parquet"), str(batch_rows)],
    }


def check_agreement(dpo_json: str, pandas_json: str) -> dict[str, float]:
    """Largest relative differences between the two summaries (a sanity check)."""
    ours, theirs = json.loads(dpo_json), json.loads(pandas_json.strip().splitlines()[-1])
    diffs = {"loss": abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])}
    for name, value in ours["metrics"].items():
        diffs[name] = abs(value - theirs[name]) / max(abs(theirs[name]), 1e-300)
    quantile_diff = max(abs(v - theirs["quantiles"][str(float(q))])
                        for q, v in ours["margin"]["quantiles"].items())
    diffs["quantiles (abs)"] = quantile_diff
    return diffs


def run(rows: int, repeats: int, batch_rows: int, directory: str | None,
        memory_check: bool) -> dict:
    results: dict = {"rows": rows, "repeats": repeats, "batch_rows": batch_rows,
                     "machine": {"python": platform.python_version(),
                                 "platform": platform.platform(),
                                 "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        source = os.path.join(tmp, "pairs.parquet")
        started = time.perf_counter()
        make_input(source, rows)
        results["input_mb"] = os.path.getsize(source) / 2**20
        print(f"generated {rows:,} rows ({results['input_mb']:.0f} MiB) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        cmds = commands(source, tmp, batch_rows)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        outputs: dict[str, str] = {}
        for round_ in range(repeats):
            for name, argv in cmds.items():
                elapsed, peak, stdout = run_child(argv)
                samples[name].append((elapsed, peak))
                outputs[name] = stdout
                print(f"  round {round_ + 1}: {name:<9} {elapsed:7.2f} s  "
                      f"peak {peak:7.0f} MiB", flush=True)
        results["agreement"] = check_agreement(outputs["dpo-fast"], outputs["pandas"])
        results["programs"] = {}
        for name, values in samples.items():
            seconds = statistics.median(v[0] for v in values)
            results["programs"][name] = {
                "seconds": seconds, "rows_per_s": rows / seconds,
                "peak_rss_mib": max(v[1] for v in values),
                "samples": values,
            }
        if memory_check:
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
              f"dpo-fast time / I/O bound time : {x_io:.2f}x  (target <= {TARGET_X_IO}x: "
              f"{'met' if x_io <= TARGET_X_IO else 'NOT met'})",
              f"pandas time / dpo-fast time    : {x_pandas:.2f}x  (target >= "
              f"{TARGET_X_PANDAS}x: {'met' if x_pandas >= TARGET_X_PANDAS else 'NOT met'})"]
    if "memory_check" in results:
        peaks = ", ".join(f"{c['rows']:,} rows {c['peak_rss_mib']:.0f} MiB"
                          for c in results["memory_check"])
        lines.append(f"dpo-fast peak RSS by input size (max of {results['repeats']}): {peaks} "
                     "(target: no growth with the file)")
    worst = max(results["agreement"].items(), key=lambda kv: kv[1])
    lines.append(f"summary vs pandas: largest difference {worst[1]:.2e} ({worst[0]})")
    return "\n".join(lines)


def _count(text: str) -> int:
    value = float(text)
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python bench/bench_score.py [--rows N] [--repeats R] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_count, default=10_000_000,
                        help="pairs in the generated file (default 1e7)")
    parser.add_argument("--repeats", type=_count, default=3,
                        help="interleaved rounds (default 3)")
    parser.add_argument("--batch-rows", type=_count, default=None,
                        help="dpo-fast's --batch-rows, also the I/O bound's batch size "
                             "(default: dpo-fast's default)")
    parser.add_argument("--dir", help="where to put the temporary files (default: TMPDIR)")
    parser.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                        help="skip the runs on smaller files")
    parser.add_argument("--json", metavar="PATH", help="write the raw numbers as JSON")
    args = parser.parse_args(argv)
    from dpo_fast.score import DEFAULT_BATCH_ROWS

    results = run(args.rows, args.repeats, args.batch_rows or DEFAULT_BATCH_ROWS, args.dir,
                  args.memory_check)
    print()
    print(format_report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
