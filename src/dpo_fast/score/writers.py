"""Writing: output files that appear complete or not at all, one sink per format, written
on a background thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import sys
import tempfile
import threading

import numpy as np

from dpo_fast.score.errors import ScoreDataError, ScoreUsageError, require_pyarrow
from dpo_fast.score.readers import InputFiles

__all__ = ["SINKS", "WRITE_QUEUE_DEPTH", "AtomicOutput", "BackgroundWriter", "ScoredOutput",
           "WriteFailed", "check_output_path"]

# Batches handed to the writer thread but not yet written. Two keep the writer busy while the
# next batch is scored, without holding more memory than that needs.
WRITE_QUEUE_DEPTH = 2
def tmpfile_supported() -> bool:
    """Whether to try unnamed O_TMPFILE outputs (Linux; the filesystem may still refuse)."""
    return sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")


class AtomicOutput:
    """A file that appears at ``target`` complete or not at all.

    On Linux the data goes to an unnamed O_TMPFILE inode in the target's directory, linked
    and renamed over the target at the end: even a SIGKILL leaves nothing behind. Elsewhere a
    hidden temporary file next to the target is renamed at the end and removed on any error
    or interrupt (a SIGKILL can leave that hidden file, never a partial target).
    """

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        directory = os.path.dirname(self.target)
        self._fd: int | None = None
        self._proc_fd: int | None = None
        self.path = ""
        if tmpfile_supported():
            try:
                self._fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC,
                                   0o666)
                self._proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_CLOEXEC)
                self.path = f"/proc/self/fd/{self._fd}"
                return
            except OSError:  # filesystem without O_TMPFILE, or no /proc
                self._close_fds()
        handle, self.path = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(self.target)}.", suffix=".partial")
        os.close(handle)

    def _close_fds(self) -> None:
        for fd in (self._fd, self._proc_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._proc_fd = None

    def commit(self) -> None:
        if self._fd is not None:
            # Unique per call, not per process: concurrent runs in one process writing the
            # same --out must not take each other's name (the last rename wins, whole).
            name = os.path.join(os.path.dirname(self.target),
                                f".{os.path.basename(self.target)}.{os.getpid()}."
                                f"{secrets.token_hex(8)}.partial")
            os.link(str(self._fd), name, src_dir_fd=self._proc_fd, follow_symlinks=True)
            try:
                os.replace(name, self.target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(name)
                raise
            self._close_fds()
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.path, 0o666 & ~umask)  # mkstemp made it 0600
            os.replace(self.path, self.target)

    def abort(self) -> None:
        if self._fd is not None:
            self._close_fds()  # the unnamed inode goes with its last descriptor
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


# Parquet row groups: a batch of at least PARQUET_BATCH_ROWS rows is one; smaller batches are
# gathered into row groups of PARQUET_GATHER_ROWS rows (copied: their arrays are reused by the
# scorer). Gathering batches of ordinary size instead raised a run's peak memory (measured:
# +50 MiB for 2M rows in 20,000-row batches: the copies stay in Arrow's memory pool).
PARQUET_BATCH_ROWS = 1 << 13
PARQUET_GATHER_ROWS = 1 << 16


class _ParquetSink:
    """Parquet with row groups of at least PARQUET_BATCH_ROWS rows, whatever the batch size.

    One row group per batch made --batch-rows 1 write 100,000 row groups for 100,000 rows,
    whose metadata the writer keeps until it closes (1.1-1.7 GiB).
    """

    def __init__(self, path, schema):
        import pyarrow.parquet as pq

        pa = self._pa = require_pyarrow()
        # Dictionary encoding only where it can pay: on floats (log-probs, rewards) it is
        # tried and abandoned per row group, which doubled the write time in measurements.
        dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
        self._writer = pq.ParquetWriter(path, schema, use_dictionary=dictionary,
                                        compression="snappy")
        self._pending: list = []
        self._rows = 0

    def write_batch(self, batch):
        if batch.num_rows >= PARQUET_BATCH_ROWS:
            self._flush()
            self._writer.write_batch(batch)
            return
        pa = self._pa
        self._pending.append(pa.RecordBatch.from_arrays(
            [pa.concat_arrays([column]) for column in batch.columns], schema=batch.schema))
        self._rows += batch.num_rows
        if len(self._pending) >= 256:
            # Thousands of tiny batches cost far more than their rows (every array has its
            # allocations): keep them as one.
            self._pending = [pa.concat_batches(self._pending)]
        if self._rows >= PARQUET_GATHER_ROWS:
            self._flush()

    def _flush(self):
        if self._rows:
            self._writer.write_table(self._pa.Table.from_batches(self._pending),
                                     row_group_size=self._rows)
        self._pending, self._rows = [], 0

    def close(self):
        self._flush()
        self._writer.close()


class _IpcSink:
    def __init__(self, path, schema):
        pa = require_pyarrow()
        self._file = pa.OSFile(path, "wb")
        self._writer = pa.ipc.new_file(self._file, schema)

    def write_batch(self, batch):
        self._writer.write_batch(batch)

    def close(self):
        self._writer.close()
        self._file.close()


def _csv_sink(path, schema):
    import pyarrow.csv as pacsv

    return pacsv.CSVWriter(path, schema)


class _JsonlSink:
    """JSON Lines written column-wise with Arrow kernels (no Python loop over rows, except for
    nested types and strings holding rare control characters)."""

    def __init__(self, path, schema):
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._schema = schema
        self._keys = [json.dumps(f.name) + ": " for f in schema]

    def write_batch(self, batch):
        pa = require_pyarrow()
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        pieces = []
        for index, (key, column) in enumerate(zip(self._keys, batch.columns)):
            pieces.append(pa.scalar(("{" if index == 0 else ", ") + key))
            pieces.append(_json_texts(pa, pc, column))
        pieces.append(pa.scalar("}\n"))
        lines = pc.binary_join_element_wise(*pieces, "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32,
                                count=len(lines) + 1, offset=lines.offset * 4)
        data = lines.buffers()[2]
        self._file.write(memoryview(data)[offsets[0]:offsets[-1]])

    def close(self):
        self._file.close()


def _json_texts(pa, pc, column):
    """JSON texts of an Arrow column's values, as a string array without nulls."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_floating(kind):
        # Non-finite numbers have no JSON form; null is what pandas writes for them too.
        finite = pc.is_finite(column)
        texts = pc.if_else(finite, pc.cast(column, pa.string()), pa.scalar(None, pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_decimal(kind):
        texts = pc.cast(column, pa.string())
    elif pa.types.is_null(kind):
        return pa.array(["null"] * len(column), pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        strings = column.cast(pa.string())
        if pc.any(pc.match_substring_regex(strings, "[\\x00-\\x1f]")).as_py():
            texts = pa.array([None if v is None else json.dumps(v)
                              for v in strings.to_pylist()], pa.string())
        else:
            escaped = pc.replace_substring(pc.replace_substring(strings, "\\", "\\\\"),
                                           '"', '\\"')
            texts = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_temporal(kind):
        texts = pc.binary_join_element_wise('"', pc.cast(column, pa.string()), '"', "")
    else:
        texts = pa.array([None if v is None else json.dumps(v, default=str)
                          for v in column.to_pylist()], pa.string())
    return pc.fill_null(texts, "null")


SINKS = {"parquet": _ParquetSink, "ipc": _IpcSink, "csv": _csv_sink, "jsonl": _JsonlSink}


class WriteFailed(Exception):
    """Writing the output failed (disk full, file too large, a type the format cannot hold):
    ``error`` is what the writer raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    def describe(self) -> str:
        if isinstance(self.error, OSError) and self.error.strerror:
            return self.error.strerror
        lines = str(self.error).strip().splitlines()
        return lines[0] if lines else type(self.error).__name__


class BackgroundWriter:
    """Writes batches on a thread (pyarrow's writers release the GIL), so that encoding and
    disk writes overlap the scoring of the next batch. At most ``depth`` batches wait.
    Whatever the sink raises reaches the caller as :class:`WriteFailed`."""

    def __init__(self, sink, depth: int = WRITE_QUEUE_DEPTH) -> None:
        self._sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dpo-fast-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is None:
                try:
                    self._sink.write_batch(batch)
                except BaseException as exc:  # reported to the main thread
                    self._error = exc

    def write(self, batch) -> None:
        if self._error is not None:
            raise WriteFailed(self._error)
        self._queue.put(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise WriteFailed(self._error)
        try:
            self._sink.close()
        except Exception as exc:
            raise WriteFailed(exc) from exc

    def abort(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._sink.close()


class ScoredOutput:
    """The ``--out`` file of a scoring run, as a context manager: created atomically up front
    (one that cannot be created is a usage error naming ``--out``), its background writer
    started by the first :meth:`write`, made visible by :meth:`commit`; on any error inside
    the ``with`` it is removed, and a write failure becomes a ScoreDataError naming the
    format (CSV and nested types, a full disk, a file too large for the filesystem)."""

    def __init__(self, out: str, out_format: str, schema) -> None:
        try:
            self._target: AtomicOutput | None = AtomicOutput(out)
        except OSError as exc:  # e.g. a read-only directory: name --out, not the hidden file
            raise ScoreUsageError(f"--out {out}: cannot create it ({exc.strerror or exc})"
                                  ) from None
        self._out, self._format, self._schema = out, out_format, schema
        self._writer: BackgroundWriter | None = None

    def write(self, batch) -> None:
        if self._writer is None:
            try:
                sink = SINKS[self._format](self._target.path, self._schema)
            except Exception as exc:
                raise WriteFailed(exc) from exc
            self._writer = BackgroundWriter(sink)
        self._writer.write(batch)

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            try:
                self._target.commit()
            except OSError as exc:
                raise WriteFailed(exc) from exc
            self._target = None

    def __enter__(self) -> ScoredOutput:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is None:
            return
        if self._writer is not None:
            self._writer.abort()
        if self._target is not None:
            self._target.abort()
        if isinstance(exc, WriteFailed):
            raise ScoreDataError(f"cannot write {self._format}: {exc.describe()}",
                                 file=self._out) from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(out: str, inp: InputFiles) -> None:
    target = os.path.abspath(out)
    if os.path.isdir(target):
        raise ScoreUsageError(f"--out {out}: is a directory; name the output file")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ScoreUsageError(f"--out {out}: directory {directory} does not exist")
    for path in inp.files:
        if _same_file(path, target):
            raise ScoreUsageError(f"--out {out} is the input file; choose another name")
    # Compared by (device, inode), not by name: through a link, a bind mount or "..", the
    # output's directory (or one above it) may still be one the listing entered.
    ancestor = os.path.realpath(directory)
    while True:
        info = os.stat(ancestor)
        if (info.st_dev, info.st_ino) in inp.directories:
            raise ScoreUsageError(f"--out {out} is inside the input directory, where it "
                                  "would become input of the next run; write it elsewhere")
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            return
        ancestor = parent


