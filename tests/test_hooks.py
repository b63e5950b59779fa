"""The plugin contract: every hook documented, and each exercised by a plugin defined in its test."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import MissingConfigException

from framework.core import engine, hookspecs, plugins
from framework.core.config import param
from framework.core.data import ArrayDataset
from framework.core.errors import DivergenceError, PluginError
from framework.core.hookspecs import hookimpl
from framework.core.protocols import Batch, Evaluation, StepResult
from framework.core.registry import Recipe

HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("framework_")]
TESTS = Path(__file__).parent


def test_every_hook_is_documented_and_has_a_test():
    test_names = {
        name
        for path in TESTS.glob("test_*.py")
        for name in (line.split("(")[0].removeprefix("def ") for line in path.read_text().splitlines())
        if name.startswith("test_hook_")
    }
    for hook in HOOKS:
        assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
        assert f"test_hook_{hook}" in test_names, f"{hook} has no test_hook_{hook}"


@pytest.fixture
def pm():
    return plugins.manager()


@pytest.fixture
def add_plugin(pm):
    """Register plugin objects for one test and unregister them afterwards."""
    added = []

    def add(plugin, name):
        pm.add(plugin, name, "9.9")
        added.append(name)
        return plugin

    yield add
    for name in added:
        pm.remove(name)


# -- registration hooks ------------------------------------------------------


@dataclass
class HalfConfig:
    """Halve every weight."""

    factor: float = param(0.5, gt=0, lt=1, doc="multiplier")


class Halve:
    def __init__(self, config):
        self.factor = config.factor

    def step(self, params, grads, loss):
        for p in params.values():
            p *= self.factor


def test_hook_framework_register_optimizers(pm, add_plugin, compose):
    class Plugin:
        @hookimpl
        def framework_register_optimizers(self, register):
            register("halve", Halve, HalfConfig)

    add_plugin(Plugin(), "halving")
    component = pm.registry.get("optim", "halve")
    assert (component.plugin, component.version) == ("halving", "9.9")
    # selectable through Hydra without any YAML, and really used by the engine
    cfg = compose("optim=halve", "optim.factor=0.25", "train.steps=2", "tracking.enabled=false")
    run = engine.build(cfg, pm)
    engine.train(run, pm.hook)
    assert run.task.current_weights() == {"w_x": -1.5 / 16, "w_rec": 2.0 / 16}


def test_hook_framework_register_cells(pm, add_plugin, compose):
    from framework.nn.cells import ACTIVATIONS, ElmanCell
    from framework.nn.init import InitConfig

    @dataclass
    class ReluConfig:
        """A ReLU cell."""

    class Plugin:
        @hookimpl
        def framework_register_cells(self, register):
            register(
                "relu_rnn",
                lambda c, i, h, rng, dtype: ElmanCell(i, h, "relu", True, InitConfig(), rng, dtype),
                ReluConfig,
            )

    add_plugin(Plugin(), "relu")
    run = engine.build(compose("cell=relu_rnn", "tracking.enabled=false"), pm)
    assert run.task.model.cell.activation is ACTIVATIONS["relu"]
    assert set(run.task.model.params) == {"cell.Wx", "cell.Wh", "cell.b"}


def test_hook_framework_register_losses(pm, add_plugin, compose):
    @dataclass
    class AbsConfig:
        """Absolute error."""

    class AbsoluteError:
        def __init__(self, config):
            pass

        def __call__(self, outputs, targets, mask=None):
            return float(np.abs(outputs - targets).mean()), np.sign(outputs - targets) / outputs.size

        def random_targets(self, outputs, rng):
            return rng.standard_normal(outputs.shape)

    class Plugin:
        @hookimpl
        def framework_register_losses(self, register):
            register("l1", AbsoluteError, AbsConfig)

    add_plugin(Plugin(), "l1loss")
    run = engine.build(compose("loss=l1", "tracking.enabled=false"), pm)
    batch = next(run.dataset.batches(0, np.random.default_rng(0)))
    y = run.task.model.outputs(batch.inputs)[0]
    assert run.task.model.loss_and_grads(batch, None).loss == pytest.approx(np.abs(y - batch.targets).mean())


@dataclass
class OnesConfig:
    """All-ones sequences."""

    length: int = param(4, ge=1, doc="steps")


def test_hook_framework_register_datasets(pm, add_plugin, compose):
    def ones(config, rng, dtype):
        x = np.ones((3, config.length, 1), dtype=dtype)
        return ArrayDataset(x, x.sum(axis=1))

    class Plugin:
        @hookimpl
        def framework_register_datasets(self, register):
            register("ones", ones, OnesConfig)

    add_plugin(Plugin(), "ones")
    run = engine.build(compose("dataset=ones", "dataset.length=6", "tracking.enabled=false"), pm)
    assert run.dataset.inputs.shape == (3, 6, 1) and np.all(run.dataset.targets == 6)


class StateProbe:
    """A task whose model records the state the engine hands it at every step."""

    objective, maximize = "loss", False

    def __init__(self, config, parts):
        self.received = []
        probe = self

        class Model:
            def __init__(self):
                self.params = {"w": np.zeros(1)}

            def loss_and_grads(self, batch, state):
                probe.received.append(state)
                return StepResult(1.0, {"w": np.ones(1)}, state=len(probe.received), state_grads=np.zeros((1, 1, 1)))

        self.model = Model()

    def trace(self, loss):
        return {}

    def evaluate(self, step, history, final):
        return Evaluation(metrics={"loss": history["loss"][-1]})


class Windows:
    """Three windows of one stream, then a new stream: truncated BPTT's batches."""

    input_size = 1

    def __init__(self, config, rng, dtype):
        pass

    def batches(self, batch_size, rng):
        while True:
            for k in range(3):
                yield Batch(np.zeros((1, 2, 1)), np.zeros((1, 1)), new_sequence=k == 0)


def test_hook_framework_register_tasks(pm, add_plugin, compose):
    @dataclass
    class ProbeConfig:
        """Records states."""

    class Plugin:
        @hookimpl
        def framework_register_datasets(self, register):
            register("windows", Windows, OnesConfig)

        @hookimpl
        def framework_register_tasks(self, register):
            register(
                "probe", StateProbe, ProbeConfig, Recipe("windows", "rnn", "mse", ("sgd", {"lr": 0.5}), {"steps": 7})
            )

    add_plugin(Plugin(), "probe")
    cfg = compose("task=probe", "tracking.enabled=false")
    assert cfg.train.steps == 7 and cfg.optim.lr == 0.5 and cfg.dataset.name == "windows"
    assert compose("task=probe", "optim=rprop").optim.name == "rprop"  # the command line wins
    run = engine.build(cfg, pm)
    assert run.task.received == [None] * 3  # the build's probe (warm-up, memory, then fit), from the zero state
    run.task.received.clear()
    engine.train(run, pm.hook)
    # the final state of a window starts the next one unless the batch starts a new sequence
    assert run.task.received == [None, 1, 2, None, 4, 5, None]


def test_removing_a_plugin_removes_its_options(pm, compose):
    class Plugin:
        @hookimpl
        def framework_register_optimizers(self, register):
            register("halve", Halve, HalfConfig)

    pm.add(Plugin(), "temporary")
    assert compose("optim=halve").optim == {"name": "halve", "factor": 0.5}
    pm.remove("temporary")
    with pytest.raises(MissingConfigException) as refused:  # Hydra's own lookup: the option is gone
        compose("optim=halve")
    assert refused.value.missing_cfg_file == "optim/halve" and "halve" not in refused.value.options
    with pytest.raises(PluginError, match=r"no optim named 'halve'; registered: .*rprop, sgd"):
        pm.registry.get("optim", "halve")


def test_duplicate_names_are_rejected_naming_both_plugins(pm):
    class Plugin:
        @hookimpl
        def framework_register_optimizers(self, register):
            register("rprop", Halve, HalfConfig)

    with pytest.raises(PluginError) as error:
        pm.add(Plugin(), "copycat")
    assert str(error.value) == (
        "optim 'rprop' is registered twice: by plugin 'framework.nn.optimizers' and by 'copycat'"
    )
    assert not pm.has_plugin("copycat")  # rejected whole
    assert pm.registry.get("optim", "rprop").plugin == "framework.nn.optimizers"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("my-opt", Halve, HalfConfig), "optim 'my-opt' from plugin 'bad': the name must be an identifier"),
        (("myopt", Halve, dict), "optim 'myopt' from plugin 'bad': config_class must be a dataclass"),
        (("myopt", Halve, HalfConfig, Recipe("a", "b", "c", "d")), "a task needs a recipe, and only a task has one"),
    ],
)
def test_malformed_registrations_are_rejected(pm, args, message):
    class Plugin:
        @hookimpl
        def framework_register_optimizers(self, register):
            register(*args)

    with pytest.raises(PluginError, match=message.replace("(", r"\(")):
        pm.add(Plugin(), "bad")


# -- run-event hooks -----------------------------------------------------------


class Recorder:
    """An observer that writes down every run event."""

    def __init__(self, interrupt_at: int | None = None):
        self.events = []
        self.interrupt_at = interrupt_at

    @hookimpl
    def framework_run_started(self, run):
        self.events.append(("started", run.task, run.steps))

    @hookimpl
    def framework_metrics(self, run, step, metrics):
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        self.events.append(("metrics", step, sorted(metrics)))

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final):
        self.events.append(("evaluation", step, final, sorted(evaluation.metrics), sorted(evaluation.figures)))

    @hookimpl
    def framework_run_ended(self, run, status, error):
        self.events.append(("ended", status, error))


def run_recorded(pm, add_plugin, compose, *overrides, recorder=None):
    recorder = add_plugin(recorder or Recorder(), "recorder")
    cfg = compose("tracking.enabled=false", *overrides)
    return recorder, engine.execute(cfg, pm=pm)


def test_hook_framework_run_started(pm, add_plugin, compose):
    recorder, _ = run_recorded(pm, add_plugin, compose, "train.steps=3")
    assert recorder.events[0] == ("started", "counting", 3)


def test_hook_framework_metrics(pm, add_plugin, compose):
    recorder, _ = run_recorded(pm, add_plugin, compose, "train.steps=3")
    metrics = [e for e in recorder.events if e[0] == "metrics"]
    flow = ["grad_flow_ratio"]  # diagnostics.every=10: at step 0
    assert metrics == [
        ("metrics", k, sorted(["grad_norm", "loss", "w_rec", "w_x", *flow * (k == 0)])) for k in range(3)
    ]


class BlockRecorder(Recorder):
    """A recorder of the metrics in blocks, and of the other events between them; no per-update hook."""

    framework_metrics = None  # not a hook implementation here

    @hookimpl
    def framework_metrics_block(self, run, block):
        self.events.append(("block", [(step, sorted(metrics)) for step, metrics in block]))


def test_hook_framework_metrics_block(pm, add_plugin, compose):
    """Every update's metrics in exactly one block, in order, each block before the evaluation and checkpoint after
    it; the per-update hook is not called when no plugin implements it."""
    recorder = add_plugin(BlockRecorder(), "blocks")
    engine.execute(compose("tracking.enabled=false", "train.steps=7", "train.eval_every=3"), pm=pm)
    assert not pm.hook.framework_metrics.get_hookimpls()
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["started", "block", "evaluation", "block", "evaluation", "block", "evaluation", "ended"]
    blocks = [e[1] for e in recorder.events if e[0] == "block"]
    assert [[step for step, _ in block] for block in blocks] == [[0, 1, 2], [3, 4, 5], [6]]
    assert blocks[0][0][1] == sorted(["grad_flow_ratio", "grad_norm", "loss", "w_rec", "w_x"])


def test_metrics_blocks_last_at_most_a_tenth_of_a_second(pm, add_plugin, compose, monkeypatch):
    recorder = add_plugin(BlockRecorder(), "blocks")
    monkeypatch.setattr(engine, "BLOCK_SECONDS", 0.0)  # every update ends a block
    engine.execute(compose("tracking.enabled=false", "train.steps=3"), pm=pm)
    assert [[step for step, _ in e[1]] for e in recorder.events if e[0] == "block"] == [[0], [1], [2]]


def test_a_block_is_handed_on_when_training_stops_at_an_error(pm, add_plugin, compose):
    """Ctrl-C at update 3 (an observer of single updates raises): the blocks hold updates 0-3, before the end."""
    blocks = add_plugin(BlockRecorder(), "blocks")
    add_plugin(Recorder(interrupt_at=3), "interrupter")
    with pytest.raises(KeyboardInterrupt):
        engine.execute(compose("tracking.enabled=false"), pm=pm)
    steps = [step for e in blocks.events if e[0] == "block" for step, _ in e[1]]
    assert steps == [0, 1, 2, 3] and blocks.events[-1][0] == "ended"


def test_hook_framework_evaluation(pm, add_plugin, compose):
    recorder, outcome = run_recorded(pm, add_plugin, compose, "train.steps=4", "train.eval_every=2")
    evaluations = [e for e in recorder.events if e[0] == "evaluation"]
    names = ["loss", "test_output", "w_rec", "w_x"]
    figures = ["cost_surface", "gradient_flow", "gradient_over_time", "hidden_states"]
    assert evaluations == [
        ("evaluation", 2, False, names, []),
        ("evaluation", 4, True, sorted([*names, "reached"]), figures),  # and whether it reached the result
    ]
    assert math.isfinite(outcome.objective)


def test_an_evaluation_draws_its_figures_only_when_asked():
    from matplotlib.figure import Figure

    drawn = []

    def draw() -> Figure:
        drawn.append("drawn")
        return Figure()

    ready = Figure()  # a plugin may hand over a Figure itself
    figures = Evaluation(figures={"drawn": draw, "ready": ready}).drawn_figures()
    assert drawn == []  # nothing is drawn until it is asked for
    name, figure = next(figures)
    assert name == "drawn" and isinstance(figure, Figure) and drawn == ["drawn"]
    assert next(figures) == ("ready", ready)


def test_hook_framework_run_ended(pm, add_plugin, compose):
    recorder, _ = run_recorded(pm, add_plugin, compose, "train.steps=2")
    assert recorder.events[-1] == ("ended", "FINISHED", None)


def test_run_ended_reports_divergence_as_failed(pm, add_plugin, compose):
    recorder = add_plugin(Recorder(), "recorder")
    with pytest.raises(DivergenceError, match=r"^training diverged at step \d+: loss="):
        engine.execute(
            compose(
                "tracking.enabled=false", "optim=sgd", "optim.lr=1e-6", "optim.momentum=0", "train.clip_value=null"
            ),
            pm=pm,
        )
    status, error = recorder.events[-1][1:]
    assert status == "FAILED" and error.startswith("training diverged at step")


def test_run_ended_reports_interruption_as_killed(pm, add_plugin, compose):
    recorder = add_plugin(Recorder(interrupt_at=3), "recorder")
    with pytest.raises(KeyboardInterrupt):
        engine.execute(compose("tracking.enabled=false"), pm=pm)
    assert [e[1] for e in recorder.events if e[0] == "metrics"] == [0, 1, 2]
    assert recorder.events[-1] == ("ended", "KILLED", "interrupted (SIGINT)")


def test_an_evaluation_can_stop_training_early(pm, add_plugin, compose):
    class StopAtFour(StateProbe):
        def evaluate(self, step, history, final):
            return Evaluation(metrics={"loss": history["loss"][-1], "steps": len(history["loss"])}, stop=step >= 4)

    @dataclass
    class StopConfig:
        """Stops when asked."""

    class Plugin:
        @hookimpl
        def framework_register_datasets(self, register):
            register("windows", Windows, OnesConfig)

        @hookimpl
        def framework_register_tasks(self, register):
            register("stopper", StopAtFour, StopConfig, Recipe("windows", "rnn", "mse", "sgd", {"steps": 100}))

    add_plugin(Plugin(), "stopper")
    recorder, _ = run_recorded(pm, add_plugin, compose, "task=stopper", "train.eval_every=2")
    evaluations = [e[1:3] for e in recorder.events if e[0] == "evaluation"]
    assert evaluations == [(2, False), (4, True)]  # asked to stop at 4: the final evaluation reports step 4
    assert [e[1] for e in recorder.events if e[0] == "metrics"] == [0, 1, 2, 3]
    assert recorder.events[-1] == ("ended", "FINISHED", None)


class TrainedRecorder(Recorder):
    """A recorder that also writes down the final metrics and the weights it is handed once trained."""

    @hookimpl
    def framework_evaluation(self, run, step, evaluation, final):
        self.events.append(("evaluation", step, final, dict(evaluation.metrics)))

    @hookimpl
    def framework_trained(self, run, task, step):
        self.events.append(("trained", step, task.current_weights()))


def test_hook_framework_trained(pm, add_plugin, compose):
    recorder, _ = run_recorded(pm, add_plugin, compose, "train.steps=4", recorder=TrainedRecorder())
    evaluation, trained, ended = recorder.events[-3:]
    assert [e[0] for e in recorder.events].count("trained") == 1
    assert trained[:2] == ("trained", 4) and ended == ("ended", "FINISHED", None)  # after training, before the end
    assert trained[2] == {k: evaluation[3][k] for k in ("w_x", "w_rec")}  # the trained weights, as last evaluated

    failed = add_plugin(TrainedRecorder(), "failed")
    with pytest.raises(DivergenceError):
        engine.execute(
            compose(
                "tracking.enabled=false", "optim=sgd", "optim.lr=1e-6", "optim.momentum=0", "train.clip_value=null"
            ),
            pm=pm,
        )
    assert "trained" not in [e[0] for e in failed.events] and failed.events[-1][1] == "FAILED"
