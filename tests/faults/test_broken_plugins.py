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
@pytest.mark.slow
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


RAISES_REGISTERING = """
from framework.core.hookspecs import hookimpl


@hookimpl
def framework_register_tasks(register):
    raise RuntimeError("half-written plugin")
"""

WRONG_SIGNATURE = """
from framework.core.hookspecs import hookimpl


@hookimpl
def framework_register_cells(registry, extra):
    pass
"""

EXITS_ON_IMPORT = """
import sys

sys.exit("no config found")
"""


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (RAISES_REGISTERING, "plugin 'broken' failed in framework_register_tasks: RuntimeError: half-written plugin"),
        (WRONG_SIGNATURE, "plugin 'broken' does not fit the framework's hooks: "),
        (EXITS_ON_IMPORT, "plugin 'broken' (broken) failed to import: SystemExit: no config found"),
    ],
    ids=["raises registering", "wrong hook signature", "sys.exit on import"],
)
@pytest.mark.slow
def test_a_plugin_that_cannot_load_is_one_line(cli, install_plugin, default_store, source, problem):
    """A plugin raising in its registration hook, with a hook that does not fit its spec, or calling sys.exit on import
    -> one warning line naming it, and the run goes on without it; with strict loading, exit 2 with that line as an
    error and no run."""
    env = install_plugin("broken", source)
    result = cli("train.steps=3", env=env)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"framework: warning: {problem}"), line
    assert line.endswith("; skipped (set FRAMEWORK_STRICT_PLUGINS=1 to make this fatal)")
    assert [r.info.status for r in runs_of(default_store, "counting")] == ["FINISHED"]

    result = cli("train.steps=3", env={**env, "FRAMEWORK_STRICT_PLUGINS": "1"})
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"framework: error: {problem}")
    assert len(runs_of(default_store, "counting")) == 1  # no new run


EXITS_MID_RUN = """
import sys

from framework.core.hookspecs import hookimpl


@hookimpl
def framework_metrics(run, step, metrics):
    if step == 2:
        sys.exit(0)
"""


@pytest.mark.slow
def test_a_plugin_calling_sys_exit_mid_run_fails_the_run_in_one_line(cli, install_plugin, default_store):
    """A plugin's hook calling sys.exit(0) during a run -> not a quiet exit 0: exit 1, one line naming the plugin and
    its function, the run FAILED."""
    result = cli("train.steps=10", "hydra.run.dir=out", env=install_plugin("quitter", EXITS_MID_RUN))
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(
        "framework: error: plugin 'quitter' failed in framework_metrics: ExitCalledError: sys.exit(0) was called"
    ), line
    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "sys.exit(0) was called during the run"


RAISES_AT_THE_END = """
from framework.core.hookspecs import hookimpl


@hookimpl
def framework_run_ended(run, status, error):
    raise RuntimeError("cannot send the e-mail")
"""


@pytest.mark.slow
def test_an_observer_raising_at_the_end_leaves_the_recorded_status(cli, install_plugin, default_store):
    """A plugin raising in framework_run_ended -> the run is still recorded as it ended (FINISHED, with its model),
    and the command says, in one line, which plugin failed."""
    result = cli("train.steps=10", "hydra.run.dir=out", env=install_plugin("mailer", RAISES_AT_THE_END))
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(
        "framework: error: plugin 'mailer' failed in framework_run_ended: RuntimeError: cannot send the e-mail"
    )
    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FINISHED"
    assert default_store.search_logged_models([run.info.experiment_id])


BAD_RECIPE = '''
from dataclasses import dataclass

from framework.core.config import param
from framework.core.hookspecs import hookimpl
from framework.nn.optimizers import SGD


@dataclass
class SlowConfig:
    """Plain gradient descent."""

    lr: float = param(0.01, gt=0, doc="learning rate")
    momentum: float = param(0.0, ge=0, lt=1, doc="momentum")
    nesterov: bool = param(False, doc="Nesterov")
    weight_decay: float = param(0.0, ge=0, doc="L2")


@hookimpl
def framework_register_optimizers(register):
    register("slow", SGD, SlowConfig, recipes={"adder": {"optim.learning_rate": 0.1, "train.steps": 5}})
'''


@pytest.mark.slow
def test_a_recipe_naming_an_unknown_option_is_refused_when_the_plugin_loads(cli, install_plugin, default_store):
    """A plugin's recipe for a task naming an option that does not exist -> one line naming the plugin, the recipe and
    the option, when the plugin loads; the optimizer itself still works, with its defaults and the task's regime, and
    its run says no tuned recipe exists for it. Strict loading makes the line an error."""
    env = install_plugin("slowopt", BAD_RECIPE)
    result = cli("task=adder", "optim=slow", "train.steps=3", env=env)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("framework: warning:"))
    assert warning == (
        "framework: warning: plugin 'slowopt': recipe adder_slow (optim=slow on task adder): "
        "optim.learning_rate: no such option; accepted: optim.lr, optim.momentum, optim.nesterov, optim.weight_decay; "
        "skipped (set FRAMEWORK_STRICT_PLUGINS=1 to make this fatal)"
    )
    assert "no tuned recipe exists for optim=slow on adder" in result.stdout
    (run,) = runs_of(default_store, "adder")
    assert run.data.params["train.steps"] == "3"

    result = cli("task=adder", "optim=slow", env={**env, "FRAMEWORK_STRICT_PLUGINS": "1"})
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("framework: error: plugin 'slowopt': recipe adder_slow")
