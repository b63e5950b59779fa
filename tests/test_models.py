"""The trained network of a run as the MLflow model ``model``: logged by real runs, loaded and served elsewhere.

Every model is loaded in a fresh process (``mlflow.pyfunc.load_model("runs:/<id>/model")``), as a user
would, never in the process that trained it.
"""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import alive, clean_env, descendants, free_port, runs_of, seed_store, serving
from mlflow import MlflowClient

from framework.core import engine, plugins
from framework.core.errors import CheckpointError
from framework.tracking.model_files import export
from framework.tracking.models import load_params, log_model, requirements
from framework.tracking.store import connect

PREDICT = """
import json, sys
import mlflow, pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
signature = mlflow.models.get_model_info(sys.argv[1]).signature
answers = []
for request in json.loads(sys.argv[2]):
    try:
        frame = model.predict(pd.DataFrame(request))
        answers.append({"columns": frame.to_dict("list"), "dtypes": {k: str(v) for k, v in frame.dtypes.items()}})
    except Exception as error:
        answers.append({"error": str(error)})
print(json.dumps({"inputs": signature.inputs.to_dict(), "outputs": signature.outputs.to_dict(), "answers": answers}))
"""


def train(cli, client: MlflowClient, task: str, *overrides: str) -> str:
    """Run ``task`` through the CLI; the id of its run, which must have FINISHED."""
    result = cli(f"task={task}", *overrides)
    assert result.returncode == 0, result.stderr
    run = runs_of(client, task)[-1]
    assert run.info.status == "FINISHED"
    return run.info.run_id


def predict_elsewhere(uri: str, run_id: str, *requests: dict) -> dict:
    """Load ``runs:/<run_id>/model`` in a fresh process and answer ``requests`` (columns) with it.

    Returns the signature's ``inputs`` and ``outputs`` and, per request, ``columns`` and ``dtypes``
    of the answer or the ``error`` it raised.
    """
    result = subprocess.run(
        [sys.executable, "-c", PREDICT, f"runs:/{run_id}/model", json.dumps(requests)],
        env=clean_env(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def columns(schema: list[dict]) -> dict[str, str]:
    return {column["name"]: column["type"] for column in schema}


@pytest.fixture(scope="module")
def adder(tmp_path_factory, store_template) -> tuple[str, str]:
    """A default adder run, which learns to add every pair, in a store of its own: (tracking URI, run id)."""
    root = tmp_path_factory.mktemp("adder")
    uri = f"sqlite:///{seed_store(store_template, root / 'mlruns' / 'mlflow.db')}"
    result = subprocess.run(
        [sys.executable, "-m", "framework", "task=adder"],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run = runs_of(MlflowClient(uri), "adder")[-1]
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 1.0
    return uri, run.info.run_id


def test_the_adder_model_adds(adder):
    uri, run_id = adder
    rng = np.random.default_rng(0)
    a, b = [0, 127, 3, *rng.integers(0, 128, 20).tolist()], [0, 127, 4, *rng.integers(0, 128, 20).tolist()]
    out = predict_elsewhere(uri, run_id, {"a": a, "b": b}, {"a": [3, 128], "b": [4, 1]}, {"a": [1.5], "b": [2]})
    assert columns(out["inputs"]) == {"a": "long", "b": "long"} and columns(out["outputs"]) == {"sum": "long"}
    right, too_large, not_integer = out["answers"]
    assert right == {"columns": {"sum": [x + y for x, y in zip(a, b, strict=True)]}, "dtypes": {"sum": "int64"}}
    assert too_large == {
        "error": "a=128: expected integers in [0, 128): the network adds numbers of 7 bits (dataset.bits=8)"
    }
    assert "Incompatible input types for column a" in not_integer["error"]  # MLflow's schema stops it


@pytest.mark.slow  # a whole run, then the model loaded in a fresh process
def test_the_adder_model_is_served_over_http(adder, tmp_path):
    uri, run_id = adder
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    address = f"http://127.0.0.1:{port}"

    def post(body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{address}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    with serving(command, f"{address}/ping", tmp_path / "serve", clean_env(MLFLOW_TRACKING_URI=uri)) as server:
        workers = descendants(server.pid)
        assert workers, "the model is served by a uvicorn process"

        split = {"dataframe_split": {"columns": ["a", "b"], "data": [[3, 4], [100, 27], [127, 127]]}}
        assert post(split) == (200, {"predictions": [{"sum": 7}, {"sum": 127}, {"sum": 254}]})
        status, error = post({"dataframe_records": [{"a": 300, "b": 4}]})
        assert status == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE"
        assert error["message"].endswith(
            "Error: a=300: expected integers in [0, 128): the network adds numbers of 7 bits (dataset.bits=8)"
        )

        server.send_signal(signal.SIGTERM)  # stopped by its pid
        server.wait(timeout=30)
    deadline = time.monotonic() + 30  # uvicorn gets SIGTERM when its parent dies (prctl) and shuts down
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "the model server left processes behind"


@pytest.mark.slow  # a whole run, then the model loaded in a fresh process
def test_the_counting_model_counts(cli, default_store):
    run_id = train(cli, default_store, "counting")
    out = predict_elsewhere(default_store.tracking_uri, run_id, {"bits": ["0110", "1111111111", "011000010011", "1"]})
    assert columns(out["inputs"]) == {"bits": "string"} and columns(out["outputs"]) == {"count": "double"}
    (answer,) = out["answers"]
    assert answer["dtypes"] == {"count": "float64"}
    np.testing.assert_allclose(answer["columns"]["count"], [2, 10, 5, 1], atol=0.1)


@pytest.mark.slow  # a whole run, then the model loaded in a fresh process
def test_the_echo_model_echoes(cli, default_store, monkeypatch):
    """Trained with the compiled cell loops: the model runs them too, and requires numba (pinned)."""
    run_id = train(cli, default_store, "echo", "cell.kernel=numba")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", default_store.tracking_uri)
    pinned = Path(mlflow.pyfunc.get_model_dependencies(f"runs:/{run_id}/model")).read_text().split()
    assert f"numba=={importlib.metadata.version('numba')}" in pinned
    bits = ["0110100111", "1000000001", "111000111000101"]
    out = predict_elsewhere(default_store.tracking_uri, run_id, {"bits": bits}, {"bits": ["0120"]})
    assert columns(out["inputs"]) == {"bits": "string"} and columns(out["outputs"]) == {"echo": "string"}
    echoed, bad = out["answers"]
    assert [echo[3:] for echo in echoed["columns"]["echo"]] == [b[:-3] for b in bits]  # y_t = x_{t-3}
    assert [len(echo) for echo in echoed["columns"]["echo"]] == list(map(len, bits))
    assert bad == {"error": "bits='0120': expected a non-empty string of 0s and 1s"}


@pytest.mark.slow  # a whole run, then the model loaded in a fresh process
def test_the_seq2seq_model_translates(cli, default_store):
    run_id = train(cli, default_store, "seq2seq")
    words = ["man", "black", "king", "girl", "up", "high"]
    out = predict_elsewhere(default_store.tracking_uri, run_id, {"word": words}, {"word": ["toolong"]})
    assert columns(out["inputs"]) == {"word": "string"} and columns(out["outputs"]) == {"translation": "string"}
    translated, bad = out["answers"]
    assert translated["columns"] == {"translation": ["women", "white", "queen", "boy", "down", "low"]}
    assert bad == {"error": "word='toolong': expected a word of 1 to 5 letters a-z (n_step)"}


@pytest.mark.slow  # a whole run, then the model loaded in a fresh process
def test_the_dinosaur_model_writes_names(cli, default_store, tmp_path):
    run_id = train(cli, default_store, "charlm", "train.steps=300")
    table = json.loads(
        Path(default_store.download_artifacts(run_id, "tables/names_by_step.json", str(tmp_path))).read_text()
    )
    last_written = table["data"][-1][2].split(", ")  # the 7 names of the run's final evaluation (seed 0)
    requests = [
        {"n": [7], "temperature": [1.0], "seed": [0]},
        {"n": [4, 4, 4], "temperature": [0.5, 0.5, 0.5], "seed": [1, 1, 2]},
        {"n": [0], "temperature": [1.0], "seed": [0]},
    ]
    out = predict_elsewhere(default_store.tracking_uri, run_id, *requests)
    assert columns(out["inputs"]) == {"n": "long", "temperature": "double", "seed": "long"}
    assert out["outputs"] == [{"type": "array", "items": {"type": "string"}, "name": "names", "required": True}]
    same_as_run, seeded, bad = out["answers"]
    assert same_as_run["columns"] == {"names": [last_written]}
    first, again, other = seeded["columns"]["names"]
    assert len(first) == 4 and all(name.isalpha() and name.islower() for name in first)
    assert first == again and first != other  # the same seed writes the same names
    assert bad == {"error": "n=0: expected an integer from 1 to 1000"}


def test_registering_the_model(cli, default_store):
    run_id = train(cli, default_store, "counting", "train.steps=5", "model.register=true", "model.name=counter")
    (version,) = default_store.search_model_versions("name='counter'")
    assert (int(version.version), version.run_id, version.status) == (1, run_id, "READY")
    (model,) = default_store.search_logged_models([default_store.get_run(run_id).info.experiment_id])
    assert version.source == model.artifact_location
    assert default_store.get_model_version_download_uri("counter", "1") == model.artifact_location


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [("task=counting", "train.steps=5", "model.log=false"), ("task=srn",)])
def test_runs_that_log_no_model(cli, default_store, overrides):
    result = cli(*overrides)
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, overrides[0].removeprefix("task="))
    assert run.info.status == "FINISHED" and not run.outputs.model_outputs
    assert default_store.search_logged_models([run.info.experiment_id]) == []


def test_logging_to_a_run_leaves_mlflow_as_it_was(compose, default_store, monkeypatch, tmp_path):
    """log_model works through the client alone: no active run, the same tracking URI, the run still RUNNING."""
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    before = mlflow.get_tracking_uri()
    run = engine.build(compose("task=adder", "tracking.enabled=false", "model.register=true"), plugins.manager())
    _, experiment = connect(default_store.tracking_uri, "adder")  # its artifacts beside the store, as a run's
    run_id = default_store.create_run(experiment).info.run_id

    model_id = log_model(
        default_store, run_id, export(run.task, run.info.config, run.info.data_files, tmp_path / "files"), "adder"
    )

    assert mlflow.active_run() is None and mlflow.get_tracking_uri() == before
    assert not elsewhere.exists()  # the global tracking URI was never used
    tracked = default_store.get_run(run_id)
    assert tracked.info.status == "RUNNING"
    assert [output.model_id for output in tracked.outputs.model_outputs] == [model_id]
    model = default_store.get_logged_model(model_id)
    assert (model.name, model.source_run_id, model.experiment_id, model.status) == (
        "model",
        run_id,
        experiment,
        "READY",
    )
    (version,) = default_store.search_model_versions("name='adder'")  # model.name null: the task's name
    assert (version.run_id, version.source) == (run_id, model.artifact_location)


def test_a_model_requires_numba_only_if_its_cell_runs_compiled():
    pinned = requirements({"cell": {"name": "rnn", "kernel": "numpy"}})
    assert [r.split("==")[0] for r in pinned] == ["rnn-tutorial-framework", "mlflow", "numpy"]
    assert requirements({"cell": {"name": "rnn", "kernel": "numba"}})[3:] == [
        f"numba=={importlib.metadata.version('numba')}"
    ]
    assert requirements({"cell": {"name": "lstm"}}) == pinned


def test_parameters_that_do_not_fit_are_refused_in_one_line(tmp_path):
    params = {"cell.Wx": np.zeros((2, 3)), "readout.W": np.zeros(3)}
    np.savez(tmp_path / "params.npz", **{"cell.Wx": np.ones((2, 3)), "readout.W": np.ones(4)})
    with pytest.raises(
        CheckpointError, match=r"^parameter 'readout.W' has shape \(4,\) in params.npz, \(3,\) in the network$"
    ):
        load_params(params, tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", **{"cell.Wx": np.ones((2, 3))})
    with pytest.raises(CheckpointError, match=r"^parameter 'readout.W' of the network is missing from params.npz$"):
        load_params(params, tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", **{"cell.Wx": np.ones((2, 3)), "readout.W": np.ones(3), "cell.b": np.ones(3)})
    with pytest.raises(CheckpointError, match=r"^parameter 'cell.b' of params.npz is not in the network$"):
        load_params(params, tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", **{"cell.Wx": np.ones((2, 3)), "readout.W": np.full(3, 2.0)})
    wx = params["cell.Wx"]
    load_params(params, tmp_path / "params.npz")
    assert params["cell.Wx"] is wx and wx.sum() == 6 and params["readout.W"].tolist() == [2, 2, 2]  # in place
