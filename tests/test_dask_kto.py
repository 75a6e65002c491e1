"""dpo_fast.dask on unpaired data (loss_type kto / apo_zero_unpaired), and ``dpo-fast score
--scheduler`` for it.

Every sum of the unpaired summary is exact, so a Dask run must equal the single-machine
``dpo-fast score`` run bit for bit (loss and every metric), whatever the partitions.
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
import pandas as pd
import pytest
from test_score import write
from test_score_kto import assert_matches, make_unpaired

import dpo_fast
from dpo_fast import dask as dpo_dask
from dpo_fast import kto_loss
from dpo_fast.score import ScoreDataError, ScoreUsageError, score_dataset

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))


@pytest.fixture(scope="module")
def rows():
    return make_unpaired(6000, seed=41)


def _folder(tmp_path, data, parts=3):
    folder = tmp_path / "unpaired"
    folder.mkdir()
    for i, index in enumerate(np.array_split(np.arange(len(data["id"])), parts)):
        write(folder / f"part-{i}.parquet", {k: v[index] for k, v in data.items()})
    return str(folder)


def assert_identical(a, b):
    assert (a.rows, a.loss, a.metrics, a.kl_source) == (b.rows, b.loss, b.metrics, b.kl_source)
    assert (a.skipped, a.skipped_by_reason) == (b.skipped, b.skipped_by_reason)


@pytest.mark.parametrize("params", [dict(loss_type="kto", beta=0.2),
                                    dict(loss_type="kto", kl=1.5, desirable_weight=2.0),
                                    dict(loss_type="apo_zero_unpaired", reduction="sum")])
def test_summarize_is_bit_identical_to_a_single_machine_run(tmp_path, rows, params):
    folder = _folder(tmp_path, rows)
    local = score_dataset(folder, batch_rows=1000, **params)
    for parts in (1, 7):
        ddf = dd.read_parquet(folder).repartition(npartitions=parts)
        assert_identical(dpo_dask.summarize(ddf, **params), local)
    assert_matches(local, rows, reduction=params.get("reduction", "mean"),
                   **{k: v for k, v in params.items() if k != "reduction"})


def test_score_adds_reward_and_loss(rows):
    ddf = dd.from_dict(rows, npartitions=4)
    frame = dpo_dask.score(ddf, loss_type="kto", beta=0.3, compute_grad=True).compute()
    assert list(frame.columns) == [*rows, "reward", "loss", "grad"]
    whole = kto_loss(rows["logps"], rows["ref_logps"], rows["label"], beta=0.3,
                     kl_logps=rows["kl_logps"], ref_kl_logps=rows["ref_kl_logps"],
                     reduction="none", compute_grad=True)
    frame = frame.sort_values("id")
    np.testing.assert_array_equal(frame["loss"].to_numpy(), whole.losses)
    np.testing.assert_array_equal(frame["reward"].to_numpy(), whole.rewards)
    np.testing.assert_array_equal(frame["grad"].to_numpy(), whole.grad)


def test_text_nullable_and_object_labels(rows):
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].map({True: " True", False: "false"}).astype("string")
    frame.loc[10, "label"] = "yes"
    frame["logps"] = frame["logps"].astype("Float64")
    frame.loc[20, "logps"] = pd.NA
    ddf = dd.from_pandas(frame, npartitions=3)
    with pytest.raises(ScoreDataError, match=r"partition 0, row 10 \(index 10\): column "
                                             r"'label': 'yes' is not a boolean label"):
        dpo_dask.summarize(ddf, loss_type="kto")
    summary = dpo_dask.summarize(ddf, loss_type="kto", on_invalid="skip")
    assert summary.skipped_by_reason == {"non-boolean": 1, "null": 1}
    keep = ~np.isin(np.arange(6000), [10, 20])
    assert_matches(summary, {k: v[keep] for k, v in rows.items()}, loss_type="kto")
    # (Dask turns object columns into strings (its dataframe.convert-string setting): a
    # Python True and the text "true" are both the text "True" by then, and both accepted.)


def test_numeric_labels_and_unused_options_are_refused(rows):
    ddf = dd.from_dict(dict(rows, label=rows["label"].astype(np.int64)), npartitions=2)
    with pytest.raises(ScoreDataError, match="column 'label': has type int64, which is not "
                                             "boolean"):
        dpo_dask.summarize(ddf, loss_type="kto")
    ddf = dd.from_dict(rows, npartitions=2)
    with pytest.raises(ScoreUsageError, match="label_smoothing is not used"):
        dpo_dask.summarize(ddf, loss_type="kto", label_smoothing=0.1)
    with pytest.raises(ScoreUsageError, match="kl is not used"):
        dpo_dask.score(ddf, loss_type="apo_zero_unpaired", kl=0.1)
    with pytest.raises(ScoreUsageError, match="margin quantiles are for paired data"):
        dpo_dask.summarize(ddf, loss_type="kto", quantiles=[0.5])
    with pytest.raises(ScoreUsageError, match="option of loss_type 'kto'"):
        dpo_dask.summarize(ddf, desirable_weight=2.0)


def test_cli_scheduler_scores_unpaired_files(tmp_path, rows):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_PARENT, env.get("PYTHONPATH")]))
    csv_path = write(tmp_path / "rows.csv", rows)
    jsonl_path = write(tmp_path / "rows.jsonl", rows)
    with dask.config.set({"distributed.comm.timeouts.connect": "60s"}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address=None) as cluster:
        for path in (csv_path, jsonl_path):
            proc = subprocess.run(
                [sys.executable, "-m", "dpo_fast", "score", path, "--scheduler",
                 cluster.scheduler_address, "--loss-type", "kto", "--format", "json",
                 "--out", str(tmp_path / f"out-{os.path.basename(path)}.parquet")],
                capture_output=True, text=True, env=env, timeout=180)
            assert proc.returncode == 0, proc.stderr
            got = json.loads(proc.stdout)
            want = score_dataset(path, loss_type="kto").to_dict()
            assert (got["rows"], got["loss"], got["metrics"]) == (
                want["rows"], want["loss"], want["metrics"])
