"""dpo_fast.score: streaming scoring of preference files (library level, in-process).

Every format in and out, column mapping, reference-free runs, summary numbers against
preference_loss on the same arrays, every bad-data case, the exact quantiles (including the
extra passes), atomic outputs, and the generic mapping of preference_loss parameters. The
command line is tested in test_cli_score.py, the Dask path in test_dask.py.
"""

from __future__ import annotations

import argparse
import csv
import fractions
import functools
import gzip
import inspect
import io
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import dpo_fast
from dpo_fast import score
from dpo_fast.score import ScoreDataError, ScoreUsageError, score_dataset
from dpo_fast.score import batch as score_batch
from dpo_fast.score import options as score_options
from dpo_fast.score import summary as score_summary
from dpo_fast.score import writers as score_writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGPS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
LEVELS = score.DEFAULT_QUANTILES
FORMATS = {"parquet": ".parquet", "ipc": ".arrow", "csv": ".csv", "jsonl": ".jsonl"}


# --------------------------------------------------------------------------------------------
# Data helpers (also used by test_cli_score.py and test_dask.py)
# --------------------------------------------------------------------------------------------

def make_pairs(n: int, seed: int = 0, reference: bool = True) -> dict[str, np.ndarray]:
    """Synthetic pairs: an id, a text column and the log-prob columns (float64)."""
    rng = np.random.default_rng(seed)
    ref_chosen = rng.normal(-60.0, 8.0, n)
    ref_rejected = rng.normal(-65.0, 8.0, n)
    data = {
        "id": np.arange(n, dtype=np.int64),
        "prompt": np.array([f"prompt {i} \"quoted\", with comma" for i in range(n)],
                           dtype=object),
        "chosen_logps": ref_chosen + rng.normal(0.5, 2.0, n),
        "rejected_logps": ref_rejected + rng.normal(-0.5, 2.0, n),
    }
    if reference:
        data["ref_chosen_logps"] = ref_chosen
        data["ref_rejected_logps"] = ref_rejected
    return data


def write(path, data, fmt: str | None = None, row_group_size: int | None = None) -> str:
    """Write ``data`` (dict of arrays or a pyarrow Table) in the format of ``path``."""
    path = os.fspath(path)
    table = data if isinstance(data, pa.Table) else pa.table(
        {k: pa.array(list(v)) if v.dtype == object else pa.array(v) for k, v in data.items()})
    fmt = fmt or score.format_of(path)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=row_group_size)
    elif fmt == "ipc":
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=row_group_size)
    elif fmt == "csv":
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "wb") as fh:
            pacsv.write_csv(table, fh)
    else:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "wt") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row) + "\n")
    return path


def read(path, fmt: str | None = None) -> pa.Table:
    path = os.fspath(path)
    fmt = fmt or score.format_of(path, output=True)
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "ipc":
        with pa.memory_map(path) as source:
            return pa.ipc.open_file(source).read_all()
    if fmt == "csv":
        return pacsv.read_csv(path)
    with open(path) as fh:
        return pa.Table.from_pylist([json.loads(line) for line in fh])


def reference(data, reference_free=False, **params):
    """preference_loss over the whole arrays: the numbers the summary must reproduce."""
    refs = (None, None) if reference_free else (data["ref_chosen_logps"],
                                                data["ref_rejected_logps"])
    result = dpo_fast.preference_loss(data["chosen_logps"], data["rejected_logps"], *refs,
                                      reduction="none", **params)
    margin = result.chosen_rewards - result.rejected_rewards
    return result, margin


def assert_summary_matches(summary, data, reference_free=False, rel=1e-12, **params):
    """Loss and metrics to ``rel`` of preference_loss; counts and quantiles exactly."""
    reduction = params.pop("reduction", "mean")
    result, margin = reference(data, reference_free, **params)
    n = margin.size
    assert summary.pairs == n
    expected_loss = math.fsum(result.losses) / (n if reduction == "mean" else 1)
    assert summary.loss == pytest.approx(expected_loss, rel=rel)
    full = dpo_fast.preference_loss(
        data["chosen_logps"], data["rejected_logps"],
        *((None, None) if reference_free else (data["ref_chosen_logps"],
                                               data["ref_rejected_logps"])), **params)
    assert set(summary.metrics) == set(full.metrics)
    for name, value in full.metrics.items():
        assert summary.metrics[name] == pytest.approx(value, rel=rel, abs=1e-15), name
    assert summary.metrics["rewards/accuracies"] == np.count_nonzero(margin > 0) / n
    assert summary.negative_margin_share == np.count_nonzero(margin < 0) / n
    levels = list(summary.margin_quantiles)
    assert levels == sorted(LEVELS)
    expected = np.quantile(margin, levels)
    assert [summary.margin_quantiles[q] for q in levels] == expected.tolist()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(3000, seed=1)


# --------------------------------------------------------------------------------------------
# Summary numbers and formats
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS) + ["csv.gz", "jsonl.gz"])
def test_summary_equals_preference_loss_for_every_input_format(tmp_path, pairs, fmt):
    base = fmt.split(".")[0]
    path = write(tmp_path / ("pairs" + FORMATS[base] + (".gz" if fmt.endswith(".gz") else "")),
                 pairs, base)
    summary = score_dataset(path, batch_rows=700)
    assert_summary_matches(summary, pairs)
    assert summary.quantile_passes == 0
    assert summary.columns == {"chosen": "chosen_logps", "rejected": "rejected_logps",
                               "ref_chosen": "ref_chosen_logps",
                               "ref_rejected": "ref_rejected_logps"}


@pytest.mark.parametrize("out_fmt", list(FORMATS))
@pytest.mark.parametrize("in_fmt", list(FORMATS))
def test_every_format_in_and_out(tmp_path, in_fmt, out_fmt):
    data = make_pairs(400, seed=2)
    source = write(tmp_path / ("in" + FORMATS[in_fmt]), data)
    out = tmp_path / ("out" + FORMATS[out_fmt])
    summary = score_dataset(source, out=str(out), batch_rows=128, beta=0.3)
    assert summary.output == str(out)
    table = read(out)
    assert table.column_names == [*data, *score.ADDED_COLUMNS]
    assert table.num_rows == 400
    result, margin = reference(data, beta=0.3)
    # Exact: text formats carry the shortest round-trip representation of each double.
    for name, expected in (("chosen_reward", result.chosen_rewards),
                           ("rejected_reward", result.rejected_rewards),
                           ("margin", margin), ("loss", result.losses)):
        np.testing.assert_array_equal(table.column(name).to_numpy(), expected, err_msg=name)
    for name in LOGPS:
        np.testing.assert_array_equal(table.column(name).to_numpy(), data[name])
    assert table.column("prompt").to_pylist() == list(data["prompt"])
    assert table.column("id").to_pylist() == data["id"].tolist()


def test_output_format_option_and_unknown_extensions(tmp_path, pairs):
    source = write(tmp_path / "pairs.data", pairs, "parquet")
    with pytest.raises(ScoreUsageError, match="--input-format"):
        score_dataset(source)
    out = tmp_path / "scored.out"
    summary = score_dataset(source, input_format="parquet", out=str(out),
                            output_format="feather")
    assert summary.pairs == 3000
    assert read(out, "ipc").num_rows == 3000
    with pytest.raises(ScoreUsageError, match="unknown format 'xlsx'"):
        score_dataset(source, input_format="xlsx")
    with pytest.raises(ScoreUsageError, match="--output-format"):
        score_dataset(source, input_format="parquet", out=str(tmp_path / "x.txt"))


def test_batch_size_and_threads_do_not_change_the_counts_or_quantiles(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs, row_group_size=500)
    runs = [score_dataset(path, batch_rows=rows, n_threads=threads)
            for rows, threads in ((7, 1), (1000, 2), (1 << 18, None))]
    for run in runs[1:]:
        assert run.pairs == runs[0].pairs
        assert run.margin_quantiles == runs[0].margin_quantiles
        assert run.metrics["rewards/accuracies"] == runs[0].metrics["rewards/accuracies"]
        assert run.negative_margin_share == runs[0].negative_margin_share
        assert run.loss == pytest.approx(runs[0].loss, rel=1e-14)
    assert_summary_matches(runs[0], pairs)


def test_directory_of_files(tmp_path, pairs):
    folder = tmp_path / "dataset"
    (folder / "sub").mkdir(parents=True)
    parts = np.array_split(np.arange(3000), 3)
    for i, rows in enumerate(parts):
        target = folder / ("sub" if i == 2 else "") / f"part-{i}.parquet"
        write(target, {k: v[rows] for k, v in pairs.items()})
    (folder / "_SUCCESS").write_text("")  # ignored, as pyarrow.dataset does
    (folder / ".hidden.parquet").write_text("not parquet")
    summary = score_dataset(str(folder), out=str(tmp_path / "all.parquet"))
    assert_summary_matches(summary, pairs)
    assert read(tmp_path / "all.parquet").column("id").to_pylist() == list(range(3000))


def test_directory_of_mixed_formats_needs_input_format(tmp_path, pairs):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write(folder / "a.parquet", pairs)
    write(folder / "b.csv", pairs)
    with pytest.raises(ScoreUsageError, match="several formats"):
        score_dataset(str(folder))


def test_files_of_a_directory_with_other_integer_widths_are_conformed(tmp_path, pairs):
    folder = tmp_path / "widths"
    folder.mkdir()
    first = {k: v[:1500] for k, v in pairs.items()}
    second = pa.table({k: (pa.array(v[1500:], pa.int32()) if k == "id" else
                           pa.array(list(v[1500:])) if v.dtype == object else v[1500:])
                       for k, v in pairs.items()})
    write(folder / "a.parquet", first)
    write(folder / "b.parquet", second)
    score_dataset(str(folder), out=str(tmp_path / "o.parquet"))
    table = read(tmp_path / "o.parquet")
    assert table.schema.field("id").type == pa.int64()
    assert table.num_rows == 3000


def test_column_mapping(tmp_path, pairs):
    renamed = {"pc": pairs["chosen_logps"], "pr": pairs["rejected_logps"],
               "rc": pairs["ref_chosen_logps"], "rr": pairs["ref_rejected_logps"]}
    path = write(tmp_path / "renamed.parquet", renamed)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path)
    assert info.value.column == "chosen_logps" and "--columns chosen=NAME" in str(info.value)
    summary = score_dataset(path, columns="chosen=pc,rejected=pr,ref_chosen=rc,ref_rejected=rr")
    assert_summary_matches(summary, pairs)
    mapping = {"chosen": "pc", "rejected": "pr", "ref_chosen": "rc", "ref_rejected": "rr"}
    assert score_dataset(path, columns=mapping).loss == summary.loss
    with pytest.raises(ScoreUsageError, match="unknown role 'temperature'"):
        score_dataset(path, columns={**mapping, "temperature": "pc"})
    # A per-pair array parameter of preference_loss is a role too: weights=... here (and
    # log-probs, being negative, are refused as weights).
    with pytest.raises(ScoreDataError, match=r"row 0: column .pc.: -[0-9.]+ is not a weight"):
        score_dataset(path, columns={**mapping, "weight": "pc"})
    with pytest.raises(ScoreUsageError, match="ROLE=COLUMN"):
        score_dataset(path, columns="chosen")


def test_length_columns_feed_length_normalised_losses(tmp_path, pairs):
    rng = np.random.default_rng(5)
    chosen_length = rng.integers(1, 400, 3000)
    rejected_length = rng.integers(1, 400, 3000)
    data = dict(pairs, chosen_length=chosen_length, rejected_length=rejected_length)
    path = write(tmp_path / "lengths.parquet", data, row_group_size=700)
    for loss_type in ("sigmoid_norm", "ipo"):
        summary = score_dataset(path, loss_type=loss_type, beta=0.2, batch_rows=500)
        assert summary.columns["chosen_length"] == "chosen_length"
        whole = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), beta=0.2,
                                         loss_type=loss_type, chosen_lengths=chosen_length,
                                         rejected_lengths=rejected_length)
        assert summary.loss == pytest.approx(whole.loss, rel=1e-12)
    # Without length columns, a loss type that needs them is a usage error before any read.
    with pytest.raises(ScoreUsageError, match="chosen_lengths"):
        score_dataset(write(tmp_path / "plain.parquet", pairs), loss_type="sigmoid_norm")


def test_reference_free_only_when_asked(tmp_path):
    data = make_pairs(2000, seed=3, reference=False)
    path = write(tmp_path / "policy_only.jsonl", data)
    with pytest.raises(ScoreDataError, match="--reference-free") as info:
        score_dataset(path)
    assert info.value.column == "ref_chosen_logps"
    summary = score_dataset(path, reference_free=True)
    assert_summary_matches(summary, data, reference_free=True)
    assert set(summary.columns) == {"chosen", "rejected"}
    with pytest.raises(ScoreUsageError, match="contradicts --reference-free"):
        score_dataset(path, reference_free=True, columns="ref_chosen=chosen_logps")


def test_one_reference_column_missing_is_an_error(tmp_path, pairs):
    data = {k: v for k, v in pairs.items() if k != "ref_rejected_logps"}
    path = write(tmp_path / "half.parquet", data)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path)
    assert info.value.column == "ref_rejected_logps"
    assert info.value.file == path


def test_reference_free_with_reference_columns_present_ignores_them(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs)
    summary = score_dataset(path, reference_free=True)
    assert_summary_matches(summary, pairs, reference_free=True)


@pytest.mark.parametrize("params", [
    {"beta": 0.5}, {"label_smoothing": 0.2, "beta": 0.05}, {"reduction": "sum"},
    {"n_threads": 1},
])
def test_loss_parameters_pass_through(tmp_path, pairs, params):
    path = write(tmp_path / "pairs.parquet", pairs)
    summary = score_dataset(path, **params)
    assert_summary_matches(summary, pairs, **params)
    assert summary.reduction == params.get("reduction", "mean")
    for name, value in params.items():
        assert summary.parameters[name] == value
    assert summary.parameters["loss_type"] == "sigmoid"  # defaults are reported too


@pytest.mark.parametrize("loss_type", sorted(set(dpo_fast.losses.LOSS_TYPES)
                                             - dpo_fast.losses.BATCH_COUPLED_LOSS_TYPES))
def test_every_loss_type_of_the_core(tmp_path, pairs, loss_type):
    """Every per-pair loss the core offers streams to the numbers of one call on all data
    (length columns feed the types that take them; simpo is reference-free)."""
    rng = np.random.default_rng(2)
    lengths = {"chosen_lengths": rng.integers(1, 300, 3000),
               "rejected_lengths": rng.integers(1, 300, 3000)}
    data = dict(pairs, chosen_length=lengths["chosen_lengths"],
                rejected_length=lengths["rejected_lengths"])
    path = write(tmp_path / "pairs.parquet", data, row_group_size=700)
    out = tmp_path / "scored.parquet"
    free = dpo_fast._registry.LOSS_REGISTRY[loss_type].reference_free  # simpo, orpo
    # exo_pair needs label_smoothing > 0; dpop / bco_pair / alphapo get their parameter set
    extra = {"exo_pair": {"label_smoothing": 1e-3}, "dpop": {"dpop_lambda": 5.0},
             "bco_pair": {"bco_delta": 0.37},
             "alphapo": {"alphapo_alpha": 0.25}}.get(loss_type, {})
    columns = None
    if dpo_fast._registry.LOSS_REGISTRY[loss_type].gt_rewards:  # rpo_*: a margin column
        margins = rng.normal(0.0, 2.0, 3000)
        data["gt_margin"] = margins
        path = write(tmp_path / "pairs.parquet", data, row_group_size=700)
        columns = {"gt_reward_margin": "gt_margin"}
        lengths["gt_reward_margins"] = margins
        extra = {"gt_reward_scale": 0.5}
    summary = score_dataset(path, out=str(out), loss_type=loss_type, beta=0.2,
                            batch_rows=500, reference_free=free, columns=columns, **extra)
    assert_summary_matches(summary, pairs, reference_free=free, loss_type=loss_type, beta=0.2,
                           **lengths, **extra)
    result, _ = reference(pairs, reference_free=free, loss_type=loss_type, beta=0.2, **lengths,
                          **extra)
    np.testing.assert_array_equal(read(out).column("loss").to_numpy(), result.losses)


@pytest.mark.parametrize("loss_type", sorted(dpo_fast.losses.BATCH_COUPLED_LOSS_TYPES))
def test_batch_coupled_loss_types_are_refused(tmp_path, pairs, loss_type):
    path = write(tmp_path / "pairs.parquet", pairs)
    with pytest.raises(ScoreUsageError, match="couples the pairs of a batch"):
        score_dataset(path, loss_type=loss_type)
    with pytest.raises(ScoreUsageError, match="couples the pairs of a batch"):
        score_dataset(path, loss_type=["sigmoid", loss_type])


def test_gradient_columns(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs)
    out = tmp_path / "grads.parquet"
    score_dataset(path, out=str(out), compute_grad=True, beta=0.2, batch_rows=1000)
    table = read(out)
    assert table.column_names[-6:] == [*score.ADDED_COLUMNS, *score.GRAD_COLUMNS]
    result = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), beta=0.2, reduction="none",
                                      compute_grad=True)
    np.testing.assert_array_equal(table.column("grad_chosen").to_numpy(), result.grad_chosen)
    np.testing.assert_array_equal(table.column("grad_rejected").to_numpy(),
                                  result.grad_rejected)


@pytest.mark.parametrize("params, match", [
    ({"beta": -1.0}, "beta"), ({"label_smoothing": 0.7}, "label_smoothing"),
    ({"loss_type": "nope"}, "unknown loss_type"), ({"reduction": "none"}, "'mean' or 'sum'"),
    ({"n_threads": 0}, "n_threads"), ({"check_finite": False}, "unexpected parameter"),
    ({"check_finite": True}, "unexpected parameter"), ({"bogus": 1}, "unexpected parameter"),
    ({"loss_type": "aot"}, "couples the pairs"),
    ({"loss_type": "aot_unpaired"}, "couples the pairs"),
    ({"loss_type": "sft"}, "couples the pairs"),
])
def test_bad_parameters_are_usage_errors_before_reading(tmp_path, params, match):
    path = write(tmp_path / "pairs.parquet", make_pairs(10))
    with pytest.raises(ScoreUsageError, match=match):
        score_dataset(path, **params)


@pytest.mark.parametrize("options, match", [
    ({"batch_rows": 0}, "batch_rows"), ({"on_invalid": "ignore"}, "on_invalid"),
    ({"quantiles": [1.5]}, "quantile levels"),
])
def test_bad_options(tmp_path, options, match):
    path = write(tmp_path / "pairs.parquet", make_pairs(10))
    with pytest.raises(ScoreUsageError, match=match):
        score_dataset(path, **options)


def test_missing_input_is_a_data_error(tmp_path):
    with pytest.raises(ScoreDataError, match="no such file"):
        score_dataset(str(tmp_path / "nope.parquet"))


def test_quantile_levels_option(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs)
    summary = score_dataset(path, quantiles=[0.9, 0.1, 0.5])
    _, margin = reference(pairs)
    assert list(summary.margin_quantiles) == [0.1, 0.5, 0.9]
    assert list(summary.margin_quantiles.values()) == np.quantile(margin, [0.1, 0.5, 0.9]
                                                                  ).tolist()
    assert score_dataset(path, quantiles=None).margin_quantiles == {}


# --------------------------------------------------------------------------------------------
# Bad data: exit-code-1 errors naming file, row and column; on_invalid="skip"
# --------------------------------------------------------------------------------------------

def _with_bad_value(data, column, row, value):
    bad = {k: list(v) if v.dtype == object else v.astype(object) for k, v in data.items()}
    bad[column][row] = value
    return bad


def _table(data):
    return pa.Table.from_pydict({k: list(v) for k, v in data.items()})


BAD_VALUES = [
    ("null", None, "null (missing value)"),
    ("non-finite", float("nan"), "not finite"),
    ("non-finite", float("inf"), "not finite"),
    ("non-finite", float("-inf"), "not finite"),
]
# JSON has no NaN/inf numbers (those are tested as text below).
BAD_VALUE_CASES = [(fmt, *case) for fmt in ("parquet", "ipc", "jsonl") for case in BAD_VALUES
                   if fmt != "jsonl" or case[1] is None]


@pytest.mark.parametrize("fmt, reason, value, text", BAD_VALUE_CASES)
def test_bad_values_name_file_row_and_column(tmp_path, fmt, reason, value, text):
    data = make_pairs(1000, seed=4)
    bad = _with_bad_value(data, "ref_rejected_logps", 777, value)
    path = write(tmp_path / ("bad" + FORMATS[fmt]), _table(bad))
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path, batch_rows=300)
    error = info.value
    assert (error.file, error.row, error.column) == (path, 777, "ref_rejected_logps")
    assert text in str(error) and "\n" not in str(error)
    assert str(error).startswith(f"{path}: row 777: column 'ref_rejected_logps': ")
    summary = score_dataset(path, batch_rows=300, on_invalid="skip")
    assert summary.skipped == 1 and summary.skipped_by_reason == {reason: 1}
    assert "row 777" in summary.first_skipped
    keep = np.arange(1000) != 777
    assert_summary_matches(summary, {k: v[keep] for k, v in data.items()})


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("text, reason, message", [
    ("abc", "non-numeric", "'abc' is not a number"),
    ("1.5.5", "non-numeric", "'1.5.5' is not a number"),
    ("", "null", "null (missing value)"),
    ("nan", "non-finite", "not finite"),
    ("-inf", "non-finite", "not finite"),
])
def test_bad_text_values(tmp_path, fmt, text, reason, message):
    data = make_pairs(1000, seed=5)
    path = str(tmp_path / ("bad" + FORMATS[fmt]))
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(data))
            for i in range(1000):
                values = [data[k][i].item() if k != "prompt" else data[k][i] for k in data]
                if i == 613:
                    values[list(data).index("chosen_logps")] = text
                writer.writerow(values)
    else:
        value = {"nan": "NaN", "-inf": "-Infinity", "": "null"}.get(text, json.dumps(text))
        with open(path, "w") as fh:
            for i in range(1000):
                row = {k: (data[k][i] if k == "prompt" else data[k][i].item()) for k in data}
                line = json.dumps(row)
                if i == 613:  # NaN / -Infinity: Python's json extension, not JSON
                    line = line.replace(json.dumps(row["chosen_logps"]), value, 1)
                fh.write(line + "\n")
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path, batch_rows=250)
    assert (info.value.row, info.value.column) == (613, "chosen_logps")
    assert message in str(info.value)
    summary = score_dataset(path, batch_rows=250, on_invalid="skip")
    assert summary.skipped_by_reason == {reason: 1}
    keep = np.arange(1000) != 613
    assert_summary_matches(summary, {k: v[keep] for k, v in data.items()})


def test_text_in_a_typed_column(tmp_path):
    data = make_pairs(500, seed=6)
    table = pa.table({**{k: v for k, v in data.items() if k != "prompt"},
                      "rejected_logps": pa.array([repr(float(v))
                                                  for v in data["rejected_logps"]])})
    path = write(tmp_path / "strings.parquet", table)
    # Numbers stored as text are read as numbers...
    assert_summary_matches(score_dataset(path), data)
    texts = [repr(float(v)) for v in data["rejected_logps"]]
    texts[42] = "n/a"
    table = table.set_column(table.column_names.index("rejected_logps"), "rejected_logps",
                             pa.array(texts))
    write(tmp_path / "strings.parquet", table)
    with pytest.raises(ScoreDataError, match="row 42: column 'rejected_logps': 'n/a' is not"):
        score_dataset(path)


@pytest.mark.parametrize("kind", [pa.bool_(), pa.timestamp("s"), pa.list_(pa.float64())])
def test_column_types_without_numbers(tmp_path, kind):
    data = make_pairs(10, seed=7)
    values = {pa.bool_(): [True] * 10, pa.timestamp("s"): list(range(10)),
              pa.list_(pa.float64()): [[1.0]] * 10}[kind]
    table = pa.table({**{k: v for k, v in data.items() if k != "prompt"},
                      "chosen_logps": pa.array(values, kind)})
    path = write(tmp_path / "typed.parquet", table)
    for on_invalid in ("error", "skip"):
        with pytest.raises(ScoreDataError, match="holds no numbers") as info:
            score_dataset(path, on_invalid=on_invalid)
        assert info.value.column == "chosen_logps"


def test_integer_and_float32_and_decimal_columns(tmp_path):
    data = make_pairs(500, seed=8)
    table = pa.table({
        "chosen_logps": pa.array(np.round(data["chosen_logps"]).astype(np.int32)),
        "rejected_logps": pa.array(data["rejected_logps"].astype(np.float32)),
        "ref_chosen_logps": pa.array(data["ref_chosen_logps"].astype(np.float16)),
        "ref_rejected_logps": pa.array(
            [f"{v:.3f}" for v in data["ref_rejected_logps"]]).cast(pa.decimal128(10, 3)),
    })
    path = write(tmp_path / "types.parquet", table)
    summary = score_dataset(path)
    as_float = {name: table.column(name).cast(pa.float64()).to_numpy() for name in LOGPS}
    assert_summary_matches(summary, as_float)


def _csv_line(fields):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def test_malformed_csv_row(tmp_path):
    data = make_pairs(600, seed=9)
    path = write(tmp_path / "rows.csv", data)
    lines = open(path).read().splitlines(keepends=True)
    lines[1 + 250] = "1,2\n"  # data row 250 has two fields
    open(path, "w").writelines(lines)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path, batch_rows=100)
    assert info.value.row == 250 and "expected 6 fields, got 2" in str(info.value)
    # Skipped, and a later bad value is still named by its row in the file.
    fields = next(csv.reader([lines[1 + 400]]))
    fields[2] = "oops"  # chosen_logps
    lines[1 + 400] = _csv_line(fields)
    open(path, "w").writelines(lines)
    summary = score_dataset(path, batch_rows=100, on_invalid="skip")
    assert summary.skipped_by_reason == {"malformed": 1, "non-numeric": 1}
    assert "row 250" in summary.first_skipped
    with pytest.raises(ScoreDataError, match="row 250"):
        score_dataset(path, batch_rows=100)
    keep = (np.arange(600) != 250) & (np.arange(600) != 400)
    assert_summary_matches(summary, {k: v[keep] for k, v in data.items()})
    # The row of a bad value after a skipped malformed row is its row in the file.
    lines[1 + 250] = "1,2\n"
    lines[1 + 400] = lines[1 + 401]
    fields = next(csv.reader([lines[1 + 500]]))
    fields[3] = ""  # rejected_logps
    lines[1 + 500] = _csv_line(fields)
    open(path, "w").writelines(lines)
    summary = score_dataset(path, batch_rows=100, on_invalid="skip")
    assert summary.skipped_by_reason == {"malformed": 1, "null": 1}


def test_malformed_json_lines(tmp_path):
    data = make_pairs(600, seed=10)
    path = write(tmp_path / "rows.jsonl", data)
    lines = open(path).read().splitlines(keepends=True)
    lines[321] = '{"chosen_logps": -1.0, oops\n'
    lines[500] = "[1, 2, 3]\n"
    lines.insert(100, "\n")  # blank lines are not records
    open(path, "w").writelines(lines)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path, batch_rows=100)
    assert info.value.row == 321 and "invalid JSON" in str(info.value)
    summary = score_dataset(path, batch_rows=100, on_invalid="skip")
    assert summary.skipped_by_reason == {"malformed": 2}
    keep = (np.arange(600) != 321) & (np.arange(600) != 500)
    assert_summary_matches(summary, {k: v[keep] for k, v in data.items()})


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_truncated_binary_file(tmp_path, fmt):
    path = write(tmp_path / ("cut" + FORMATS[fmt]), make_pairs(5000, seed=11),
                 row_group_size=1000)
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path)
    assert info.value.file == path and "\n" not in str(info.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not a parquet file at all" * 10)
    with pytest.raises(ScoreDataError, match="garbage.parquet"):
        score_dataset(str(path))


def test_empty_input_and_all_rows_invalid(tmp_path):
    data = make_pairs(0)
    path = write(tmp_path / "empty.parquet", data)
    with pytest.raises(ScoreDataError, match="no valid pairs"):
        score_dataset(path)
    bad = make_pairs(5)
    bad["chosen_logps"][:] = np.nan
    path = write(tmp_path / "nan.parquet", bad)
    with pytest.raises(ScoreDataError, match=r"no valid pairs .*5 rows skipped"):
        score_dataset(path, on_invalid="skip", out=str(tmp_path / "o.parquet"))
    assert not (tmp_path / "o.parquet").exists()


def test_skipped_rows_are_not_written(tmp_path):
    data = make_pairs(1000, seed=12)
    data["chosen_logps"][[3, 500, 999]] = np.nan
    path = write(tmp_path / "some_nan.parquet", data)
    out = tmp_path / "kept.parquet"
    summary = score_dataset(path, out=str(out), on_invalid="skip", batch_rows=256)
    assert summary.skipped == 3
    ids = read(out).column("id").to_pylist()
    assert ids == [i for i in range(1000) if i not in (3, 500, 999)]


# --------------------------------------------------------------------------------------------
# Exact quantiles: the sketch, its extra passes, merging
# --------------------------------------------------------------------------------------------

def test_quantiles_of_drifting_data_take_an_extra_pass_and_stay_exact(tmp_path, monkeypatch):
    # The first half of the file scores around one margin, the second half around another:
    # the bins near the final median had values before anything pointed at them.
    data = make_pairs(20_000, seed=13)
    data["chosen_logps"][10_000:] += 30.0
    path = write(tmp_path / "drift.parquet", data)
    summary = score_dataset(path, batch_rows=1000)
    assert summary.quantile_passes >= 1
    assert_summary_matches(summary, data)
    # A tiny memory budget forces the histogram refinements (20 more bits per pass).
    monkeypatch.setattr(score_summary, "QUANTILE_BUDGET", 3)
    summary = score_dataset(path, batch_rows=1000)
    assert summary.quantile_passes >= 2
    assert_summary_matches(summary, data)


def test_quantiles_of_sorted_data_are_exact(tmp_path):
    data = make_pairs(20_000, seed=16)
    _, margin = reference(data)
    order = np.argsort(margin)[::-1]
    path = write(tmp_path / "sorted.parquet", {k: v[order] for k, v in data.items()})
    assert_summary_matches(score_dataset(path, batch_rows=1000), data)


def test_quantiles_with_ties_zeros_and_extremes():
    values = np.concatenate([np.zeros(500), np.full(300, -0.0), np.full(100, 1e-300),
                             np.full(50, -5e-324), [1e308, -1e308], np.linspace(-3, 3, 1000)])
    rng = np.random.default_rng(0)
    rng.shuffle(values)
    levels = (0.0, 0.1, 0.33, 0.5, 0.9, 0.999, 1.0)
    sketch = score_summary.MarginSketch(levels, budget=50)
    for chunk in np.array_split(values, 13):
        sketch.add(chunk)

    def scan(fn, combine):
        result = None
        for chunk in np.array_split(values, 7):
            part = fn(score_summary.order_keys(chunk))
            result = part if result is None else combine(result, part)
        return result

    quantiles, passes = sketch.quantiles(scan)
    assert passes >= 1
    np.testing.assert_array_equal(list(quantiles.values()), np.quantile(values, levels))


def test_partial_summaries_merge_exactly_in_any_order():
    rng = np.random.default_rng(1)
    parts = []
    everything = []
    for size in (1, 17, 5000, 333, 12_000):
        margin = rng.normal(0.1, 0.4, size) * 10.0 ** rng.integers(-3, 3)
        chosen = rng.normal(-50, 5, size)
        outputs = {"loss": np.logaddexp(0, -margin), "chosen_reward": margin / 2,
                   "rejected_reward": -margin / 2, "margin": margin}
        partial = score.PartialSummary(LEVELS)
        partial.add(outputs, chosen, chosen - 1, {"extra/metric": 2.0})
        parts.append(pickle.loads(pickle.dumps(partial)))  # as Dask ships them
        everything.append(margin)
    forward = score.PartialSummary(LEVELS)
    for part in parts:
        forward.merge(pickle.loads(pickle.dumps(part)))
    backward = score.PartialSummary(LEVELS)
    for part in reversed(parts):
        backward.merge(pickle.loads(pickle.dumps(part)))
    margins = np.concatenate(everything)

    def scan(fn, combine):  # the parts' distributions differ: an extra pass may be needed
        return fn(score_summary.order_keys(margins))

    a, b = forward.finish(scan=scan), backward.finish(scan=scan)
    assert a.loss == b.loss and a.metrics == b.metrics
    assert a.margin_quantiles == b.margin_quantiles
    assert a.metrics["extra/metric"] == 2.0  # unknown core metrics: count-weighted means
    assert list(a.margin_quantiles.values()) == np.quantile(margins, LEVELS).tolist()


def test_exact_sum_is_order_independent_and_correctly_rounded():
    rng = np.random.default_rng(2)
    values = rng.normal(0, 1, 2000) * 10.0 ** rng.integers(-300, 300, 2000)
    values = np.concatenate([values, -values[:1000], [5e-324, 1e308, 1e308, -1e308]])
    forward, backward = score_summary.ExactSum(), score_summary.ExactSum()
    for v in values:
        forward.add(v)
    for v in values[::-1]:
        backward.add(v)
    exact = sum(map(fractions.Fraction, values))
    assert forward.value() == backward.value() == float(exact)
    merged = score_summary.ExactSum()
    merged.merge(forward)
    merged.merge(pickle.loads(pickle.dumps(backward)))
    assert merged.value(3) == float(2 * exact / 3)  # rounded once
    special = score_summary.ExactSum()
    special.add(float("inf"))
    special.add(1.0)
    assert special.value() == float("inf")


# --------------------------------------------------------------------------------------------
# Outputs: atomic, never over the input, column clashes, JSON Lines texts
# --------------------------------------------------------------------------------------------

def _listing(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_failure_mid_run_leaves_no_output_and_keeps_the_old_one(tmp_path, monkeypatch,
                                                                tmpfile):
    if not tmpfile:
        monkeypatch.setattr(score_writers, "tmpfile_supported", lambda: False)
    data = make_pairs(5000, seed=14)
    data["rejected_logps"][4321] = np.inf  # found after several batches were written
    folder = tmp_path / "work"
    folder.mkdir()
    path = write(folder / "pairs.parquet", data)
    out = folder / "scored.parquet"
    before = _listing(folder)
    with pytest.raises(ScoreDataError, match="row 4321"):
        score_dataset(path, out=str(out), batch_rows=500)
    assert _listing(folder) == before
    out.write_bytes(b"previous results")
    with pytest.raises(ScoreDataError):
        score_dataset(path, out=str(out), batch_rows=500)
    assert out.read_bytes() == b"previous results"
    assert _listing(folder) == sorted(before + ["scored.parquet"])


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_interrupt_mid_run_leaves_no_output(tmp_path, monkeypatch, tmpfile):
    if not tmpfile:
        monkeypatch.setattr(score_writers, "tmpfile_supported", lambda: False)
    path = write(tmp_path / "pairs.parquet", make_pairs(5000, seed=15))
    calls = []
    real = dpo_fast.preference_loss

    @functools.wraps(real)
    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # the dummy validation call, then batches 1-4 written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    # The dummy validation call (options) and the per-batch calls (batch).
    monkeypatch.setattr(score_options, "preference_loss", interrupted)
    monkeypatch.setattr(score_batch, "preference_loss", interrupted)
    before = _listing(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(path, out=str(tmp_path / "out.csv"), batch_rows=500)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_successful_output_has_normal_permissions(tmp_path, pairs, monkeypatch, tmpfile):
    if not tmpfile:
        monkeypatch.setattr(score_writers, "tmpfile_supported", lambda: False)
    path = write(tmp_path / "pairs.parquet", pairs)
    out = tmp_path / "scored.parquet"
    score_dataset(path, out=str(out))
    if os.name == "posix":  # the permission bits a plain open() would have given
        umask = os.umask(0)
        os.umask(umask)
        assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _listing(tmp_path) == ["pairs.parquet", "scored.parquet"]


def test_never_overwrites_the_input(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs)
    blob = open(path, "rb").read()
    with pytest.raises(ScoreUsageError, match="is the input"):
        score_dataset(path, out=path)
    os.link(path, tmp_path / "hardlink.parquet")
    with pytest.raises(ScoreUsageError, match="is the input"):
        score_dataset(path, out=str(tmp_path / "hardlink.parquet"))
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / "a.parquet", pairs)
    with pytest.raises(ScoreUsageError, match="inside the input directory"):
        score_dataset(str(folder), out=str(folder / "scored.parquet"))
    with pytest.raises(ScoreUsageError, match="does not exist"):
        score_dataset(path, out=str(tmp_path / "missing" / "o.parquet"))
    assert open(path, "rb").read() == blob


def test_added_columns_clash(tmp_path, pairs):
    path = write(tmp_path / "pairs.parquet", pairs)
    first = tmp_path / "scored.parquet"
    score_dataset(path, out=str(first), beta=0.1)
    with pytest.raises(ScoreDataError, match="--replace-columns"):
        score_dataset(str(first), out=str(tmp_path / "again.parquet"))
    score_dataset(str(first), out=str(tmp_path / "again.parquet"), replace_columns=True,
                  beta=0.5)
    table = read(tmp_path / "again.parquet")
    assert table.column_names == [*pairs, *score.ADDED_COLUMNS]
    result, _ = reference(pairs, beta=0.5)
    np.testing.assert_array_equal(table.column("loss").to_numpy(), result.losses)


def test_json_lines_output_texts(tmp_path):
    table = pa.table({
        "text": ['plain', 'quote " and \\ backslash', "new\nline\ttab", "\x01control", None,
                 "ünïcode ✓"],
        "flag": [True, False, None, True, False, True],
        "weight": [1.5, float("nan"), None, 1e-7, 1e300, -0.0],
        "tags": [[1, 2], [], None, [3], [4], [5]],
        "when": pa.array([0, 1, 2, 3, 4, None], pa.timestamp("s")),
        "chosen_logps": [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],
        "rejected_logps": [-2.0, -3.0, -4.0, -5.0, -6.0, -7.0],
    })
    path = write(tmp_path / "mixed.parquet", table)
    out = tmp_path / "mixed.jsonl"
    score_dataset(path, out=str(out), reference_free=True)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == table.column("text").to_pylist()
    assert [r["flag"] for r in rows] == table.column("flag").to_pylist()
    assert [r["weight"] for r in rows] == [1.5, None, None, 1e-7, 1e300, -0.0]
    assert [r["tags"] for r in rows] == table.column("tags").to_pylist()
    assert rows[0]["when"].startswith("1970-01-01 00:00:00") and rows[5]["when"] is None
    assert [r["loss"] for r in rows] == dpo_fast.preference_loss(
        table.column("chosen_logps").to_numpy(), table.column("rejected_logps").to_numpy(),
        reduction="none").losses.tolist()


def test_csv_output_of_nested_columns_is_a_clear_error(tmp_path):
    table = pa.table({"tags": [[1], [2]], "chosen_logps": [-1.0, -2.0],
                      "rejected_logps": [-2.0, -3.0]})
    path = write(tmp_path / "nested.parquet", table)
    with pytest.raises(ScoreDataError, match="cannot write csv"):
        score_dataset(path, out=str(tmp_path / "o.csv"), reference_free=True)
    assert not (tmp_path / "o.csv").exists()


# --------------------------------------------------------------------------------------------
# preference_loss parameters: the explicit table of options
# --------------------------------------------------------------------------------------------

def test_the_options_table_covers_every_keyword_of_preference_loss():
    """Every parameter of preference_loss is an option of the table, a per-pair column or
    deliberately not an option: a new core keyword fails here until the table has it."""
    signature = inspect.signature(dpo_fast.preference_loss).parameters
    options = {o.parameter: o for o in score.loss_options()}
    assert set(options).isdisjoint(score_options.PER_PAIR_PARAMETERS)
    assert set(options).isdisjoint(score_options.NOT_OPTIONS)
    assert set(signature) == (set(options) | set(score_options.PER_PAIR_PARAMETERS)
                              | score_options.NOT_OPTIONS)
    for name, option in options.items():
        assert signature[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert option.default == signature[name].default, name
        assert option.help and "``" not in option.help and "Here:" not in option.help, name
    flags = [o.flag for o in options.values()]
    assert len(set(flags)) == len(flags)
    assert options["compute_grad"].flag == "--grad" and options["compute_grad"].kind == "bool"
    assert options["n_threads"].flag == "--threads" and options["n_threads"].kind == "int"
    assert options["beta"].kind == "float" and options["beta"].default == 0.1
    assert options["label_smoothing"].flag == "--label-smoothing"
    assert options["reduction"].choices == ("mean", "sum")
    assert set(options["loss_type"].choices) == set(dpo_fast.losses.LOSS_TYPES)
    assert set(options["f_divergence_type"].choices) == set(
        dpo_fast.losses.F_DIVERGENCE_TYPES)


def test_option_values_parse():
    options = {o.parameter: o for o in score.loss_options()}
    assert options["loss_weights"].parse("1,0.5") == [1.0, 0.5]
    assert options["loss_type"].parse("sigmoid") == "sigmoid"
    assert options["loss_type"].parse("sigmoid,ipo") == ["sigmoid", "ipo"]
    assert options["beta"].parse("0.25") == 0.25
    assert options["n_threads"].parse("2") == 2
    for option, text in (("beta", "abc"), ("n_threads", "0"), ("n_threads", "1.5"),
                         ("loss_weights", ",")):
        with pytest.raises(argparse.ArgumentTypeError):
            options[option].parse(text)


# --------------------------------------------------------------------------------------------
# The packaged example
# --------------------------------------------------------------------------------------------

def test_packaged_example_scores():
    with score.example_path() as path:
        summary = score_dataset(path)
        with open(path) as fh:
            records = [json.loads(line) for line in fh]
    assert summary.pairs == len(records) == 300
    data = {name: np.array([r[name] for r in records]) for name in LOGPS}
    assert_summary_matches(summary, data)
    assert 0.1 < summary.negative_margin_share < 0.5  # a realistic mix


def test_example_file_is_what_the_script_generates():
    script = ROOT / "scripts" / "make_example_data.py"
    if not script.exists():
        pytest.skip("needs the source tree (scripts/)")
    with score.example_path() as path:
        proc = subprocess.run([sys.executable, str(script), "--check", "--out", path],
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_importing_dpo_fast_imports_no_optional_dependency():
    code = ("import sys, dpo_fast, dpo_fast.score, dpo_fast.cli; "
            "print(sorted(m for m in ('pyarrow', 'dask', 'tqdm', 'pandas', 'distributed') "
            "if m in sys.modules))")
    env = dict(os.environ)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [parent, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
