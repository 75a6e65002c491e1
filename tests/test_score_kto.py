"""dpo-fast score on unpaired data (``--loss-type kto`` / ``apo_zero_unpaired``), in-process.

TRL's unpaired preference format: ``logps``, ``ref_logps``, a boolean ``label``, optionally
``kl_logps`` / ``ref_kl_logps``. Every input format against a plain-Python float64 reference,
the reference point estimated over the whole file (whatever the batch size) or given with
``kl``, hostile inputs, and the refused options. The command line is at the end; the Dask
path is in test_dask_kto.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from reference import sigmoid
from test_score import FORMATS, read, write

import dpo_fast
from dpo_fast import kto_loss
from dpo_fast.score import ScoreDataError, ScoreUsageError, score_dataset
from dpo_fast.score.unpaired_summary import exact_units

KTO = ("logps", "ref_logps", "label", "kl_logps", "ref_kl_logps")


def make_unpaired(n: int, seed: int = 0, kl: bool = True, share: float = 0.6) -> dict:
    """Synthetic unpaired rows: an id, a text column, log-probs and a boolean label."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(-45.0, 6.0, n)
    data = {"id": np.arange(n, dtype=np.int64),
            "prompt": np.array([f"prompt {i}, \"quoted\"" for i in range(n)], dtype=object),
            "logps": ref + rng.normal(0.3, 2.5, n), "ref_logps": ref,
            "label": rng.random(n) < share}
    if kl:
        kl_ref = rng.normal(-50.0, 6.0, n)
        data["kl_logps"] = kl_ref + rng.normal(0.4, 1.5, n)
        data["ref_kl_logps"] = kl_ref
    return data


def plain_reference(data, beta=0.1, z=None, wd=1.0, wu=1.0, loss_type="kto"):
    """Plain Python, one row at a time: (losses, rewards, z) as TRL 1.16 computes them."""
    if z is None:
        z = 0.0
        if loss_type == "kto" and "kl_logps" in data:
            diffs = [a - b for a, b in zip(data["kl_logps"].tolist(),
                                           data["ref_kl_logps"].tolist())]
            z = max(0.0, math.fsum(diffs) / len(diffs))
    losses, rewards = [], []
    for p, r, good in zip(data["logps"].tolist(), data["ref_logps"].tolist(),
                          data["label"].tolist()):
        x = p - r
        if loss_type == "kto":
            losses.append(wd * (1 - sigmoid(beta * (x - z))) if good
                          else wu * (1 - sigmoid(beta * (z - x))))
        else:
            losses.append(wd * (1 - sigmoid(beta * x)) if good else wu * sigmoid(beta * x))
        rewards.append(beta * x)
    return losses, rewards, z


def assert_matches(summary, data, reduction="mean", rel=1e-13, **params):
    """The summary against the plain reference (to ``rel``) and kto_loss on the whole arrays
    (the metrics bit for bit: both are correctly rounded sums)."""
    beta = params.get("beta", 0.1)
    losses, rewards, z = plain_reference(
        data, beta=beta, z=params.get("kl"), wd=params.get("desirable_weight", 1.0),
        wu=params.get("undesirable_weight", 1.0), loss_type=params.get("loss_type", "kto"))
    n = len(losses)
    assert summary.rows == n
    total = math.fsum(losses)
    assert summary.loss == pytest.approx(total / n if reduction == "mean" else total, rel=rel)
    labels = data["label"].tolist()
    good = [w for w, lab in zip(rewards, labels) if lab]
    bad = [w for w, lab in zip(rewards, labels) if not lab]
    m = summary.metrics
    assert m["kl"] == pytest.approx(z, rel=1e-15, abs=0)
    assert m["count/chosen"] == len(good) and m["count/rejected"] == len(bad)
    if good:
        assert m["rewards/chosen"] == pytest.approx(math.fsum(good) / len(good), rel=rel)
    if good and bad:
        assert m["rewards/margins"] == pytest.approx(
            math.fsum(good) / len(good) - math.fsum(bad) / len(bad), rel=1e-9)
    kw = {k: v for k, v in params.items() if k != "compute_grad"}
    if params.get("loss_type", "kto") == "kto" and "kl" not in params and "kl_logps" in data:
        kw.update(kl_logps=data["kl_logps"], ref_kl_logps=data["ref_kl_logps"])
    whole = kto_loss(data["logps"], data["ref_logps"], data["label"], **kw)
    for name, value in whole.metrics.items():
        assert m[name] == value, name  # the same correctly rounded sums
    return whole


@pytest.fixture(scope="module")
def rows():
    return make_unpaired(2500, seed=5)


# --------------------------------------------------------------------------------------------
# Every format, the reference point
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [*FORMATS, "csv.gz", "jsonl.gz"])
def test_every_input_format_matches_the_reference(tmp_path, rows, fmt):
    path = write(tmp_path / f"rows.{fmt}", rows, row_group_size=700)
    summary = score_dataset(path, loss_type="kto", beta=0.2, batch_rows=600)
    assert_matches(summary, rows, beta=0.2, loss_type="kto")
    assert summary.kl_source.endswith("over 2,500 rows")
    assert summary.columns == {"logps": "logps", "ref_logps": "ref_logps", "label": "label",
                               "kl_logps": "kl_logps", "ref_kl_logps": "ref_kl_logps"}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_out_has_reward_and_loss_per_row(tmp_path, rows, fmt):
    path = write(tmp_path / f"rows{FORMATS[fmt]}", rows)
    out = tmp_path / f"scored{FORMATS[fmt]}"
    score_dataset(path, out=str(out), loss_type="kto", beta=0.3, compute_grad=True,
                  desirable_weight=1.5, batch_rows=512)
    table = read(out)
    assert table.column_names == [*rows, "reward", "loss", "grad"]
    assert table.column("id").to_pylist() == rows["id"].tolist()
    whole = kto_loss(rows["logps"], rows["ref_logps"], rows["label"], beta=0.3,
                     desirable_weight=1.5, kl_logps=rows["kl_logps"],
                     ref_kl_logps=rows["ref_kl_logps"], reduction="none", compute_grad=True)
    # The reference point is the whole file's: every row bit-identical to kto_loss.
    assert table.column("loss").to_pylist() == whole.losses.tolist()
    assert table.column("reward").to_pylist() == whole.rewards.tolist()
    assert table.column("grad").to_pylist() == whole.grad.tolist()
    assert table.column("label").to_pylist() in (rows["label"].tolist(),
                                                 [str(v).lower() for v in rows["label"]])


def test_the_reference_point_is_the_whole_files_whatever_the_batches(tmp_path, rows):
    path = write(tmp_path / "rows.parquet", rows, row_group_size=100)
    runs = [score_dataset(path, loss_type="kto", batch_rows=b) for b in (7, 300, 1 << 18)]
    for other in runs[1:]:
        assert other.loss == runs[0].loss and other.metrics == runs[0].metrics
    diffs = (rows["kl_logps"] - rows["ref_kl_logps"]).tolist()
    assert runs[0].metrics["kl"] == max(0.0, math.fsum(diffs) / len(diffs)) > 0


def test_kl_option_and_kl_columns(tmp_path, rows):
    path = write(tmp_path / "rows.parquet", rows)
    estimated = score_dataset(path, loss_type="kto")
    given = score_dataset(path, loss_type="kto", kl=estimated.metrics["kl"])
    assert given.loss == estimated.loss and given.kl_source == "given (kl)"
    assert "kl_logps" not in given.columns  # not read: the option wins
    other = score_dataset(path, loss_type="kto", kl=3.0)
    assert_matches(other, rows, loss_type="kto", kl=3.0)
    # A negative mean is clamped at 0 (TRL's clamp(min=0)).
    low = dict(rows, kl_logps=rows["ref_kl_logps"] - 1.0)
    summary = score_dataset(write(tmp_path / "low.parquet", low), loss_type="kto")
    assert summary.metrics["kl"] == 0.0
    # No KL columns: z = 0 (TRL without calculate_KL).
    bare = make_unpaired(500, seed=6, kl=False)
    summary = score_dataset(write(tmp_path / "bare.csv", bare), loss_type="kto")
    assert summary.metrics["kl"] == 0.0 and summary.kl_source.startswith("0 (no kl_logps")
    assert_matches(summary, bare, loss_type="kto")


def test_one_kl_column_alone_is_an_error(tmp_path, rows):
    half = {k: v for k, v in rows.items() if k != "ref_kl_logps"}
    path = write(tmp_path / "half.parquet", half)
    with pytest.raises(ScoreDataError, match="column 'ref_kl_logps': column not found.*"
                                             "come together"):
        score_dataset(path, loss_type="kto")
    score_dataset(path, loss_type="kto", kl=0.5)  # not read with kl given


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_apo_zero_unpaired_and_weights(tmp_path, rows, reduction):
    path = write(tmp_path / "rows.jsonl", rows)
    params = dict(loss_type="apo_zero_unpaired", beta=0.05, desirable_weight=1.33,
                  undesirable_weight=0.5)
    summary = score_dataset(path, reduction=reduction, **params)
    assert summary.kl_source.startswith("not used") and summary.metrics["kl"] == 0.0
    assert_matches(summary, rows, reduction=reduction, **params)


def test_column_mapping(tmp_path, rows):
    renamed = {{"logps": "policy", "label": "desirable"}.get(k, k): v for k, v in rows.items()}
    path = write(tmp_path / "renamed.parquet", renamed)
    summary = score_dataset(path, loss_type="kto", columns="logps=policy,label=desirable")
    assert_matches(summary, rows, loss_type="kto")
    with pytest.raises(ScoreDataError, match="column 'label'.*--columns label=NAME"):
        score_dataset(path, loss_type="kto", columns="logps=policy")


def test_a_typo_in_a_column_name_is_named(tmp_path, rows):
    data = {("lable" if k == "label" else k): v for k, v in rows.items()}
    with pytest.raises(ScoreDataError, match="did you mean 'lable'"):
        score_dataset(write(tmp_path / "typo.parquet", data), loss_type="kto")


# --------------------------------------------------------------------------------------------
# Hostile inputs
# --------------------------------------------------------------------------------------------

def _with(data, column, row, value):
    values = data[column].astype(object).copy()
    values[row] = value
    return dict(data, **{column: values})


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("column, value, reason, text", [
    ("logps", None, "null", "null (missing value)"),
    ("ref_logps", float("nan"), "non-finite", "is not finite"),
    ("kl_logps", float("inf"), "non-finite", "is not finite"),
    ("label", None, "null", "null (missing value)"),
])
def test_bad_values_are_named_or_skipped(tmp_path, fmt, column, value, reason, text):
    data = make_unpaired(400, seed=8)
    bad = _with(data, column, 123, value)
    table = pa.table({k: pa.array(list(v), type=pa.bool_() if k == "label" else None)
                      if v.dtype == object else v for k, v in bad.items()})
    path = write(tmp_path / f"bad{FORMATS[fmt]}", table)
    with pytest.raises(ScoreDataError) as info:
        score_dataset(path, loss_type="kto")
    message = str(info.value)
    assert f"row 123: column {column!r}: " in message and text in message
    assert "\n" not in message
    summary = score_dataset(path, loss_type="kto", on_invalid="skip")
    assert summary.skipped == 1 and summary.skipped_by_reason == {reason: 1}
    keep = np.arange(400) != 123
    # The skipped row is out of the reference point's estimate too.
    assert_matches(summary, {k: v[keep] for k, v in data.items()}, loss_type="kto")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_label_that_is_not_a_boolean_is_a_bad_row(tmp_path, fmt):
    data = make_unpaired(300, seed=9, kl=False)
    labels = ["true" if v else "FALSE " for v in data["label"]]  # case and spaces: fine
    labels[42] = "yes"
    path = tmp_path / f"labels{FORMATS[fmt]}"
    if fmt == "jsonl":
        labels = [v == "true" for v in labels]
        labels[42] = "true"  # a JSON string is not a JSON boolean
        path.write_text("".join(json.dumps({"logps": p, "ref_logps": r, "label": lab}) + "\n"
                                for p, r, lab in zip(data["logps"].tolist(),
                                                     data["ref_logps"].tolist(), labels)))
    else:
        write(path, dict(data, label=np.array(labels, dtype=object)))
    with pytest.raises(ScoreDataError, match=r"row 42: column 'label': .* is not a boolean "
                                             r"label \(true: desirable"):
        score_dataset(path, loss_type="kto")
    summary = score_dataset(path, loss_type="kto", on_invalid="skip")
    assert summary.skipped_by_reason == {"non-boolean": 1}
    keep = np.arange(300) != 42
    assert_matches(summary, {k: v[keep] for k, v in data.items()}, loss_type="kto")
    # With --out too (the input is typed from all its values first): the row, not the file.
    out = tmp_path / f"out{FORMATS[fmt]}"
    with pytest.raises(ScoreDataError, match="row 42: column 'label'"):
        score_dataset(path, loss_type="kto", out=str(out))
    score_dataset(path, loss_type="kto", out=str(out), on_invalid="skip")
    assert read(out).column("loss").to_pylist() == kto_loss(
        data["logps"][keep], data["ref_logps"][keep], data["label"][keep],
        reduction="none").losses.tolist()


@pytest.mark.parametrize("values", [np.array([1, 0] * 50), np.array([1.0, 0.0] * 50)])
def test_numeric_labels_are_refused_not_guessed(tmp_path, values):
    data = make_unpaired(100, seed=10, kl=False)
    path = write(tmp_path / "numbers.parquet", dict(data, label=values))
    with pytest.raises(ScoreDataError, match=r"column 'label': has type (int64|double), "
                                             r"which is not boolean.*0/1 .* refused"):
        score_dataset(path, loss_type="kto", on_invalid="skip")  # a column, not rows
    csv_path = write(tmp_path / "numbers.csv", dict(data, label=values.astype(np.int64)))
    with pytest.raises(ScoreDataError, match="row 0: column 'label': '1' is not a boolean"):
        score_dataset(csv_path, loss_type="kto")


@pytest.mark.parametrize("label", [True, False])
def test_all_desirable_or_all_undesirable(tmp_path, label):
    data = make_unpaired(200, seed=11)
    data["label"] = np.full(200, label)
    summary = score_dataset(write(tmp_path / "one_side.parquet", data), loss_type="kto")
    assert_matches(summary, data, loss_type="kto")
    side, other = ("chosen", "rejected") if label else ("rejected", "chosen")
    assert summary.metrics[f"count/{other}"] == 0 and f"rewards/{other}" not in summary.metrics
    assert "rewards/margins" not in summary.metrics and f"rewards/{side}" in summary.metrics


def test_empty_file_and_all_rows_invalid(tmp_path):
    empty = {k: v[:0] for k, v in make_unpaired(5, seed=12).items()}
    path = write(tmp_path / "empty.parquet", empty)
    with pytest.raises(ScoreDataError, match="no valid rows to score"):
        score_dataset(path, loss_type="kto")
    header_only = tmp_path / "header.csv"
    header_only.write_text("logps,ref_logps,label\n")
    with pytest.raises(ScoreDataError, match="no valid rows to score"):
        score_dataset(str(header_only), loss_type="kto")
    bad = tmp_path / "bad.csv"
    bad.write_text("logps,ref_logps,label\n-1,-2,maybe\n")
    with pytest.raises(ScoreDataError, match=r"no valid rows to score \(1 rows skipped"):
        score_dataset(str(bad), loss_type="kto", on_invalid="skip")


def test_huge_values(tmp_path):
    data = {"logps": np.array([1e308, -1e308, -1e300, 0.0, -5e-324]),
            "ref_logps": np.array([-1e308, 1e308, 1e300, -1e-300, 0.0]),
            "label": np.array([True, False, True, False, True]),
            "kl_logps": np.array([1e308, 1e308, 0.0, 0.0, 0.0]),
            "ref_kl_logps": np.array([-1e308, 0.0, 0.0, 0.0, 0.0])}
    path = write(tmp_path / "huge.parquet", data)
    # Finite log-probs whose KL differences overflow: refused, not NaN losses.
    with pytest.raises(ScoreDataError, match=r"column 'kl_logps': the reference point .* is "
                                             r"inf .* overflow float64.*--kl"):
        score_dataset(path, loss_type="kto", beta=1e-3)
    out = tmp_path / "huge_out.parquet"
    summary = score_dataset(path, loss_type="kto", beta=1e-3, kl=2.0, out=str(out))
    whole = kto_loss(data["logps"], data["ref_logps"], data["label"], beta=1e-3, kl=2.0,
                     reduction="none")
    losses = read(out).column("loss").to_pylist()
    assert losses == whole.losses.tolist()
    assert all(0.0 <= v <= 1.0 for v in losses)  # rewards of +-inf: losses 0 or 1, no NaN
    assert summary.metrics["rewards/chosen_sum"] == whole.metrics["rewards/chosen_sum"]
    assert summary.loss == pytest.approx(math.fsum(losses) / 5, rel=1e-15)


def test_exact_sums_are_exact():
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, 5000) * 10.0 ** rng.integers(-300, 300, 5000)
    values = np.concatenate([values, [5e-324, -1e-310, 1e308, 1e308, -0.0]])
    from fractions import Fraction

    assert exact_units(values) == sum(Fraction(v) for v in values.tolist()) * 2**1074
    assert exact_units(np.empty(0)) == 0


# --------------------------------------------------------------------------------------------
# Options the loss type does not use
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, match", [
    (dict(loss_type="kto", label_smoothing=0.1), "label_smoothing is not used by loss_type"),
    (dict(loss_type="kto", n_threads=2), "n_threads is not used"),
    (dict(loss_type="apo_zero_unpaired", kl=0.2), "kl is not used by"),
    (dict(loss_type=["kto", "sigmoid"]), "cannot be combined"),
    (dict(loss_type="kto", desirable_weight=-1.0), "desirable_weight must be >= 0"),
    (dict(loss_type="kto", kl=math.nan), "kl"),
    (dict(loss_type="kto", beta=0.0), "beta"),
    (dict(loss_type="kto", reduction="none"), "'mean' or 'sum'"),
    (dict(loss_type="sigmoid", undesirable_weight=2.0), "option of loss_type 'kto'"),
    (dict(loss_type="kto", reference_free=True), "--reference-free is for paired"),
    (dict(loss_type="kto", columns="chosen=logps"), "a role of paired data"),
    (dict(loss_type="kto", kl=0.1, columns="kl_logps=kl_logps"), "kl is given"),
    (dict(loss_type="kto", quantiles=(0.5,)), "margin quantiles are for paired data"),
])
def test_unused_or_bad_options_are_refused(tmp_path, rows, params, match):
    path = write(tmp_path / "rows.parquet", rows)
    with pytest.raises(ScoreUsageError, match=match):
        score_dataset(path, **params)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dpo_fast", "score", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_equals_the_library(tmp_path, rows):
    path = write(tmp_path / "rows.csv", rows)
    proc = _cli(path, "--loss-type", "kto", "--beta", "0.2", "--undesirable-weight", "1.5",
                "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    want = score_dataset(path, loss_type="kto", beta=0.2, undesirable_weight=1.5).to_dict()
    assert got["loss"] == want["loss"] and got["metrics"] == want["metrics"]
    assert got["rows"] == 2500 and got["kl_source"] == want["kl_source"]
    table = _cli(path, "--loss-type", "kto")
    assert table.returncode == 0 and "rewards/margins" in table.stdout


@pytest.mark.parametrize("args, text", [
    (["--loss-type", "apo_zero_unpaired", "--kl", "0.1"], "--kl is not used by"),
    (["--loss-type", "kto", "--label-smoothing", "0.1"], "--label-smoothing is not used by "
                                                         "--loss-type 'kto'"),
    (["--loss-type", "kto", "--threads", "2"], "--threads is not used"),
    (["--desirable-weight", "2"], "--desirable-weight is an option of --loss-type 'kto'"),
    (["--loss-type", "kto", "--quantiles", "0.5"], "--quantiles: margin quantiles"),
    (["--loss-type", "kto", "--undesirable-weight", "-2"], "--undesirable-weight must be"),
])
def test_cli_refuses_unused_options_in_one_line(tmp_path, rows, args, text):
    path = write(tmp_path / "rows.parquet", rows)
    proc = _cli(path, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr


def test_cli_bad_label_is_exit_1_naming_row_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("logps,ref_logps,label\n-1,-2,true\n-1,-2,1\n")
    proc = _cli(bad, "--loss-type", "kto")
    assert proc.returncode == 1
    assert proc.stderr == (f"dpo-fast score: error: {bad}: row 1: column 'label': '1' is not "
                           "a boolean label (true: desirable, false: undesirable); write the "
                           "labels as booleans\n")


def test_help_lists_the_unpaired_options():
    proc = _cli("--help")
    for flag in ("--desirable-weight", "--undesirable-weight", "--kl", "kto"):
        assert flag in proc.stdout
    assert dpo_fast.kto_loss is kto_loss


def test_the_readme_example(tmp_path):
    path = tmp_path / "unpaired.csv"
    path.write_text("id,logps,ref_logps,label,kl_logps,ref_kl_logps\n"
                    "0,-40.2,-41.0,true,-52.0,-52.5\n1,-38.9,-38.1,false,-47.3,-47.6\n"
                    "2,-45.0,-46.3,true,-50.1,-50.2\n")
    out = tmp_path / "scored.parquet"
    summary = score_dataset(str(path), loss_type="kto", beta=0.1, out=str(out))
    assert f"{summary.loss:.6g}" == "0.47835" and f"{summary.metrics['kl']:.6g}" == "0.3"
    assert f"{summary.metrics['rewards/margins']:.6g}" == "0.185"
    table = read(out)
    assert round(table.column("reward")[0].as_py(), 12) == 0.08
    assert round(table.column("loss")[0].as_py(), 4) == 0.4875
