"""Score preference datasets on a Dask cluster: :func:`score` and :func:`summarize`.

Install with ``pip install "dpo_fast[dask]"``. This adapter imports the core and the public
names of :mod:`dpo_fast.score`'s modules (column roles and validation, batch scoring, the
summary arithmetic); neither imports it. :mod:`dpo_fast.cli` calls :func:`run_cli` for
``dpo-fast score --scheduler``.

* :func:`score` maps :func:`dpo_fast.preference_loss` over the partitions of a Dask DataFrame
  and returns a Dask DataFrame with the columns ``chosen_reward``, ``rejected_reward``,
  ``margin``, ``loss`` (and ``grad_chosen``, ``grad_rejected``) added.
* :func:`summarize` returns the global loss, TRL's metrics and the exact margin quantiles as a
  :class:`dpo_fast.score.ScoreSummary`, the same numbers as ``dpo-fast score`` on one machine:
  every partition reduces to a :class:`dpo_fast.score.PartialSummary` (float64 sums of the
  per-pair values, exact counts, a margin histogram), and those are combined exactly, in a
  tree, in any order. Margin quantiles may need one more pass over the partitions (see
  :mod:`dpo_fast.score`), which recomputes them from the source unless the DataFrame is
  persisted.

Unpaired data (``loss_type="kto"`` or ``"apo_zero_unpaired"``, TRL's unpaired format; see
:mod:`dpo_fast.score.unpaired`) is scored the same way: ``reward`` and ``loss`` per row, an
:class:`~dpo_fast.score.unpaired_summary.UnpairedSummary` whose sums are exact, so it equals
the single-machine run bit for bit. The reference point estimated from the KL columns is the
whole DataFrame's: a first pass over the partitions computes it (also for :func:`score`,
which is otherwise lazy).

Batch-coupled loss types (``aot``, ``aot_unpaired``, ``sft``: a pair's loss depends on the
other pairs of the batch) are refused with a ValueError: partitions are scored independently,
so they would not give the whole-data value. Per-pair loss types combine exactly.

Works with the default scheduler and with a ``distributed.Client`` (the functions run on the
workers; only partial sums travel back).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dpo_fast import _optional
from dpo_fast.score.arrow import LABEL_TYPE_FIX, text_labels
from dpo_fast.score.batch import (
    ADDED_COLUMNS,
    GRAD_COLUMNS,
    check_and_score,
    check_on_invalid,
)
from dpo_fast.score.columns import (
    ROLES,
    ColumnRole,
    ColumnValues,
    check_added_columns,
    parse_column_map,
    resolve_columns,
    validate_rows,
)
from dpo_fast.score.errors import ScoreDataError, ScoreUsageError
from dpo_fast.score.options import (
    batch_parameters,
    check_loss_params,
    effective_parameters,
    loss_type_of,
)
from dpo_fast.score.readers import discover, format_of
from dpo_fast.score.summary import (
    DEFAULT_QUANTILES,
    PartialSummary,
    ScoreSummary,
    combine_scans,
    quantile_levels,
    scan_margins,
)
from dpo_fast.score.unpaired import (
    UNPAIRED_ADDED_COLUMNS,
    UNPAIRED_GRAD_COLUMNS,
    UNPAIRED_ROLES,
    check_paired_params,
    check_unpaired_params,
    is_unpaired,
    kl_roles,
    reference_point,
    resolve_unpaired_columns,
    score_unpaired_batch,
)
from dpo_fast.score.unpaired_summary import KLSum, UnpairedPartial, UnpairedSummary

__all__ = ["score", "summarize"]


def _require_dask():
    dask = _optional.require("dask", needed_by="dpo_fast.dask", extra="dask")
    _optional.require("dask.dataframe", needed_by="dpo_fast.dask", extra="dask")
    return dask


def _pandas_values(series, role: ColumnRole, column: str, where: str) -> ColumnValues:
    """A pandas column as ColumnValues: float64 for log-probs, text parsed as numbers, nulls
    (None/NA) and unparsable text masked. NaN in a NumPy float column is indistinguishable
    from a missing value there and is reported as non-finite."""
    import pandas as pd

    raw = series.to_numpy(dtype=object)
    out = ColumnValues(role, column, np.empty(0), raw=lambda i: raw[i])
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise ScoreDataError(f"has type {dtype}, which holds no numbers (every row)",
                             file=where, column=column)
    if pd.api.types.is_numeric_dtype(dtype):
        if isinstance(dtype, np.dtype):
            values = series.to_numpy()
        else:  # nullable and pyarrow-backed dtypes: NA is a null, NaN stays NaN
            null = series.isna().to_numpy(dtype=bool)
            if null.any():
                out.null = null
            values = series.to_numpy(dtype=np.float64 if role.logps or dtype.kind == "f"
                                     else np.int64, na_value=0)
        out.values = values.astype(np.float64) if role.logps else values
        return out
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        null = series.isna().to_numpy(dtype=bool)
        text = series.astype("string").str.strip()
        parsed = pd.to_numeric(text, errors="coerce").astype("Float64")
        unparsed = parsed.isna().to_numpy(dtype=bool) & ~null
        # "nan" parses to NaN, not a failure: report it as non-finite, like the Arrow path.
        nan_text = text.str.lower().isin(["nan", "+nan", "-nan"]).fillna(False)
        unparsed &= ~nan_text.to_numpy(dtype=bool)
        if null.any():
            out.null = null
        if unparsed.any():
            out.non_numeric = unparsed
        values = parsed.to_numpy(dtype=np.float64, na_value=0.0)
        values[nan_text.to_numpy(dtype=bool)] = np.nan
        out.values = values
        return out
    raise ScoreDataError(f"has type {dtype}, which holds no numbers (every row)", file=where,
                         column=column)


def _pandas_labels(series, role: ColumnRole, column: str, where: str) -> ColumnValues:
    """A pandas label column as ColumnValues of bool, by the scorer's rule: booleans (and
    Python bools in an object column, JSON) as they are, text ``true``/``false`` in a string
    column (CSV); nulls and anything else masked; numbers refused for the whole column."""
    import pandas as pd

    raw = series.to_numpy(dtype=object)
    out = ColumnValues(role, column, np.zeros(len(series), dtype=bool), raw=lambda i: raw[i])
    null = series.isna().to_numpy(dtype=bool)
    if null.any():
        out.null = null
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        out.values = series.to_numpy(dtype=bool, na_value=False)
        return out
    if pd.api.types.is_object_dtype(dtype):
        is_bool = np.array([isinstance(v, (bool, np.bool_)) for v in raw], dtype=bool)
        out.values = np.array([bool(v) if ok else False for v, ok in zip(raw, is_bool)],
                              dtype=bool)
        bad = ~is_bool & ~null
    elif pd.api.types.is_string_dtype(dtype):
        lowered = series.astype("string").str.strip().str.lower()
        empty = (lowered == "").fillna(False).to_numpy(dtype=bool)
        out.values, bad = text_labels(lowered.fillna("false").to_numpy(dtype=str))
        bad &= ~null & ~empty
        if empty.any():  # an empty CSV field is a missing value
            out.null = empty if out.null is None else out.null | empty
    else:
        raise ScoreDataError(f"has type {dtype}, which {LABEL_TYPE_FIX}", file=where,
                             column=column)
    if bad.any():
        out.non_boolean = bad
    return out


def _unpaired_rows(df, roles, on_invalid, where):
    """Validate one pandas partition of unpaired data: validate_rows' tuple."""
    values = [_pandas_labels(df[column], role, column, where) if role.name == "label"
              else _pandas_values(df[column], role, column, where) for role, column in roles]
    index = df.index

    def locate(i):
        return f"{where}, row {i} (index {index[i]!r})", None

    return validate_rows(values, on_invalid, locate)


def _kl_partial(df, roles, on_invalid, number):
    """The exact sum of kl_logps - ref_kl_logps of one partition's valid rows."""
    total = KLSum()
    if len(df):
        kept = {c.role.name: c.values
                for c in _unpaired_rows(df, roles, on_invalid, f"partition {number}")[1]}
        total.add(kept["kl_logps"], kept["ref_kl_logps"])
    return total


def _unpaired_partial(df, roles, settings, kl, on_invalid, number):
    partial = UnpairedPartial()
    if len(df) == 0:
        return partial
    keep, kept, counts, first = _unpaired_rows(df, roles, on_invalid, f"partition {number}")
    if keep is not None:
        partial.add_skipped(counts, (number, first[0]), first[1])
    partial.add(*score_unpaired_batch(kept, settings, kl))
    return partial


def _score_unpaired_partition(df, roles, settings, kl, on_invalid, added,
                              partition_info=None):
    number = (partition_info or {}).get("number", "?")
    if len(df) == 0:
        return df.drop(columns=[c for c in added if c in df.columns]).assign(
            **{name: np.empty(0) for name in added})
    keep, kept, _, _ = _unpaired_rows(df, roles, on_invalid, f"partition {number}")
    if keep is not None:
        df = df[keep]
    outputs = score_unpaired_batch(kept, settings, kl)[0]
    out = df.drop(columns=[c for c in added if c in df.columns])
    return out.assign(**{name: outputs[name] for name in added})


def _tree(dask, parts, split_every):
    delayed = dask.delayed
    while len(parts) > 1:
        parts = [delayed(_merge)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    return parts[0]


def _prepare_unpaired(ddf, columns, reference_free, on_invalid, params, where, split_every=8):
    """Validate an unpaired run on the client and find its reference point (a first pass
    over the partitions when it is estimated from the KL columns): (roles, settings, z,
    where z came from)."""
    dask = _require_dask()
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise TypeError(f"{where} takes a dask.dataframe.DataFrame, got {type(ddf).__name__}")
    settings = check_unpaired_params(params)
    roles = resolve_unpaired_columns(list(ddf.columns), columns, reference_free, settings,
                                     "the DataFrame")
    estimated = None
    if kl_roles(roles):
        parts = [dask.delayed(_kl_partial)(part, roles, on_invalid, number)
                 for number, part in enumerate(ddf.to_delayed())]
        (estimated,) = dask.compute(_tree(dask, parts, split_every))
    return (roles, settings, *reference_point(settings, estimated))


def _score_unpaired(ddf, columns, reference_free, on_invalid, replace_columns, params):
    roles, settings, kl, _ = _prepare_unpaired(ddf, columns, reference_free, on_invalid,
                                               params, "score")
    added = UNPAIRED_ADDED_COLUMNS + (UNPAIRED_GRAD_COLUMNS if settings.compute_grad else ())
    clashes = check_added_columns(list(ddf.columns), added, replace_columns, "the DataFrame",
                                  "replace_columns=True")
    meta = ddf._meta.drop(columns=clashes).assign(
        **{name: np.empty(0, dtype=np.float64) for name in added})
    return ddf.map_partitions(_score_unpaired_partition, roles, settings, kl, on_invalid,
                              added, meta=meta)


def _summarize_unpaired(ddf, columns, reference_free, on_invalid, quantiles, split_every,
                        params) -> UnpairedSummary:
    if quantiles is not DEFAULT_QUANTILES and quantile_levels(quantiles):
        raise ScoreUsageError("--quantiles: margin quantiles are for paired data; loss_type "
                              f"{params['loss_type']!r} has no margins; drop --quantiles")
    dask = _require_dask()
    roles, settings, kl, kl_source = _prepare_unpaired(ddf, columns, reference_free,
                                                       on_invalid, params, "summarize",
                                                       split_every)
    parts = [dask.delayed(_unpaired_partial)(part, roles, settings, kl, on_invalid, number)
             for number, part in enumerate(ddf.to_delayed())]
    (total,) = dask.compute(_tree(dask, parts, split_every))
    return total.finish(settings.reduction, kl, kl_source,
                        parameters=settings.effective_parameters(),
                        columns={role.name: column for role, column in roles})


def _partition_scores(df, roles, params, compute_grad, on_invalid, where):
    """Score one pandas partition: (kept-rows mask or None, ScoredBatch)."""
    values = [_pandas_values(df[column], role, column, where) for role, column in roles]
    index = df.index

    def locate(i):
        return f"{where}, row {i} (index {index[i]!r})", None

    return check_and_score(values, params, compute_grad, on_invalid, locate)


def _score_partition(df, roles, params, compute_grad, on_invalid, added,
                     partition_info=None):
    number = (partition_info or {}).get("number", "?")
    if len(df) == 0:
        out = df.copy()
        for name in added:
            out[name] = np.empty(0)
        return out
    scored = _partition_scores(df, roles, params, compute_grad, on_invalid,
                               f"partition {number}")
    if scored.keep is not None:
        df = df[scored.keep]
    out = df.drop(columns=[c for c in added if c in df.columns])
    return out.assign(**{name: scored.outputs[name] for name in added})


def _partial(df, roles, params, on_invalid, levels, number):
    """PartialSummary of one partition."""
    partial = PartialSummary(levels or None)
    if len(df) == 0:
        return partial
    where = f"partition {number}"
    scored = _partition_scores(df, roles, params, False, on_invalid, where)
    if scored.keep is not None:
        row, message = scored.first_skipped
        partial.add_skipped(scored.skipped, (number, row), message)
    partial.add(scored.outputs, scored.columns[0].values, scored.columns[1].values,
                scored.metrics)
    return partial


def _merge(*partials):
    first = partials[0]
    for other in partials[1:]:
        first.merge(other)
    return first


def _scan_partition(df, roles, params, on_invalid, fn):
    """One partition's part of a quantile rescan (on the worker: only the result travels)."""
    if len(df) == 0:
        return None
    margin = _partition_scores(df, roles, params, False, on_invalid, "partition").outputs[
        "margin"]
    return scan_margins(margin, fn)


def _prepare(ddf, columns, reference_free, params, where):
    """Validate the options once on the client; return (roles, batch params, reduction)."""
    _require_dask()
    import dask.dataframe as dd

    if not isinstance(ddf, dd.DataFrame):
        raise TypeError(f"{where} takes a dask.dataframe.DataFrame, got {type(ddf).__name__}")
    check_paired_params(params)
    roles = resolve_columns(list(ddf.columns), columns, reference_free,
                            source="the DataFrame", loss_type=loss_type_of(params))
    reduction = check_loss_params(params, [r for r, _ in roles], where)
    return roles, batch_parameters(params), reduction


def score(ddf, *, columns: Mapping[str, str] | str | None = None, reference_free: bool = False,
          on_invalid: str = "error", replace_columns: bool = False, **loss_params: Any):
    """Per-pair rewards, margins and losses of a Dask DataFrame, lazily.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        Pairs with policy and reference log-probs (e.g. from
        ``dask.dataframe.read_parquet``).
    columns : mapping or str, optional
        ``{role: column}`` (see :func:`dpo_fast.score.resolve_columns`); default columns
        ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``.
    reference_free : bool, default False
        Score against a zero reference; otherwise missing reference columns are an error.
    on_invalid : {"error", "skip"}, default "error"
        A row with a null, non-numeric, NaN or infinite value in a column used raises
        :class:`dpo_fast.score.ScoreDataError` (naming partition, row and column) when the
        result is computed, or is dropped.
    replace_columns : bool, default False
        Replace existing columns named like the added ones; by default that is an error.
    **loss_params
        Keyword arguments of :func:`dpo_fast.preference_loss` (``beta``, ``loss_type``,
        ``label_smoothing``, ``compute_grad``, ``n_threads``, ...).

    Returns
    -------
    dask.dataframe.DataFrame
        ``ddf``'s columns followed by ``chosen_reward``, ``rejected_reward``, ``margin``,
        ``loss`` and, with ``compute_grad=True``, ``grad_chosen``, ``grad_rejected``
        (float64; per-pair derivatives). Unpaired data (``loss_type="kto"``): ``reward``,
        ``loss`` (and ``grad``).

    Raises
    ------
    ValueError
        Bad parameters (:class:`dpo_fast.score.ScoreUsageError`), a batch-coupled loss type,
        or missing columns (:class:`dpo_fast.score.ScoreDataError`), before anything runs.
    """
    check_on_invalid(on_invalid)
    if is_unpaired(loss_params):
        return _score_unpaired(ddf, columns, reference_free, on_invalid, replace_columns,
                               loss_params)
    roles, batch_params, _ = _prepare(ddf, columns, reference_free, loss_params, "score")
    compute_grad = bool(loss_params.get("compute_grad", False))
    added = ADDED_COLUMNS + (GRAD_COLUMNS if compute_grad else ())
    clashes = check_added_columns(list(ddf.columns), added, replace_columns, "the DataFrame",
                                  "replace_columns=True")
    meta = ddf._meta.drop(columns=clashes).assign(
        **{name: np.empty(0, dtype=np.float64) for name in added})
    return ddf.map_partitions(_score_partition, roles, batch_params, compute_grad, on_invalid,
                              added, meta=meta)


def summarize(ddf, *, columns: Mapping[str, str] | str | None = None,
              reference_free: bool = False, on_invalid: str = "error",
              quantiles: Sequence[float] | None = DEFAULT_QUANTILES, split_every: int = 8,
              **loss_params: Any) -> ScoreSummary:
    """The global loss, TRL's metrics and the exact margin quantiles of a Dask DataFrame.

    Each partition is scored and reduced to a :class:`dpo_fast.score.PartialSummary`; those
    are merged in a tree (``split_every`` at a time) with exact arithmetic, so the result is
    the same as ``dpo-fast score`` on one machine (sums to about 1e-15 relative: each
    partition sums in float64, the partition sums are combined exactly; counts and quantiles
    exactly).

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
    columns, reference_free, on_invalid
        As for :func:`score`; skipped rows are counted in the summary.
    quantiles : sequence of float or None
        Margin quantile levels (exact, ``numpy.quantile``'s linear method). A level whose
        neighbourhood was not kept by every partition costs one more pass over the
        partitions (persist ``ddf`` to avoid recomputing it).
    split_every : int, default 8
        Fan-in of the merge tree.
    **loss_params
        Keyword arguments of :func:`dpo_fast.preference_loss`; ``reduction`` (``"mean"`` or
        ``"sum"``) reduces the summary's ``loss``.

    Returns
    -------
    dpo_fast.score.ScoreSummary
        (An :class:`~dpo_fast.score.UnpairedSummary` for ``loss_type="kto"`` or
        ``"apo_zero_unpaired"``.)

    Raises
    ------
    ValueError
        Bad parameters or a batch-coupled loss type (before anything runs); a
        :class:`dpo_fast.score.ScoreDataError` for bad data, from the workers.
    """
    check_on_invalid(on_invalid)
    if is_unpaired(loss_params):
        return _summarize_unpaired(ddf, columns, reference_free, on_invalid, quantiles,
                                   split_every, loss_params)
    dask = _require_dask()
    levels = quantile_levels(quantiles)
    roles, batch_params, reduction = _prepare(ddf, columns, reference_free, loss_params,
                                              "summarize")
    delayed = dask.delayed
    parts = [delayed(_partial)(part, roles, batch_params, on_invalid, levels, number)
             for number, part in enumerate(ddf.to_delayed())]
    while len(parts) > 1:
        parts = [delayed(_merge)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    (total,) = dask.compute(parts[0])

    def scan(fn, combine):
        results = [delayed(_scan_partition)(part, roles, batch_params, on_invalid, fn)
                   for part in ddf.to_delayed()]
        return combine_scans(dask.compute(*results), combine)

    return total.finish(reduction, scan=scan,
                        parameters=effective_parameters(loss_params),
                        columns={role.name: column for role, column in roles})


def _read(source: str, input_format: str | None, role_columns: Sequence[str]):
    """A Dask DataFrame of a file or directory, for ``dpo-fast score --scheduler``."""
    import dask.dataframe as dd

    fmt = format_of(source, input_format) if not os.path.isdir(source) else (
        discover(source, input_format).format)
    if fmt == "parquet":
        return dd.read_parquet(source)
    path = source
    if os.path.isdir(source):
        path = discover(source, fmt).files
    if fmt == "csv":
        # Role columns as text, parsed (and reported row by row) by dpo_fast.
        return dd.read_csv(path, dtype={c: "string" for c in role_columns})
    if fmt == "jsonl":
        # precise_float: pandas' default float parser is off by an ulp now and then.
        return dd.read_json(path, lines=True, blocksize=64 << 20, precise_float=True)
    raise ScoreUsageError("--scheduler reads Parquet, CSV and JSON Lines (not Arrow IPC); "
                          "convert the input or run without --scheduler")


def _write_directory(scored, out: str) -> None:
    """Write a Parquet dataset directory that appears complete or not at all."""
    import shutil

    parent = os.path.dirname(os.path.abspath(out))
    temporary = os.path.join(parent, f".{os.path.basename(out)}.{os.getpid()}.partial")
    try:
        scored.to_parquet(temporary, write_index=False)
        os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def run_cli(address: str, source: str, *, params: Mapping[str, Any], out: str | None,
            columns, reference_free: bool, input_format: str | None,
            output_format: str | None, batch_rows: int, on_invalid: str, quantiles,
            replace_columns: bool) -> ScoreSummary:
    """``dpo-fast score --scheduler ADDRESS``: the same run through :func:`summarize` (and
    :func:`score` for ``--out``, written as a Parquet dataset directory) on a cluster."""
    import time

    _require_dask()
    distributed = _optional.require("distributed", needed_by="dpo-fast score --scheduler",
                                    extra="dask")
    started = time.perf_counter()
    if out is not None:
        fmt = format_of(out, output_format or "parquet", output=True)
        if fmt != "parquet" or (output_format is None and not out.endswith(
                (".parquet", os.sep)) and os.path.splitext(out)[1]):
            raise ScoreUsageError("with --scheduler, --out is written as a Parquet dataset "
                                  "(a directory of part files): name it DIR or DIR.parquet")
        if os.path.exists(out):
            raise ScoreUsageError(f"--out {out} exists; with --scheduler the output is a "
                                  "directory, written only where nothing exists yet")
    mapping = parse_column_map(columns)
    names = [mapping.get(role.name, role.default_column)
             for role in (UNPAIRED_ROLES if is_unpaired(params) else ROLES)]
    try:
        client = distributed.Client(address, timeout="30s", set_as_default=False)
    except OSError as exc:
        raise ScoreUsageError(f"--scheduler {address}: cannot connect ({exc})") from None
    import pyarrow as pa

    with client, client.as_current():
        try:
            ddf = _read(source, input_format, [n for n in names if n])
            summary = summarize(ddf, columns=columns, reference_free=reference_free,
                                on_invalid=on_invalid, quantiles=quantiles, **params)
            if out is not None:
                scored = score(ddf, columns=columns, reference_free=reference_free,
                               on_invalid=on_invalid, replace_columns=replace_columns,
                               **params)
                _write_directory(scored, out)
        except ScoreDataError as exc:
            if exc.file not in (None, "the DataFrame"):
                raise
            raise ScoreDataError(exc.reason, file=source, row=exc.row,
                                 column=exc.column) from None
        except (ScoreUsageError, ImportError):
            raise
        except (ValueError, TypeError, OSError, pa.ArrowException) as exc:
            # From dask's readers (pandas, pyarrow): a malformed file. They do not say which
            # row; run without --scheduler for that.
            text = str(exc).strip().splitlines()
            raise ScoreDataError(f"cannot read it through dask: {type(exc).__name__}: "
                                 f"{text[-1] if text else ''}", file=source) from None
    from dataclasses import replace

    return replace(summary, input=source, output=out, seconds=time.perf_counter() - started)
