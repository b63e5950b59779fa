"""The hand-worked tasks: the exact numbers of docs/tasks.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import runs_of

from framework.core import engine, plugins

SRN_TANH = {"h_1": 0.964028, "y_1": 1.928055, "h_2": 0.999226, "y_2": 1.998451, "h_3": 0.999988, "y_3": 1.999975}
SRN_IDENTITY = {"y_1": 4.0, "y_2": 12.0, "y_3": 32.0}


def final_metrics(compose, *overrides) -> tuple[engine.Run, dict[str, float]]:
    run = engine.build(compose("tracking.enabled=false", *overrides), plugins.manager())
    return run, engine.train(run, plugins.manager().hook).metrics


def test_srn_with_tanh_gives_the_tutorials_numbers(cli, store):
    result = cli("task=srn")
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(store, "srn")
    for name, value in SRN_TANH.items():
        assert run.data.metrics[name] == pytest.approx(value, abs=1e-6)
    table = json.loads(Path(store.download_artifacts(run.info.run_id, "tables/worked_example.json")).read_text())
    assert table["columns"] == ["t", "x_t", "h_t", "y_t"]
    assert [row[2] for row in table["data"]] == [[0.964028] * 2, [0.999226] * 2, [0.999988] * 2]


def test_srn_without_activation(compose):
    _, metrics = final_metrics(compose, "task=srn", "cell.activation=identity")
    assert {k: metrics[k] for k in SRN_IDENTITY} == SRN_IDENTITY


def test_recurrent_layer_error_terms_and_gradient_check(compose):
    run, metrics = final_metrics(compose, "task=recurrent_layer")
    assert metrics["max_relative_error"] < 1e-8  # identity: L is linear in W, central differences are exact
    evaluation = run.task.evaluate(1, {"loss": [0.0]}, final=True)
    deltas = np.array(evaluation.tables["error_terms"]["delta_t"])
    Wh = run.task.cell.params["Wh"]
    np.testing.assert_allclose(deltas[1], [1.0, 1.0])  # the all-ones error at the last step
    np.testing.assert_allclose(deltas[0], Wh.sum(axis=1))  # delta_1 = W^T delta_2 (batch-major: Wh = W^T)
    table = evaluation.tables["gradient_check"]
    assert table["parameter"].count("Wh") == 4 and table["parameter"].count("Wx") == 6
    assert np.all(np.abs(Wh) <= 1e-4)  # the tutorial's init U(-1e-4, 1e-4)


def test_srn_equals_pytorch_rnn_and_linear(compose):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch==2.13.0 (pip install torch==2.13.0)")
    _, metrics = final_metrics(compose, "task=srn")
    rnn = torch.nn.RNN(2, 2, batch_first=True, dtype=torch.float64)
    linear = torch.nn.Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        for p in [*rnn.parameters(), *linear.parameters()]:
            p.fill_(0.0 if p.dim() == 1 else 1.0)
        h, _ = rnn(torch.tensor([[[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]], dtype=torch.float64))
        y = linear(h)
    for t in range(3):
        assert metrics[f"h_{t + 1}"] == pytest.approx(float(h[0, t, 0]), rel=1e-12)
        assert metrics[f"y_{t + 1}"] == pytest.approx(float(y[0, t, 0]), rel=1e-12)
