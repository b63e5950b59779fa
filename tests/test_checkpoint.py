"""Checkpoints and resume: the file format, refusals in one line, and bit-for-bit continuation."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import clean_env, one_line, runs_of

from framework.core import checkpoint, engine, plugins
from framework.core.errors import CheckpointError
from framework.core.hookspecs import hookimpl
from framework.tracking.recorder import ABANDONED
from framework.tracking.resume import CHECKPOINT

# -- the file --------------------------------------------------------------------


def sample(state) -> checkpoint.Checkpoint:
    rng = np.random.default_rng(0)
    return checkpoint.Checkpoint(
        task="adder",
        step=7,
        params={"cell.W": rng.normal(size=(3, 4)), "readout.b": rng.normal(size=2)},
        optimizer={"t": 7, "prev_loss": None, "m": {"cell.W": rng.normal(size=(3, 4))}, "empty": {}},
        state=state,
        history={"loss": np.arange(7.0)},
        streams=[("init", np.random.default_rng(1).bit_generator.state)],
        task_state={"accuracies": np.array([0.5, 0.75])},
        verdict={"step": 5, "seconds": 0.25, "trained": 0.5},
    )


@pytest.mark.parametrize("state", [None, np.ones((2, 4)), (np.ones((2, 4)), np.zeros((2, 4)))])
def test_save_then_load_gives_back_everything(tmp_path, state):
    saved = sample(state)
    path = checkpoint.save(tmp_path / "checkpoints" / "last.npz", saved)
    assert [p.name for p in path.parent.iterdir()] == ["last.npz"]  # written, then renamed: no .tmp left
    loaded = checkpoint.load(path)
    assert (loaded.task, loaded.step, loaded.streams) == (saved.task, saved.step, saved.streams)
    for name, value in saved.params.items():
        assert np.array_equal(loaded.params[name], value)
    assert loaded.optimizer["t"] == 7 and loaded.optimizer["prev_loss"] is None and loaded.optimizer["empty"] == {}
    assert np.array_equal(loaded.optimizer["m"]["cell.W"], saved.optimizer["m"]["cell.W"])
    if state is None:
        assert loaded.state is None
    elif isinstance(state, tuple):
        assert isinstance(loaded.state, tuple) and all(map(np.array_equal, loaded.state, state))
    else:
        assert np.array_equal(loaded.state, state)
    assert np.array_equal(loaded.task_state["accuracies"], [0.5, 0.75])
    assert loaded.verdict == saved.verdict


@pytest.mark.parametrize(
    "verdict",
    [{"step": -1, "seconds": 0.1, "trained": 1.0}, {"step": 3, "seconds": "0.1", "trained": 1.0}, {"step": 3}, [3]],
)
def test_a_checkpoint_with_a_forged_verdict_state_is_refused_in_one_line(tmp_path, verdict):
    path = checkpoint.save(tmp_path / "last.npz", dataclasses.replace(sample(None), verdict=verdict))
    with pytest.raises(CheckpointError, match=r"its verdict state .* is not one this framework writes"):
        checkpoint.load(path)


def test_missing_truncated_and_foreign_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nothing.npz")
    path = checkpoint.save(tmp_path / "last.npz", sample(None))
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged") as error:
        checkpoint.load(tmp_path / "cut.npz")
    assert "\n" not in str(error.value)
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"a": 1}], dtype=object))  # an object array needs pickle
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        checkpoint.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "other.npz", meta=np.array('{"format": "something-else"}'))
    with pytest.raises(CheckpointError, match="not a checkpoint of this framework"):
        checkpoint.load(tmp_path / "other.npz")


def test_a_checkpoint_of_another_task_or_shape_does_not_fit(tmp_path):
    saved = checkpoint.load(checkpoint.save(tmp_path / "last.npz", sample(None)))
    params = {name: np.zeros_like(value) for name, value in saved.params.items()}
    checkpoint.check_fits(saved, "adder", params, "here")
    with pytest.raises(CheckpointError, match="is of task 'adder', not 'echo'"):
        checkpoint.check_fits(saved, "echo", params, "here")
    shape = r"'cell.W' has shape \(3, 4\) in the checkpoint here, \(3, 5\)"
    with pytest.raises(CheckpointError, match=shape):
        checkpoint.check_fits(saved, "adder", {**params, "cell.W": np.zeros((3, 5))}, "here")
    with pytest.raises(CheckpointError, match=r"'cell\.U' of the network is missing from the checkpoint"):
        checkpoint.check_fits(saved, "adder", {**params, "cell.U": np.zeros(1)}, "here")


def test_an_optimizer_with_state_of_another_kind_cannot_be_checkpointed():
    class Odd:
        def __init__(self) -> None:
            self.config, self.memory = None, ["a", "list"]

    with pytest.raises(CheckpointError, match="attribute 'memory' is a list"):
        checkpoint.optimizer_state(Odd())


# -- resume in the engine: every optimizer, cells with carried state, tasks with their own state ----------


class StopAt:
    """Ctrl-C at the step boundary after ``step`` updates, as StepBoundaryInterrupt raises it."""

    def __init__(self, run: engine.Run, step: int) -> None:
        self.run, self.step = run, step

    def check(self) -> None:
        if self.run.step == self.step:
            raise engine.Interrupted


CASES = {
    "counting, rprop plain": (["task=counting", "train.steps=60"], 25),
    "counting, irprop+": (["task=counting", "optim.variant=irprop+", "train.steps=60"], 31),
    "adder, sgd with momentum": (["task=adder", "optim.momentum=0.9", "train.steps=300"], 120),
    "adder, adam": (["task=adder", "optim=adam", "train.steps=200"], 99),
    "echo, lstm, carried state": (["task=echo", "cell=lstm", "dataset.total_length=3000"], 130),
    "echo, stopping early": (["task=echo"], 1400),  # learnt by epoch 3 or so, stops 2 epochs (666 steps) on
    "echo, cut after its result": (["task=echo"], 2331),  # reached at 1998: the verdict's step comes from before
    "charlm, gru, rmsprop": (["task=charlm", "cell=gru", "optim=rmsprop", "train.steps=150"], 61),
    "seq2seq": (["task=seq2seq", "train.steps=60"], 17),
}


@pytest.mark.parametrize("case", CASES)
def test_resumed_training_ends_bit_for_bit_like_uninterrupted(compose, tmp_path, case):
    overrides, stop = CASES[case]
    cfg = compose(*overrides, "tracking.enabled=false")
    pm = plugins.manager()

    whole = engine.build(cfg, pm, output_dir=tmp_path / "whole")
    final = engine.train(whole, pm.hook)
    assert stop < whole.step
    if "early" in case:
        assert whole.step < whole.settings.train.steps, "the task did not stop early"

    cut = engine.build(cfg, pm, output_dir=tmp_path / "cut")
    with pytest.raises(engine.Interrupted):
        engine.train(cut, pm.hook, StopAt(cut, stop))
    engine.save_checkpoint(cut, pm.hook)
    resumed = engine.build(cfg, pm, output_dir=tmp_path / "resumed")
    engine.restore(resumed, checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.npz"), "cut")
    assert resumed.step == stop
    resumed_final = engine.train(resumed, pm.hook)

    assert resumed.step == whole.step
    for name, value in whole.task.model.params.items():
        assert np.array_equal(resumed.task.model.params[name], value), name
    assert resumed.history.values == whole.history.values
    assert resumed_final.metrics == final.metrics


def test_hook_framework_checkpoint(compose, tmp_path):
    pm = plugins.manager()

    class Watcher:
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []

        @hookimpl
        def framework_checkpoint(self, run, step, path):
            self.seen.append((step, checkpoint.load(path).step))

    def announced(stop_at: int | None) -> list[tuple[int, int]]:
        watcher = Watcher()
        pm.register(watcher, name="watcher")
        try:
            run = engine.build(compose("train.steps=25", "train.checkpoint_every=10", "tracking.enabled=false"), pm,
                               output_dir=tmp_path)  # fmt: skip
            if stop_at is None:
                engine.train(run, pm.hook)
            else:
                with pytest.raises(engine.Interrupted):
                    engine.train(run, pm.hook, StopAt(run, stop_at))
                engine.save_checkpoint(run, pm.hook)  # as after Ctrl-C (engine.train_and_report)
        finally:
            pm.unregister(name="watcher")
        return watcher.seen

    assert announced(None) == [(10, 10), (20, 20), (25, 25)]  # every 10 steps, and at the end
    assert announced(17) == [(10, 10), (17, 17)]  # and when stopped
    assert announced(20) == [(10, 10), (20, 20)]  # stopped at a checkpoint: not written or announced twice


# -- resume through the CLI, with a real interruption ------------------------------------------------------


def start(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SIGNAL_AT = """
import os
import signal

from framework.core.hookspecs import hookimpl

SIGNAL, AT = os.environ.get("SIGNAL_AT", "none:never").split(":")  # e.g. SIGINT:1499 or SIGINT:final


def send():
    os.kill(os.getpid(), getattr(signal, SIGNAL))


@hookimpl
def framework_metrics(run, step, metrics):
    if AT == str(step):
        send()


@hookimpl
def framework_evaluation(run, step, evaluation, final):
    if final and AT == "final":
        send()
"""


def final_params(client, run_id: str, into: Path) -> dict[str, np.ndarray]:
    path = client.download_artifacts(run_id, "checkpoints/last.npz", str(into))
    return checkpoint.load(Path(path)).params


INTERRUPTIONS = {
    "SIGINT at a checkpoint": "SIGINT:1499",  # stops after step 1500, just checkpointed
    "SIGINT in the final evaluation": "SIGINT:final",  # training is over, but the run is not FINISHED
    "SIGKILL": "SIGKILL:1777",
}


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
@pytest.mark.slow  # two whole runs and a resume each
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    cli, install_plugin, default_store, tmp_path, interruption
):
    """The signal comes from the run's own process (a plugin sends it at a given step), so that it always lands
    where the test says, however fast or loaded the machine."""
    args = ("task=adder", "train.steps=6000", "train.checkpoint_every=500", "model.log=false", "tracking.log_every=1")
    env = install_plugin("signal_at", SIGNAL_AT)
    whole = start(tmp_path, *args, "tracking.run_name=whole", env=env)
    cut = start(
        tmp_path,
        *args,
        "tracking.run_name=cut",
        "hydra.run.dir=outputs/cut",
        env={**env, "SIGNAL_AT": INTERRUPTIONS[interruption]},
    )
    _out, err = cut.communicate(timeout=300)
    assert whole.wait(timeout=300) == 0, whole.communicate()
    runs = {r.info.run_name: r for r in runs_of(default_store, "adder")}
    killed = runs["cut"]
    assert killed.info.status == "KILLED"
    if interruption.startswith("SIGINT"):
        assert cut.returncode == 130, err
        assert one_line(err) == "framework: error: interrupted; the run is recorded as KILLED"
    else:
        assert cut.returncode == -signal.SIGKILL
        # the recording process outlives the training process and closes the run
        assert killed.data.tags["error"] == ABANDONED.format(run_id=killed.info.run_id)

    result = cli(f"resume={killed.info.run_id}")  # the plugin is not installed: it is not part of the run
    assert result.returncode == 0, result.stderr
    resumed = default_store.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # why it was KILLED is no longer true
    steps = sorted({m.step for m in default_store.get_metric_history(killed.info.run_id, "grad_norm")})
    assert steps == list(range(6000))  # the metrics continue at the right step numbers
    expected = final_params(default_store, runs["whole"].info.run_id, tmp_path / "whole")
    got = final_params(default_store, killed.info.run_id, tmp_path / "resumed")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name


NEXT_CHECKPOINT_AT_ONCE = '''
import os

from framework.core.hookspecs import hookimpl


@hookimpl(trylast=True)
def framework_checkpoint(run, step, path):
    """As if the next checkpoint had replaced this one before the recording process read it."""
    later = path.with_suffix(".later")
    later.write_bytes(b"a later checkpoint")
    os.replace(later, path)
'''


def test_the_recorded_checkpoint_is_the_announced_one_though_its_file_was_replaced(
    cli, install_plugin, default_store, tmp_path
):
    """If a run is killed before it sends the metrics up to its next checkpoint, the recorded checkpoint must not be
    that next one: its resumed run would leave those steps out of the metric history."""
    env = install_plugin("next_checkpoint_at_once", NEXT_CHECKPOINT_AT_ONCE)
    result = cli("task=adder", "train.steps=300", "train.checkpoint_every=100", "model.log=false", env=env)
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(default_store, "adder")
    recorded = Path(default_store.download_artifacts(run.info.run_id, CHECKPOINT, str(tmp_path / "recorded")))
    assert checkpoint.load(recorded).step == 300


@pytest.mark.slow
def test_resume_refusals_are_one_line(cli, default_store):
    result = cli("task=adder", "train.steps=20", "model.log=false")
    assert result.returncode == 0, result.stderr
    (finished,) = runs_of(default_store, "adder")
    run_id = finished.info.run_id

    result = cli(f"resume={run_id}")
    assert result.returncode == 1
    assert one_line(result.stderr) == f"framework: error: resume={run_id}: the run FINISHED; there is nothing to resume"

    result = cli("resume=0123456789abcdef0123456789abcdef")
    assert result.returncode == 1
    assert "resume=0123456789abcdef0123456789abcdef: no such run in sqlite:///" in one_line(result.stderr)

    result = cli(f"resume={run_id}", "train.steps=50")
    assert result.returncode == 2
    assert "the run continues with its own config (remove train.steps=50)" in one_line(result.stderr)
