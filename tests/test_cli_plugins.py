"""End-to-end tests of third-party plugins through the real CLI.

Each plugin is installed the way pip would (a module plus a dist-info with a
``[framework]`` entry point, see the ``install_plugin`` fixture) and found by
``python -m framework`` in a subprocess.
"""

from __future__ import annotations

import pytest
from conftest import assert_no_runs, one_line, runs_of
from mlflow import MlflowClient

BUILTIN_PLUGINS = {"framework.nn.cells", "framework.nn.losses", "framework.nn.optimizers"}

SIGN_DESCENT = '''
from dataclasses import dataclass

import numpy as np

from framework.core.config import param
from framework.core.hookspecs import hookimpl


@dataclass
class MyOptConfig:
    """Sign descent: every weight moves by lr against the sign of its gradient."""

    lr: float = param(0.125, gt=0, doc="the step of every weight")


class MyOpt:
    def __init__(self, config):
        self.lr = config.lr

    def step(self, params, grads, loss):
        for name, theta in params.items():
            theta -= self.lr * np.sign(grads[name])


@hookimpl
def framework_register_optimizers(register):
    register("myopt", MyOpt, MyOptConfig)
'''

BROKEN = """
raise ImportError("missing dependency foo")
"""

DUPLICATE_RPROP = '''
from dataclasses import dataclass

from framework.core.config import param
from framework.core.hookspecs import hookimpl


@dataclass
class FakeRpropConfig:
    """Not the real Rprop."""

    lr: float = param(0.1, gt=0, doc="step")


class FakeRprop:
    def __init__(self, config):
        self.config = config

    def step(self, params, grads, loss):
        pass


@hookimpl
def framework_register_optimizers(register):
    register("rprop", FakeRprop, FakeRpropConfig)
'''


def optimizer_plugin(optimizer: str) -> str:
    """A plugin registering a do-nothing optimizer named ``optimizer``."""
    return DUPLICATE_RPROP.replace('"rprop"', f'"{optimizer}"')


# -- helpers -----------------------------------------------------------------------


def component_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str, str]]:
    """The ``list`` table as {(kind, name): (plugin, version, description)}."""
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "DESCRIPTION"], stdout
    rows = {}
    for line in lines[1:]:
        kind, name, plugin, version, *description = line.split()
        rows[(kind, name)] = (plugin, version, " ".join(description))
    return rows


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


# -- a third-party optimizer ----------------------------------------------------------


def test_plugin_optimizer_is_listed_with_its_plugin_and_version(cli, install_plugin):
    env = install_plugin("signdescent", SIGN_DESCENT)
    result = cli("list", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    rows = component_rows(result.stdout)
    assert rows[("optim", "myopt")] == (
        "signdescent",
        "1.0",
        "Sign descent: every weight moves by lr against the sign of its gradient.",
    )
    assert rows[("optim", "rprop")][0] == "framework.nn.optimizers"  # the built-ins are still there

    # it is an option of its group like the built-in ones
    unknown = cli("optim=nope", env=env)
    assert unknown.returncode == 2
    listing = one_line(unknown.stderr).split("expected one of: ")[1].split(", ")
    assert "myopt" in listing and "rprop" in listing


def test_plugin_optimizer_is_selectable_and_really_runs(cli, install_plugin, default_store):
    env = install_plugin("signdescent", SIGN_DESCENT)
    lr, steps = 0.0625, 6  # not the default lr: the command line reaches the optimizer
    result = cli("optim=myopt", f"optim.lr={lr}", f"train.steps={steps}", "tracking.log_every=1", env=env)
    assert result.returncode == 0, result.stderr

    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.name"] == "myopt"
    assert run.data.params["optim.lr"] == str(lr)
    assert not any(key.startswith("optim.") for key in run.data.params if key not in ("optim.name", "optim.lr"))

    # sign descent from the tutorial's start (-1.5, 2): every weight moves by exactly lr a step
    w_x = history(default_store, run.info.run_id, "w_x")
    w_rec = history(default_store, run.info.run_id, "w_rec")
    assert len(w_x) == len(w_rec) == steps + 1  # every step, then the final evaluation
    assert w_x[:steps] == [-1.5 + lr * k for k in range(1, steps + 1)]  # downhill: the gradient is negative
    assert [abs(b - a) for a, b in zip([2.0, *w_rec], w_rec[:steps], strict=False)] == [lr] * steps


def test_plugin_optimizer_options_are_validated(cli, install_plugin, tmp_path):
    env = install_plugin("signdescent", SIGN_DESCENT)
    result = cli("optim=myopt", "optim.lr=-1", "train.steps=5", env=env)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == "framework: error: optim.lr=-1: expected a number > 0"
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


# -- broken and conflicting plugins --------------------------------------------------------


@pytest.mark.slow
def test_plugin_failing_to_import_is_reported_once_and_skipped(cli, install_plugin, default_store):
    env = install_plugin("brokenplugin", BROKEN)
    result = cli("train.steps=5", "tracking.log_every=1", env=env)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("framework: warning: ")
    assert "brokenplugin" in line
    assert "missing dependency foo" in line

    (run,) = runs_of(default_store, "counting")
    assert run.info.status == "FINISHED"
    assert len(history(default_store, run.info.run_id, "loss")) == 6


def test_plugin_failing_to_import_is_fatal_when_strict(cli, install_plugin, tmp_path):
    env = install_plugin("brokenplugin", BROKEN)
    result = cli("train.steps=5", env={**env, "FRAMEWORK_STRICT_PLUGINS": "1"})
    assert result.returncode != 0
    line = one_line(result.stderr)
    assert line.startswith("framework: error: ")
    assert "brokenplugin" in line
    assert "missing dependency foo" in line
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


def test_plugin_registering_a_builtin_name_is_refused(cli, install_plugin, tmp_path):
    env = install_plugin("fakerprop", DUPLICATE_RPROP)
    result = cli("train.steps=5", env=env)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("framework: error: ")
    assert "rprop" in line
    assert "framework.nn.optimizers" in line
    assert "fakerprop" in line
    assert_no_runs(tmp_path / "mlruns" / "mlflow.db")


# -- choosing which plugins load -----------------------------------------------------------


def test_framework_plugins_restricts_loading(cli, install_plugin):
    install_plugin("alpha", optimizer_plugin("alphaopt"))
    install_plugin("beta", optimizer_plugin("betaopt"))
    env = install_plugin("brokenplugin", BROKEN)

    everything = cli("list", env=env)
    assert everything.returncode == 0, everything.stderr
    rows = component_rows(everything.stdout)
    assert rows[("optim", "alphaopt")][:2] == ("alpha", "1.0")
    assert rows[("optim", "betaopt")][:2] == ("beta", "1.0")
    assert "brokenplugin" in everything.stderr

    only_alpha = cli("list", env={**env, "FRAMEWORK_PLUGINS": "alpha"})
    assert only_alpha.returncode == 0, only_alpha.stderr
    assert only_alpha.stderr.strip() == ""  # the other plugins are not even imported
    rows = component_rows(only_alpha.stdout)
    assert ("optim", "alphaopt") in rows
    assert ("optim", "betaopt") not in rows
    assert {plugin for plugin, _, _ in rows.values()} == {*BUILTIN_PLUGINS, "alpha"}
