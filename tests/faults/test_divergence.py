"""Divergence: a gradient that becomes NaN or infinite at a chosen step, injected by a third-party cell plugin."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import one_line, runs_of

from framework.core import checkpoint

POISON = '''
from dataclasses import dataclass

from framework.core.config import param
from framework.core.hookspecs import hookimpl
from framework.nn.cells import ElmanCell
from framework.nn.init import InitConfig

done = 0  # optimizer updates done so far in this run, from framework_metrics


@dataclass
class PoisonedConfig:
    """The counting tutorial's linear cell, whose gradient of Wh becomes NaN or inf at one step."""

    at: int = param(0, ge=0, doc="the step whose gradient is poisoned")
    value: str = param("nan", choices=("nan", "inf"), doc="what the gradient becomes")


class PoisonedCell(ElmanCell):
    def __init__(self, config, input_size, hidden_size, rng, dtype):
        super().__init__(input_size, hidden_size, "identity", False, InitConfig(), rng, dtype)
        self.at, self.value = config.at, float(config.value)

    def backward(self, cache, d_outputs, d_state):
        grads = super().backward(cache, d_outputs, d_state)
        if done == self.at:
            grads.params["Wh"][...] = self.value
        return grads


@hookimpl
def framework_register_cells(register):
    register("poisoned", PoisonedCell, PoisonedConfig)


@hookimpl
def framework_metrics(run, step, metrics):
    global done
    done = step + 1
'''

AT, EVERY = 7, 3  # poisoned step, checkpoint interval: the last good checkpoint is after step 6


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_poisoned_gradient_stops_the_run_at_that_step(cli, install_plugin, default_store, tmp_path, value):
    """NaN or inf injected into a gradient at step 7 -> exit 1, one line naming step 7, the run FAILED with the
    metrics of steps 0-6, and the last good checkpoint (step 6) intact."""
    env = install_plugin("poison", POISON)
    result = cli(
        "task=counting", "cell=poisoned", f"cell.at={AT}", f"cell.value='{value}'",
        f"train.checkpoint_every={EVERY}", "tracking.log_every=1", "hydra.run.dir=out", env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"framework: error: training diverged at step {AT}: loss="), line
    assert f"gradient norm={value}" in line

    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith(f"training diverged at step {AT}:")
    logged = {key: sorted(default_store.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
              for key in ("loss", "grad_norm")}  # fmt: skip
    for key, history in logged.items():
        assert [m.step for m in history] == list(range(AT)), key
        assert all(math.isfinite(m.value) for m in history), key

    last_good = (AT // EVERY) * EVERY
    artifact = default_store.download_artifacts(run.info.run_id, "checkpoints/last.npz", str(tmp_path / "artifact"))
    for path in (tmp_path / "out" / "checkpoints" / "last.npz", artifact):
        saved = checkpoint.load(path)
        assert saved.step == last_good
        assert all(np.isfinite(p).all() for p in saved.params.values())
        assert list(saved.history["loss"]) == [m.value for m in logged["loss"][:last_good]]
