"""The streaming run over unpaired (KTO) data: :func:`score_unpaired`.

:func:`dpo_fast.score.score_dataset` calls it for ``loss_type="kto"`` or
``"apo_zero_unpaired"``. Two passes when the reference point is estimated from the
``kl_logps`` / ``ref_kl_logps`` columns (the first reads only the role columns and sums
``kl_logps - ref_kl_logps`` exactly over the whole input; see :mod:`dpo_fast.score.unpaired`
for why the whole input), one otherwise. Memory is bounded as for paired data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from dpo_fast.score.arrow import arrow_labels, arrow_values, to_arrow
from dpo_fast.score.columns import check_added_columns, validate_rows
from dpo_fast.score.errors import require_pyarrow
from dpo_fast.score.readers import BatchReader, InputFiles, column_names
from dpo_fast.score.schema import conform, input_schema, output_schema, with_columns
from dpo_fast.score.unpaired import (
    UNPAIRED_ADDED_COLUMNS,
    UNPAIRED_GRAD_COLUMNS,
    check_unpaired_params,
    kl_roles,
    reference_point,
    resolve_unpaired_columns,
    score_unpaired_batch,
)
from dpo_fast.score.unpaired_summary import KLSum, UnpairedPartial, UnpairedSummary
from dpo_fast.score.writers import ScoredOutput

__all__ = ["column_values", "score_unpaired"]


def column_values(batch, roles, path):
    """The role columns of an Arrow batch as ColumnValues (labels as booleans)."""
    return [arrow_labels(batch.column(column), role, column, path) if role.name == "label"
            else arrow_values(batch.column(column), role, column, path)
            for role, column in roles]


def score_unpaired(inp: InputFiles, *, out: str | None, out_format: str | None,
                   columns: Mapping[str, str] | str | Sequence[str] | None,
                   reference_free: bool, batch_rows: int, on_invalid: str,
                   replace_columns: bool, loss_params: Mapping[str, Any],
                   progress: Callable[[int | None], Any] | None = None) -> UnpairedSummary:
    """Score an unpaired input (see :func:`dpo_fast.score.score_dataset`): write ``reward``,
    ``loss`` (and ``grad``) per row to ``out``, return the :class:`UnpairedSummary`."""
    started = time.perf_counter()
    settings = check_unpaired_params(loss_params)
    pa = require_pyarrow()
    roles = resolve_unpaired_columns(column_names(inp), columns, reference_free, settings,
                                     inp.files[0])
    added = UNPAIRED_ADDED_COLUMNS + (UNPAIRED_GRAD_COLUMNS if settings.compute_grad else ())
    role_columns = list(dict.fromkeys(column for _, column in roles))
    numeric = [column for role, column in roles if role.logps]
    label = next(column for role, column in roles if role.name == "label")
    # CSV: every role column as text, parsed here (labels: true/false). JSON Lines: the
    # log-probs as float64, the label as a boolean, so that a bad value is a row.
    text_columns = numeric + ([label] if inp.format == "csv" else [])
    bool_columns = [label] if inp.format == "jsonl" else []
    full_schema = in_schema = out_schema = None
    if out is not None:
        full_schema = input_schema(inp, numeric, batch_rows, bool_columns)
        in_schema, out_schema = output_schema(pa, full_schema, added)
        check_added_columns(full_schema.names, added, replace_columns, "the input",
                            "--replace-columns", file=inp.files[0])

    def batches(summary, schema=None, read=role_columns):
        reader = BatchReader(inp, read, batch_rows, text_columns, on_invalid, summary,
                             schema, bool_columns=bool_columns)
        for index, path, first_row, batch in reader:
            def locate(i, path=path, first_row=first_row):
                return path, reader.exact_row(path, first_row + i)

            keep, kept, counts, first = validate_rows(column_values(batch, roles, path),
                                                      on_invalid, locate)
            if keep is not None:
                summary.add_skipped(counts, (index, locate(first[0])[1]), first[1])
            yield batch, keep, kept

    estimated = None
    if kl_roles(roles):
        estimated = KLSum()
        for _, _, kept in batches(UnpairedPartial()):  # the skips are counted below
            by_role = {col.role.name: col.values for col in kept}
            estimated.add(by_role["kl_logps"], by_role["ref_kl_logps"])
    kl, kl_source = reference_point(settings, estimated)

    summary = UnpairedPartial()
    bar = progress(inp.count_rows()) if progress is not None else None
    output = ScoredOutput(out, out_format, out_schema) if out is not None else None
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        if output is not None:
            stack.enter_context(output)  # on an error: the output removed, then the bar closed
        for batch, keep, kept in batches(summary, full_schema,
                                         None if out is not None else role_columns):
            outputs, logps, labels = score_unpaired_batch(kept, settings, kl)
            summary.add(outputs, logps, labels)
            if bar is not None:
                bar.update(batch.num_rows)
            if output is None:
                continue
            if keep is not None:
                batch = batch.filter(to_arrow(pa, keep))
            if not batch.num_rows:
                continue
            if inp.format == "csv":
                # The log-prob columns were read as text: write the numbers they hold.
                batch = with_columns(pa, batch, {c.column: c.values for c in kept
                                                  if c.role.logps})
            batch = conform(pa, batch, in_schema, inp.source)
            arrays = [*batch.columns, *(to_arrow(pa, outputs[name]) for name in added)]
            output.write(pa.RecordBatch.from_arrays(arrays, schema=out_schema))
        result = summary.finish(
            settings.reduction, kl, kl_source, input=inp.source, output=out,
            parameters=settings.effective_parameters(),
            columns={role.name: column for role, column in roles})
        if output is not None:
            output.commit()
    return dataclasses.replace(result, seconds=time.perf_counter() - started)
