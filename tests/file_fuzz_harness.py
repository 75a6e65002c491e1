"""The file fuzzing's harness (tests/test_fuzz_files.py): running ``dpo-fast score`` jobs in a
child process, and judging each outcome against the promise.

Starting a Python with pyarrow costs far more than scoring a 60-row file, so the jobs run in
chunks inside a child process (:data:`DRIVER`) that calls ``dpo_fast.cli.main`` once per job
with its stdout/stderr redirected (at the file-descriptor level, so that output of native code
is seen too) and reports ``begin``/``end`` lines on a pipe. A signal or a hang is attributed to
the job that began and did not end (faulthandler writes the Python frames to that job's
stderr); the rest of the chunk goes on in a new child. :func:`confirm_alone` re-runs such a job
alone with ``python -m dpo_fast`` (when it runs clean alone, the jobs the same child ran just
before it are re-run one by one: the state one left behind may be the cause).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import types

import pyarrow as pa
from file_mutations import Variant
from test_score import read
from test_score_hostile import PACKAGE_PARENT, cli, one_line_error

CHUNK = 120  # jobs per child process
JOB_TIMEOUT = 60.0  # seconds one job may take before it counts as a hang (a job takes ~10 ms)
ALONE_TIMEOUT = 15.0  # for the re-run of a crashing or hanging job alone (~1 s normally)


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


def run_jobs(jobs: list[dict], workdir: str) -> dict[int, dict]:
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

def read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _stderr_problem(code: int, stderr: str) -> str | None:
    """None when stderr is the promised one-line error, else what is wrong with it."""
    proc = types.SimpleNamespace(returncode=code, stderr=stderr)
    try:
        one_line_error(proc)
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


def judge(job: dict, result: dict) -> list[tuple[str, str]]:
    """[(finding class, detail)] for one job: empty when the promise holds."""
    out = job["out"]
    stderr = read_text(job["stderr"]).strip()
    stdout = read_text(job["stdout"])
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
        proc = cli(*job["argv"], timeout=ALONE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return True, f"no exit within {ALONE_TIMEOUT:.0f} s"
    last = proc.stderr.strip().splitlines()[-1:] or [""]
    return proc.returncode < 0, f"exit status {proc.returncode}; {last[0][:160]}"


def confirm_alone(job: dict, result: dict, jobs: list[dict], variants: list[Variant]) -> str:
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

