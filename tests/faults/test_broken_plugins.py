"""Plugins that break during a run: a hook or a component raising. The run fails cleanly, the line names the plugin.

(A plugin that raises on import, or registers a name another plugin has, is tested in test_cli_plugins.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line, runs_of

FLAKY_OBSERVER = """
from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    if step == 3:
        import a_module_nobody_installed  # noqa: F401
"""

FLAKY_OPTIMIZER = '''
from dataclasses import dataclass

from framework.core.hookspecs import hookimpl


@dataclass
class FlakyConfig:
    """Gives up at the fourth update."""


class Flaky:
    def __init__(self, config):
        self.updates = 0

    def step(self, params, grads, loss):
        self.updates += 1
        if self.updates == 4:
            raise RuntimeError("lost its state")


@hookimpl
def framework_register_optimizers(register):
    register("flaky", Flaky, FlakyConfig)
'''


@pytest.mark.parametrize(
    ("source", "args", "where", "error", "steps"),
    [
        pytest.param(
            FLAKY_OBSERVER, (), "framework_metrics", "ModuleNotFoundError: No module named 'a_module_nobody_installed'",
            [0, 1, 2, 3],  # the tracker records a step before the observers installed after it see it
            id="hook",
        ),
        pytest.param(
            FLAKY_OPTIMIZER, ("optim=flaky",), "Flaky.step", "RuntimeError: lost its state", [0, 1, 2], id="optimizer"
        ),
    ],
)  # fmt: skip
def test_a_plugin_raising_mid_run_fails_the_run_in_one_line(
    cli, install_plugin, default_store, tmp_path, source, args, where, error, steps
):
    """A third-party plugin's hook or component raising at step 3 -> exit 1, one line naming the plugin, the
    function and the error, the traceback saved in the run's folder; the run FAILED with the metrics of the steps
    before."""
    env = install_plugin("flaky", source)
    result = cli("train.steps=10", "tracking.log_every=1", "hydra.run.dir=out", *args, env=env)
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == (
        f"framework: error: plugin 'flaky' failed in {where}: {error} (traceback: {Path('out', 'traceback.txt')})"
    )
    saved = (tmp_path / "out" / "traceback.txt").read_text()
    assert saved.startswith("Traceback (most recent call last):")
    assert saved.rstrip().endswith(error)

    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == error
    assert sorted(m.step for m in default_store.get_metric_history(run.info.run_id, "loss")) == steps
