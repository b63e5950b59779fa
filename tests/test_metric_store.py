"""What the recorder writes without MLflow's own calls (per-step metrics straight into an embedded store, tables)
must read back as those calls write it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import seed_store
from mlflow import MlflowClient
from mlflow.entities import Metric

from framework.tracking import tracker as tracking


def metrics_of(client: MlflowClient, run_id: str, keys: set[str]) -> tuple[list, dict]:
    """Every logged value (key, value, timestamp, step), sorted, and the run's latest values, NaN as a string."""

    def plain(value: float) -> float | str:
        return "nan" if math.isnan(value) else value

    history = sorted(
        ((m.key, plain(m.value), m.timestamp, m.step) for key in keys for m in client.get_metric_history(run_id, key)),
        key=repr,
    )
    return history, {key: plain(value) for key, value in client.get_run(run_id).data.metrics.items()}


def test_direct_writes_read_back_like_log_batch(store_template, tmp_path):
    database = seed_store(store_template, tmp_path / "mlruns" / "mlflow.db")
    # MLflow moved its schema: check that its metrics and latest_metrics tables are unchanged, then the constant
    assert tracking.schema_revision(database) == tracking.SQLITE_SCHEMA
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.create_experiment("e")
    by_mlflow, direct = (client.create_run(experiment).info.run_id for _ in range(2))

    rng = np.random.default_rng(0)
    entries = [("loss", float(v), 1_000 + i, i) for i, v in enumerate(rng.normal(size=300))]
    entries += [
        ("loss", 0.5, 2_000, 299),  # the same step again, later: the latest
        ("loss", 0.5, 2_000, 299),  # an exact duplicate: stored once
        ("loss", 9.0, 500, 5),  # an old step, logged late: history only
        ("accuracy", math.nan, 3_000, 7),
        ("accuracy", 0.25, 3_000, 6),  # an earlier step than the NaN: not the latest
        ("big", math.inf, 3_001, 0),
        ("small", -math.inf, 3_002, 0),
    ]
    client.log_batch(by_mlflow, metrics=[Metric(*entry) for entry in entries], synchronous=True)
    tracking.write_metrics(database, direct, entries[:150])  # two flushes: the latest values carry over
    tracking.write_metrics(database, direct, entries[150:])

    keys = {entry[0] for entry in entries}
    assert metrics_of(client, direct, keys) == metrics_of(client, by_mlflow, keys)
    history, latest = metrics_of(client, direct, keys)
    assert len([m for m in history if m[0] == "loss"]) == 302
    assert latest["loss"] == 0.5 and latest["accuracy"] == "nan"


def test_other_stores_have_no_known_revision(tmp_path):
    assert tracking.schema_revision(tmp_path / "missing.db") is None
    (tmp_path / "empty.db").write_bytes(b"")
    assert tracking.schema_revision(tmp_path / "empty.db") is None


def test_a_table_is_written_as_log_table_writes_it():
    """The same JSON as MLflow's log_table (pandas, orient 'split'): numbers (numpy's too), text, a missing value as
    null (floats at full precision, where log_table keeps 10 digits)."""
    import pandas as pd

    table = {"word": ["mans", "upp", "ö"], "count": list(np.arange(1, 4)), "share": [0.5, float("nan"), 0.125]}
    assert json.loads(tracking.table_json(table)) == json.loads(
        pd.DataFrame(table).to_json(orient="split", index=False)
    )
    with pytest.raises(ValueError, match=r"a table's columns differ in length: \{'a': 2, 'b': 1\}"):
        tracking.table_json({"a": [1, 2], "b": [3]})
