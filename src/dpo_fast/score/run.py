"""``score_dataset``: the streaming run over a file or directory."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dpo_fast import _threads
from dpo_fast.score.arrow import arrow_values, to_arrow
from dpo_fast.score.batch import (
    ADDED_COLUMNS,
    GRAD_COLUMNS,
    BufferRing,
    check_and_score,
    check_on_invalid,
)
from dpo_fast.score.columns import check_added_columns, resolve_columns
from dpo_fast.score.errors import ScoreUsageError, require_pyarrow
from dpo_fast.score.options import (
    batch_parameters,
    check_loss_params,
    effective_parameters,
    loss_type_of,
)
from dpo_fast.score.readers import BatchReader, column_names, discover, format_of
from dpo_fast.score.schema import conform, input_schema, output_schema, with_columns
from dpo_fast.score.summary import (
    DEFAULT_QUANTILES,
    PartialSummary,
    ScoreSummary,
    combine_scans,
    quantile_levels,
    scan_margins,
)
from dpo_fast.score.unpaired import check_paired_params, is_unpaired
from dpo_fast.score.unpaired_run import score_unpaired
from dpo_fast.score.unpaired_summary import UnpairedSummary
from dpo_fast.score.writers import WRITE_QUEUE_DEPTH, ScoredOutput, check_output_path

__all__ = ["DEFAULT_BATCH_ROWS", "score_dataset"]

DEFAULT_BATCH_ROWS = 1 << 18
def _check_batch_rows(batch_rows) -> int:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ScoreUsageError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    return batch_rows


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # optional: no bar rather than no run
        return None
    return tqdm(total=total, unit="pairs", unit_scale=True, file=sys.stderr, delay=0.5,
                dynamic_ncols=True, leave=False)


def score_dataset(source: str, *, out: str | None = None,
                  columns: Mapping[str, str] | str | None = None, reference_free: bool = False,
                  input_format: str | None = None, output_format: str | None = None,
                  batch_rows: int = DEFAULT_BATCH_ROWS, on_invalid: str = "error",
                  quantiles: Sequence[float] | None = DEFAULT_QUANTILES,
                  replace_columns: bool = False, progress: bool = False,
                  **loss_params: Any) -> ScoreSummary | UnpairedSummary:
    """Score a preference dataset file (or directory of files) in bounded memory.

    With ``loss_type="kto"`` or ``"apo_zero_unpaired"`` the input is unpaired data (TRL's
    unpaired preference format: ``logps``, ``ref_logps``, a boolean ``label``; see
    :mod:`dpo_fast.score.unpaired`): the rows get ``reward`` and ``loss`` (and ``grad``) and
    an :class:`~dpo_fast.score.unpaired_summary.UnpairedSummary` is returned. Its loss
    parameters are ``beta``, ``desirable_weight``, ``undesirable_weight``, ``kl``,
    ``reduction`` and ``compute_grad``; any other (and ``quantiles`` other than the default)
    is refused.

    Parameters
    ----------
    source : str
        A Parquet, Arrow IPC/Feather, CSV or JSON Lines file (text formats may be compressed:
        ``.gz``, ``.bz2``, ``.zst``), or a directory of such files (names starting with ``.``
        or ``_`` are ignored, as pyarrow.dataset does).
    out : str, optional
        Write every scored input row with the columns ``chosen_reward``, ``rejected_reward``,
        ``margin``, ``loss`` (and ``grad_chosen``, ``grad_rejected`` with
        ``compute_grad=True``) added, as float64, in the format of its extension. Written to a
        temporary file and renamed at the end: a failed or interrupted run leaves no partial
        file. It may not be (or be inside) the input.
    columns : mapping or str, optional
        ``{role: column}`` or ``"role=column,..."`` (see :func:`resolve_columns`). Default
        columns: ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps``,
        ``ref_rejected_logps`` (TRL's names).
    reference_free : bool, default False
        Score against a zero reference; without it missing reference columns are an error.
    input_format, output_format : str, optional
        ``parquet``, ``ipc`` (``feather``, ``arrow``), ``csv`` or ``jsonl`` (``json``,
        ``ndjson``), when the extension does not tell.
    batch_rows : int, default 262144
        Rows per record batch: the unit of memory (see :mod:`dpo_fast.score`).
    on_invalid : {"error", "skip"}, default "error"
        A row with a null, non-numeric, NaN or infinite value in a column used (or a
        malformed CSV/JSON line): raise :class:`ScoreDataError` naming file, row and column,
        or skip the row (not written to ``out``) and count it in the summary.
    quantiles : sequence of float or None
        Levels of the margin quantiles to report (exact; None or () for none).
    replace_columns : bool, default False
        Replace input columns named like the added ones; by default that is an error.
    progress : bool, default False
        A tqdm progress bar on stderr (when tqdm is installed).
    **loss_params
        Keyword arguments of :func:`dpo_fast.preference_loss` (``beta``, ``loss_type``,
        ``label_smoothing``, ...), with three meanings specific to a streaming run:
        ``reduction`` (``"mean"`` or ``"sum"``) reduces the summary's ``loss``;
        ``compute_grad=True`` writes the per-pair derivatives as columns; ``n_threads=None``
        with ``out`` uses all CPUs but one, which the writer thread keeps busy.

    Returns
    -------
    ScoreSummary or UnpairedSummary

    Raises
    ------
    ScoreUsageError
        Bad options (before any data is read).
    ScoreDataError
        Bad or missing data: the first problem, naming file, row and column (a missing
        ``source`` too).
    """
    started = time.perf_counter()
    _check_batch_rows(batch_rows)
    check_on_invalid(on_invalid)
    levels = quantile_levels(quantiles)
    compute_grad = loss_params.get("compute_grad", False)
    unpaired = is_unpaired(loss_params)
    if unpaired and quantiles is not DEFAULT_QUANTILES and levels:
        raise ScoreUsageError("--quantiles: margin quantiles are for paired data; loss_type "
                              f"{loss_params['loss_type']!r} has no margins; drop --quantiles")
    if not unpaired:
        check_paired_params(loss_params)
    inp = discover(os.fspath(source), input_format)
    out_format = format_of(out, output_format, output=True) if out is not None else None
    if out is not None:
        check_output_path(out, inp)
    if unpaired:
        return score_unpaired(inp, out=out, out_format=out_format, columns=columns,
                              reference_free=reference_free, batch_rows=batch_rows,
                              on_invalid=on_invalid, replace_columns=replace_columns,
                              loss_params=loss_params,
                              progress=(lambda total: _progress(True, total)) if progress
                              else None)
    pa = require_pyarrow()
    schema_names = column_names(inp)
    roles = resolve_columns(schema_names, columns, reference_free, source=inp.files[0],
                            loss_type=loss_type_of(loss_params))
    reduction = check_loss_params(loss_params, [r for r, _ in roles], "dpo-fast score")
    compute_grad = bool(compute_grad)
    batch_params = batch_parameters(loss_params)
    if out is not None and batch_params.get("n_threads") is None:
        # The writer thread keeps a core busy: a kernel thread on it would wait for it at
        # every OpenMP barrier (measured on 2 cores, 10M rows: the kernel took 0.13-0.26 s
        # with 2 threads, 0.05 s with 1).
        batch_params["n_threads"] = max(1, _threads.available_cpus() - 1)
    added = ADDED_COLUMNS + (GRAD_COLUMNS if compute_grad else ())
    role_columns = list(dict.fromkeys(column for _, column in roles))
    full_schema = in_schema = out_schema = None
    if out is not None:
        # Every column of every file, one type each: what the output is written with.
        full_schema = input_schema(inp, role_columns, batch_rows)
        in_schema, out_schema = output_schema(pa, full_schema, added)
        check_added_columns(full_schema.names, added, replace_columns, "the input",
                            "--replace-columns", file=inp.files[0])
    # Read as text (CSV) or float64 (JSON Lines): parsed here, so that a bad value is a row to
    # report or skip. In JSON Lines that includes the lengths: a column typed from its values
    # could not hold a bad one.
    text_columns = [column for role, column in roles
                    if role.logps or inp.format in ("csv", "jsonl")]

    parsed_text = inp.format == "csv"
    summary = PartialSummary(levels or None)
    reader = BatchReader(inp, None if out is not None else role_columns, batch_rows,
                         text_columns, on_invalid, summary, full_schema)
    # Output arrays are reused; with --out a set is in use until the writer is done with it.
    buffers = BufferRing(WRITE_QUEUE_DEPTH + 3 if out is not None else 1,
                         ("margin",) + added)
    bar = _progress(progress, inp.count_rows() if progress else None)
    output = ScoredOutput(out, out_format, out_schema) if out is not None else None
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        if output is not None:
            stack.enter_context(output)  # on an error: the output removed, then the bar closed
        for index, path, first_row, batch in reader:
            def locate(i, path=path, first_row=first_row):
                return path, reader.exact_row(path, first_row + i)

            values = [arrow_values(batch.column(column), role, column, path)
                      for role, column in roles]
            scored = check_and_score(values, batch_params, compute_grad, on_invalid, locate,
                                     buffers)
            if scored.keep is not None:
                row, message = scored.first_skipped
                summary.add_skipped(scored.skipped, (index, locate(row)[1]), message)
                batch = batch.filter(to_arrow(pa, scored.keep))
            summary.add(scored.outputs, scored.columns[0].values, scored.columns[1].values,
                        scored.metrics)
            if output is not None and batch.num_rows:
                if parsed_text:
                    # CSV role columns were read as text: write the numbers they hold.
                    batch = with_columns(pa, batch, {c.column: c.values
                                                      for c in scored.columns})
                batch = conform(pa, batch, in_schema, path)
                arrays = [*batch.columns, *(to_arrow(pa, scored.outputs[name]) for name in added)]
                output.write(pa.RecordBatch.from_arrays(arrays, schema=out_schema))
            if bar is not None:
                bar.update(batch.num_rows + sum(scored.skipped.values()))

        def scan(fn, combine):
            # Some margin quantile needs values that were not kept: read the input again (the
            # role columns only) and score it the same way, skipping the same rows.
            again = BatchReader(inp, role_columns, batch_rows, text_columns, on_invalid,
                                PartialSummary(None))

            def margins():
                for _, path, _, batch in again:
                    values = [arrow_values(batch.column(column), role, column, path)
                              for role, column in roles]
                    yield check_and_score(values, batch_params, False, on_invalid,
                                          lambda i, path=path: (path, None)).outputs["margin"]

            return combine_scans((scan_margins(m, fn) for m in margins()), combine)

        result = summary.finish(
            reduction, scan=scan, input=inp.source, output=out,
            parameters=effective_parameters(loss_params),
            columns={role.name: column for role, column in roles})
        if output is not None:
            output.commit()
    return dataclasses.replace(result, seconds=time.perf_counter() - started)
