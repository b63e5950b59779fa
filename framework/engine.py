"""The engine: build a run from its config, train it, report every event.

The data path reads straight through: config -> components -> batches ->
forward over time -> loss -> backward through time -> clip -> optimizer step
-> events (-> MLflow, progress bar, any observer plugin).
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from framework import plugins, seeding
from framework.config import ConfigError
from framework.config import build as build_config
from framework.nn.clipping import clip_by_norm, clip_by_value, global_norm
from framework.protocols import Dataset, Evaluation, Optimizer, Parts, RunInfo, Task
from framework.registry import KINDS, Component
from framework.settings import ObjectiveSettings, Settings

log = logging.getLogger(__name__)


class DivergenceError(ArithmeticError):
    """The loss or the gradient became NaN or infinite; ``str()`` is one line."""

    def __init__(self, step: int, loss: float, norm: float) -> None:
        super().__init__(
            f"training diverged at step {step}: loss={loss:.6g}, gradient norm={norm:.6g}; "
            "try gradient clipping (train.clip_norm=1.0) or a smaller learning rate or step size"
        )


class IncompatibleError(ValueError):
    """The chosen components do not fit together (e.g. a loss for class indices on counts)."""


class StepBoundaryInterrupt:
    """Ctrl-C stops training at the next step boundary; a second Ctrl-C stops at once.

    So an interruption never cuts a tracking write or an optimizer update in
    half, and the run can still record what it had. Only the main thread can
    own signals; elsewhere Ctrl-C behaves as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> StepBoundaryInterrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)  # the next Ctrl-C interrupts immediately

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the last check."""
        if self.requested:
            raise KeyboardInterrupt


@dataclass
class History:
    """Every per-step metric of the run so far, in step order."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def record(self, metrics: Mapping[str, float]) -> None:
        """Append one step's metrics."""
        for name, value in metrics.items():
            self.values[name].append(value)


@dataclass
class Run:
    """A run, fully built and checked, not yet started."""

    info: RunInfo
    settings: Settings
    task: Task
    dataset: Dataset
    optimizer: Optimizer
    batch_rng: np.random.Generator


def choose(pm: plugins.PluginManager, kind: str, config: Mapping[str, Any]) -> tuple[Component, Any]:
    """The component the config selects for ``kind`` and its checked options."""
    node = config.get(kind)
    names = ", ".join(c.name for c in pm.registry.of_kind(kind))
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(kind, node, f"one of: {names} (e.g. {kind}=<name>)")
    component = pm.registry.get(kind, node["name"])
    return component, build_config(component.config_class, node, prefix=kind, ignore=("name",))


def build(
    cfg: DictConfig | Mapping[str, Any],
    pm: plugins.PluginManager,
    overrides: Sequence[str] = (),
    launch_dir: Path | None = None,
) -> Run:
    """Check ``cfg`` and build every component of the run by name; nothing is recorded yet.

    Raises :class:`ConfigError` for any value a user must change.
    """
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    settings: Settings = build_config(Settings, config, ignore=KINDS)
    chosen = {kind: choose(pm, kind, config) for kind in KINDS}
    rng = functools.partial(seeding.rng, settings.seed)
    dtype = np.dtype(settings.dtype)

    def component(kind: str, *args: Any) -> Any:
        factory, options = chosen[kind][0].factory, chosen[kind][1]
        return factory(options, *args)

    init_rng = rng("init")  # one stream for every cell a task makes
    dataset = component("dataset", rng("data"), dtype)
    parts = Parts(
        dataset=dataset,
        make_cell=lambda input_size, hidden_size: component("cell", input_size, hidden_size, init_rng, dtype),
        loss=component("loss"),
        rng=rng,
        dtype=dtype,
    )
    task_name = chosen["task"][0].name
    info = RunInfo(
        task=task_name,
        experiment=settings.tracking.experiment or task_name,
        config=config,
        overrides=list(overrides),
        steps=settings.train.steps,
        run_name=settings.tracking.run_name,
        launch_dir=launch_dir or Path.cwd(),
    )
    task = component("task", parts)
    info.objective, info.maximize = objective(settings.objective, task)
    probe(task, dataset, settings, chosen, rng)
    return Run(info, settings, task, dataset, component("optim"), rng("batches"))


def objective(settings: ObjectiveSettings, task: Task) -> tuple[str, bool]:
    """The final metric a run returns to sweepers and whether higher is better: the task's, unless configured."""
    metric = settings.metric or task.objective
    if settings.direction is not None:
        return metric, settings.direction == "maximize"
    if metric != task.objective:
        raise ConfigError("objective.direction", None, f"minimize or maximize, to go with objective.metric={metric!r}")
    return metric, task.maximize


def objective_value(run: RunInfo, final: Evaluation) -> float:
    """The run's objective metric in its final evaluation."""
    if run.objective not in final.metrics:
        raise ConfigError("objective.metric", run.objective, "a final metric of the task: " + ", ".join(final.metrics))
    return float(final.metrics[run.objective])


def probe(task: Task, dataset: Dataset, settings: Settings, chosen: Mapping[str, Any], rng: Any) -> None:
    """One forward and backward pass before anything is recorded, so that components
    that do not fit together are refused in one line.

    The batch comes from a separate copy of the batch stream: training is unchanged.
    """
    batch = next(dataset.batches(settings.train.batch_size, rng("batches")))
    try:
        with np.errstate(all="ignore"):
            task.model.loss_and_grads(batch, None)
    except (ValueError, TypeError, IndexError) as error:
        names = " ".join(f"{kind}={chosen[kind][0].name}" for kind in ("dataset", "cell", "loss"))
        first_line = (str(error).splitlines() or [""])[0]
        raise IncompatibleError(f"task {chosen['task'][0].name!r} cannot train with {names}: {first_line}") from None


def train(run: Run, hook: Any, interrupt: StepBoundaryInterrupt | None = None) -> Evaluation:
    """The training loop; returns the final evaluation.

    One loop for every regime: the dataset's batches decide between full-batch,
    minibatch and one-sequence-per-step training, and whether the final state
    of a batch is carried into the next (truncated BPTT) or reset. An
    evaluation may stop training early (``Evaluation.stop``); the final
    evaluation then happens at that step.
    """
    settings, model = run.settings.train, run.task.model
    history = History()
    batches = run.dataset.batches(settings.batch_size, run.batch_rng)
    state = None
    # overflow shows up as an inf or NaN loss or gradient norm, checked every step
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(settings.steps):
            batch = next(batches)
            result = model.loss_and_grads(batch, None if batch.new_sequence else state)
            state = result.state  # carried, never back-propagated through
            norm = global_norm(result.grads)
            if not (math.isfinite(result.loss) and math.isfinite(norm)):
                raise DivergenceError(step, result.loss, norm)
            if settings.clip_value is not None:
                clip_by_value(result.grads, settings.clip_value)
            if settings.clip_norm is not None:
                clip_by_norm(result.grads, settings.clip_norm, norm)
            run.optimizer.step(model.params, result.grads, result.loss)
            metrics = {"loss": result.loss, "grad_norm": norm, **run.task.trace(result.loss)}
            history.record(metrics)
            hook.framework_metrics(run=run.info, step=step, metrics=metrics)
            done = step + 1
            if settings.eval_every and done % settings.eval_every == 0 and done < settings.steps:
                evaluation = run.task.evaluate(done, history.values, final=False)
                if evaluation.stop:  # the final evaluation below reports this step
                    log.info("%s: the task asked to stop after %d steps", run.info.task, done)
                    break
                hook.framework_evaluation(run=run.info, step=done, evaluation=evaluation, final=False)
            if interrupt is not None:
                interrupt.check()
    final = run.task.evaluate(done, history.values, final=True)
    hook.framework_evaluation(run=run.info, step=done, evaluation=final, final=True)
    return final


def execute(
    cfg: DictConfig | Mapping[str, Any],
    overrides: Sequence[str] = (),
    launch_dir: Path | None = None,
    pm: plugins.PluginManager | None = None,
) -> float:
    """Build, train and report one run; returns its objective metric (see :func:`objective`).

    Every run that starts ends through ``framework_run_ended`` with FINISHED,
    FAILED (an exception, a divergence) or KILLED (Ctrl-C), and the exception
    propagates.
    """
    pm = pm or plugins.manager()
    run = build(cfg, pm, overrides, launch_dir)
    hook = pm.hook
    status, error = "FAILED", None
    started = time.perf_counter()
    try:
        with StepBoundaryInterrupt() as interrupt, threadpool_limits(limits=run.settings.threads):
            hook.framework_run_started(run=run.info)
            final = train(run, hook, interrupt)
            value = objective_value(run.info, final)
        status = "FINISHED"
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted (SIGINT)"
        raise
    except Exception as exc:
        error = str(exc) if isinstance(exc, DivergenceError) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        hook.framework_run_ended(run=run.info, status=status, error=error)
    summary = " ".join(f"{k}={v:.6g}" for k, v in final.metrics.items())
    log.info("%s finished in %.2f s: %s", run.info.task, time.perf_counter() - started, summary)
    return value
