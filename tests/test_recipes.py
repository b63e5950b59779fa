"""Change one thing and it still learns: the pairing recipes, the verdict at the end of a run, the run's name.

The recipes' results on every seed are the atlas's (tests/test_atlas.py, slow); here: that a recipe applies exactly
when its task and component are chosen, that the command line wins over it, that a third-party component's recipe
works the same way, and what a run says when it did not learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import installed

import framework
from framework.core import plugins
from framework.core.config import param
from framework.core.hookspecs import hookimpl
from framework.core.verdict import advise, run_name
from framework.nn.optimizers import SGD


def test_a_pairing_recipe_applies_when_its_task_and_component_are_chosen(compose):
    """task=adder optim=adam takes the adder's Adam recipe (its learning rate and regime); the reference recipe is
    unchanged; the same optimizer on another task takes that task's recipe."""
    adam = compose("task=adder", "optim=adam")
    assert (adam.optim.lr, adam.train.batch_size, adam.train.steps, adam.train.eval_every) == (0.03, 32, 3000, 100)
    reference = compose("task=adder")
    assert (reference.optim.name, reference.optim.lr, reference.train.batch_size, reference.train.steps) == (
        "sgd",
        0.1,
        1,
        10000,
    )
    assert reference.cell.activation == "sigmoid"  # the tutorial's cell, kept by the optimizer pairing too
    assert adam.cell.activation == "sigmoid"
    counting = compose("task=counting", "optim=adam")
    assert (counting.optim.lr, counting.train.clip_value, counting.train.steps) == (0.03, 10.0, 1500)


def test_the_command_line_wins_over_a_recipe(compose):
    """A value given on the command line wins over the recipe's; the recipe's other settings stay."""
    config = compose("task=adder", "optim=adam", "optim.lr=0.1", "train.steps=50")
    assert (config.optim.lr, config.train.steps, config.train.batch_size) == (0.1, 50, 32)


SLOW_SGD = "slowsgd"


@dataclass
class SlowConfig:
    """Gradient descent, registered by a third-party plugin with a recipe for the adder."""

    lr: float = param(0.001, gt=0, doc="learning rate eta")
    momentum: float = param(0.0, ge=0, lt=1, doc="momentum mu")
    nesterov: bool = param(False, doc="Nesterov momentum")
    weight_decay: float = param(0.0, ge=0, doc="L2 penalty")


class SlowPlugin:
    @hookimpl
    def framework_register_optimizers(self, register):
        recipe = {"optim.lr": 0.05, "optim.momentum": 0.9, "train.batch_size": 32, "train.steps": 3000}
        register(SLOW_SGD, SGD, SlowConfig, recipes={"adder": {**recipe, "train.eval_every": 100}})


@pytest.fixture
def slow_plugin():
    with installed(SlowPlugin(), "slowplugin") as pm:
        yield pm


def test_a_third_party_optimizer_brings_its_recipe(slow_plugin, compose):
    """An optimizer a plugin registers with a recipe for the adder -> task=adder optim=<it> takes the recipe; on a task
    it has no recipe for, its defaults."""
    config = compose("task=adder", f"optim={SLOW_SGD}")
    assert (config.optim.lr, config.optim.momentum, config.train.batch_size) == (0.05, 0.9, 32)
    assert compose("task=echo", f"optim={SLOW_SGD}").optim.lr == 0.001  # no recipe there: its default


def test_a_third_party_optimizer_learns_with_its_recipe(slow_plugin, tmp_path, monkeypatch):
    """... and learns the adder with it; its run's name and verdict say so."""
    monkeypatch.chdir(tmp_path)
    result = framework.run("adder", optim=SLOW_SGD, tracking={"enabled": False})
    assert result.name == f"adder optim={SLOW_SGD}"
    assert result.metrics["accuracy"] == 1.0 and result.verdict.status == "reached"
    assert result.verdict.line().startswith("reached the tutorial's result (accuracy = 1: ")


def test_a_component_without_a_recipe_says_so_when_it_does_not_learn(slow_plugin, tmp_path, monkeypatch):
    """The same optimizer on the echo task, which it has no recipe for, runs with its defaults and the task's regime;
    the verdict says that no tuned recipe exists for the pairing, and names the reference recipe."""
    monkeypatch.chdir(tmp_path)
    result = framework.run("echo", f"optim={SLOW_SGD}", "task.epochs=1", tracking={"enabled": False})
    assert result.verdict.status == "not reached"
    assert result.verdict.advice == (
        f"no tuned recipe exists for optim={SLOW_SGD} on echo (it ran with the component's defaults and the task's "
        "reference regime); the reference recipe: python -m framework task=echo"
    )


def test_what_a_run_that_did_not_learn_says(tmp_path, monkeypatch):
    """A tuned pairing spoilt by another setting -> try the recipe without it; a pairing that cannot reach the result ->
    why, with the numbers, and the reference recipe."""
    monkeypatch.chdir(tmp_path)
    spoilt = framework.run("counting", "optim.lr=0.001", optim="adam", tracking={"enabled": False})
    assert spoilt.verdict.status == "not reached"
    tuned = "python -m framework task=counting optim=adam"
    assert spoilt.verdict.advice == f"try the tuned recipe without your other settings (optim.lr=0.001): {tuned}"
    bounded = framework.run("counting", cell="lstm", tracking={"enabled": False})
    assert bounded.verdict.status == "not reached" and bounded.metrics["reached"] == 0.0
    assert bounded.verdict.advice.startswith("cell=lstm cannot reach it on counting: its output is bounded by 1")
    assert bounded.verdict.advice.endswith("; the reference: python -m framework task=counting")


def test_the_advice_keeps_what_changes_how_a_step_is_computed_not_what_it_learns():
    """cell.kernel=numba (and threads, tracking) is no reason a run did not learn: the advice does not drop it."""
    registry = plugins.manager().registry
    task = registry.get("task", "charlm")
    chosen = {kind: name for kind, (name, _) in task.recipe.choices().items()}
    overrides = ["task=charlm", "cell.kernel=numba", "train.steps=2000", "threads=2"]
    assert advise(task, chosen, overrides, registry) == (
        "try the reference recipe without your other settings (train.steps=2000): python -m framework task=charlm"
    )


@pytest.mark.parametrize(
    ("task", "overrides", "name"),
    [
        ("adder", [], "adder"),
        ("adder", ["task=adder", "optim=rprop"], "adder optim=rprop"),
        ("charlm", ["task=charlm", "cell=lstm", "seed=3", "tracking.uri=sqlite:///x.db", "model.log=false"],
         "charlm cell=lstm seed=3"),
    ],
)  # fmt: skip
def test_a_run_is_named_after_what_changed(task, overrides, name):
    """A run's name: its task, and what the command line changed from the task's recipe (where it is recorded and
    what changes no number left out)."""
    assert run_name(task, overrides) == name
