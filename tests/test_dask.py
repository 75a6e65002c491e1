"""dpo_fast.dask: score and summarize Dask DataFrames, in-process and on a real cluster.

The cluster is a ``distributed.LocalCluster`` with two worker processes bound to 127.0.0.1 (no
dashboard), started once for the module, bounded in time and always closed. The summaries
must equal a single-machine ``dpo-fast score`` run: loss and metrics to 1e-12 relative, pair
counts and margin quantiles exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dask
import dask.dataframe as dd
import distributed
import numpy as np
import pytest
from test_score import LEVELS, LOGPS, assert_summary_matches, make_pairs, read, write

import dpo_fast
from dpo_fast import dask as dpo_dask
from dpo_fast import score
from dpo_fast.score import ScoreDataError, ScoreUsageError

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))
TIMEOUT = "60s"


def _directory(tmp_path, data, parts=4, name="dataset"):
    folder = tmp_path / name
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(data["id"])), parts)):
        write(folder / f"part-{i:02d}.parquet", {k: v[rows] for k, v in data.items()})
    return str(folder)


def assert_same_summary(a, b, rel=1e-12):
    """Two ScoreSummary objects: counts and quantiles identical, sums to ``rel``."""
    assert a.pairs == b.pairs and a.skipped == b.skipped
    assert a.skipped_by_reason == b.skipped_by_reason
    assert a.margin_quantiles == b.margin_quantiles
    assert a.negative_margin_share == b.negative_margin_share
    assert a.loss == pytest.approx(b.loss, rel=rel)
    assert set(a.metrics) == set(b.metrics)
    for name in a.metrics:
        assert a.metrics[name] == pytest.approx(b.metrics[name], rel=rel, abs=1e-15), name


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(12_000, seed=31)


@pytest.fixture
def dataset(tmp_path, pairs):
    return _directory(tmp_path, pairs)


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.comm.timeouts.connect": TIMEOUT,
                          "distributed.comm.timeouts.tcp": TIMEOUT}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, timeout=TIMEOUT, worker_dashboard_address=None)
        try:
            yield cluster
        finally:
            cluster.close(timeout=30)


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, timeout=TIMEOUT, set_as_default=False) as client, \
            client.as_current():
        yield client


# --------------------------------------------------------------------------------------------
# In-process (dask's default scheduler)
# --------------------------------------------------------------------------------------------

def test_summarize_equals_a_single_machine_run(dataset, pairs):
    ddf = dd.read_parquet(dataset).repartition(npartitions=7)
    summary = dpo_dask.summarize(ddf, beta=0.2)
    single = score.score_dataset(dataset, beta=0.2)
    assert_same_summary(summary, single)
    assert_summary_matches(summary, pairs, beta=0.2)
    assert summary.parameters["beta"] == 0.2


def test_score_adds_the_columns(dataset, pairs):
    ddf = dd.read_parquet(dataset)
    scored = dpo_dask.score(ddf, beta=0.3, compute_grad=True)
    assert list(scored.columns) == [*pairs, *score.ADDED_COLUMNS, *score.GRAD_COLUMNS]
    frame = scored.compute().sort_values("id")
    result = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), beta=0.3, reduction="none",
                                      compute_grad=True)
    np.testing.assert_array_equal(frame["loss"].to_numpy(), result.losses)
    np.testing.assert_array_equal(frame["chosen_reward"].to_numpy(), result.chosen_rewards)
    np.testing.assert_array_equal(frame["margin"].to_numpy(),
                                  result.chosen_rewards - result.rejected_rewards)
    np.testing.assert_array_equal(frame["grad_chosen"].to_numpy(), result.grad_chosen)


def test_columns_and_reference_free(tmp_path):
    data = make_pairs(3000, seed=32, reference=False)
    data = {"pc": data["chosen_logps"], "pr": data["rejected_logps"], "id": data["id"]}
    ddf = dd.from_dict(data, npartitions=3)
    with pytest.raises(ScoreDataError, match="--reference-free"):
        dpo_dask.summarize(ddf, columns="chosen=pc,rejected=pr")
    summary = dpo_dask.summarize(ddf, columns={"chosen": "pc", "rejected": "pr"},
                                 reference_free=True)
    expected = {"chosen_logps": data["pc"], "rejected_logps": data["pr"]}
    assert_summary_matches(summary, expected, reference_free=True)


def test_ground_truth_reward_margin_column(pairs):
    """rpo_* read each pair's ground-truth reward margin from a mapped column; the summary
    and the per-pair losses equal one call on all data."""
    margins = np.random.default_rng(33).normal(0.0, 2.0, pairs["id"].size)
    data = {**{name: pairs[name] for name in ("id", *LOGPS)}, "gt": margins}
    ddf = dd.from_dict(data, npartitions=3)
    params = dict(loss_type="rpo_bwd_kl", beta=0.2, gt_reward_scale=0.5)
    summary = dpo_dask.summarize(ddf, columns={"gt_reward_margin": "gt"}, **params)
    assert_summary_matches(summary, pairs, gt_reward_margins=margins, **params)
    frame = dpo_dask.score(ddf, columns="gt_reward_margin=gt", **params).compute()
    result = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), reduction="none",
                                      gt_reward_margins=margins, **params)
    np.testing.assert_array_equal(frame.sort_values("id")["loss"].to_numpy(), result.losses)


def test_bad_values_are_named_or_skipped(pairs):
    data = {k: v.copy() for k, v in pairs.items()}
    data["chosen_logps"][7000] = np.inf
    ddf = dd.from_dict(data, npartitions=4)  # 3000 rows a partition
    with pytest.raises(ScoreDataError) as info:
        dpo_dask.summarize(ddf)
    message = str(info.value)
    assert "partition 2, row 1000 (index 7000)" in message
    assert "column 'chosen_logps'" in message and "not finite" in message
    summary = dpo_dask.summarize(ddf, on_invalid="skip")
    assert summary.skipped == 1 and summary.skipped_by_reason == {"non-finite": 1}
    keep = np.arange(12_000) != 7000
    assert_summary_matches(summary, {k: v[keep] for k, v in pairs.items()})
    frame = dpo_dask.score(ddf, on_invalid="skip").compute()
    assert len(frame) == 11_999 and 7000 not in frame["id"].tolist()
    with pytest.raises(ScoreDataError, match="partition 2"):
        dpo_dask.score(ddf).compute()


def test_text_and_nullable_columns(pairs):
    import pandas as pd

    frame = pd.DataFrame({k: v for k, v in pairs.items()})
    frame["chosen_logps"] = frame["chosen_logps"].map(repr).astype("string")
    frame.loc[5, "chosen_logps"] = "n/a"
    frame["rejected_logps"] = frame["rejected_logps"].astype("Float64")
    frame.loc[9, "rejected_logps"] = pd.NA
    ddf = dd.from_pandas(frame, npartitions=3)
    summary = dpo_dask.summarize(ddf, on_invalid="skip")
    assert summary.skipped_by_reason == {"non-numeric": 1, "null": 1}
    keep = ~np.isin(np.arange(12_000), [5, 9])
    assert_summary_matches(summary, {k: v[keep] for k, v in pairs.items()})
    with pytest.raises(ScoreDataError, match="'n/a' is not a number"):
        dpo_dask.summarize(ddf)


@pytest.mark.parametrize("loss_type", ["aot", "aot_unpaired", "sft"])
def test_batch_coupled_loss_types_are_refused(pairs, loss_type):
    ddf = dd.from_dict(pairs, npartitions=2)
    for call in (dpo_dask.score, dpo_dask.summarize):
        with pytest.raises(ScoreUsageError, match="couples the pairs of a batch"):
            call(ddf, loss_type=loss_type)


def test_bad_parameters_before_anything_runs(pairs):
    ddf = dd.from_dict(pairs, npartitions=2)
    with pytest.raises(ScoreUsageError, match="beta"):
        dpo_dask.summarize(ddf, beta=0.0)
    with pytest.raises(ScoreUsageError, match="'mean' or 'sum'"):
        dpo_dask.summarize(ddf, reduction="none")
    with pytest.raises(TypeError, match="dask.dataframe.DataFrame"):
        dpo_dask.summarize(pairs)
    with pytest.raises(ScoreDataError, match="replace_columns"):
        dpo_dask.score(dpo_dask.score(ddf))


def test_drifting_partitions_need_an_extra_pass_and_stay_exact(pairs):
    data = {k: v.copy() for k, v in pairs.items()}
    data["chosen_logps"][6000:] += 30.0  # the last partitions score much higher
    ddf = dd.from_dict(data, npartitions=6)
    summary = dpo_dask.summarize(ddf, quantiles=LEVELS)
    assert summary.quantile_passes >= 1
    assert_summary_matches(summary, data)


# --------------------------------------------------------------------------------------------
# A real cluster: worker processes on 127.0.0.1
# --------------------------------------------------------------------------------------------

def test_cluster_summary_equals_the_in_process_one(client, dataset, pairs):
    ddf = dd.read_parquet(dataset).repartition(npartitions=6)
    on_cluster = dpo_dask.summarize(ddf, beta=0.15, label_smoothing=0.05)
    assert len(client.scheduler_info()["workers"]) == 2
    with dask.config.set(scheduler="sync"):
        in_process = dpo_dask.summarize(ddf, beta=0.15, label_smoothing=0.05)
    assert_same_summary(on_cluster, in_process)
    assert_same_summary(on_cluster, score.score_dataset(dataset, beta=0.15,
                                                        label_smoothing=0.05))
    frame = dpo_dask.score(ddf, beta=0.15).compute().sort_values("id")
    result = dpo_fast.preference_loss(*(pairs[c] for c in LOGPS), beta=0.15,
                                      reduction="none")
    np.testing.assert_array_equal(frame["loss"].to_numpy(), result.losses)


def test_cli_scheduler_option(cluster, dataset, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    out = tmp_path / "scored"
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_fast", "score", dataset, "--scheduler",
         cluster.scheduler_address, "--format", "json", "--beta", "0.25", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    single = score.score_dataset(dataset, beta=0.25)
    expected = single.to_dict()
    assert summary["pairs"] == expected["pairs"]
    assert summary["margin"] == expected["margin"]
    assert summary["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    for name, value in expected["metrics"].items():
        assert summary["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-15)
    table = read(next(p for p in sorted(out.iterdir()) if p.suffix == ".parquet"))
    assert table.column_names[-4:] == list(score.ADDED_COLUMNS)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    # An output that exists is refused (the dataset directory is not replaced piecemeal).
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_fast", "score", dataset, "--scheduler",
         cluster.scheduler_address, "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 2 and "exists" in proc.stderr
    # A malformed file read by dask's own readers: exit 1, one line naming the file.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"chosen_logps": -1.0, "rejected_logps": -2.0}\n{"chosen_logps": oops\n')
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_fast", "score", str(broken), "--scheduler",
         cluster.scheduler_address, "--reference-free"],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith(f"dpo-fast score: error: {broken}: ")
