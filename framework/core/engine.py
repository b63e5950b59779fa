"""The engine: build a run from its config, train it, report every event.

The data path reads straight through: config -> components -> batches ->
forward over time -> loss -> backward through time -> clip -> optimizer step
-> events (-> MLflow, progress bar, any observer plugin).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import tempfile
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits

from framework.core import checkpoint, hidden, plugins, seeding, verdict
from framework.core.allocator import keep_freed_memory
from framework.core.config import build as build_config
from framework.core.config import flatten
from framework.core.data import available_memory, check_data_file
from framework.core.diagnostics import FlowRecorder
from framework.core.errors import (
    CheckpointError,
    ConfigError,
    DivergenceError,
    ExitCalledError,
    FrameworkError,
    IncompatibleError,
    one_line,
)
from framework.core.protocols import (
    Batch,
    Dataset,
    Evaluation,
    Optimizer,
    Parts,
    Resumable,
    RunInfo,
    Task,
    TutorialData,
)
from framework.core.registry import KINDS, Component
from framework.core.settings import ObjectiveSettings, Settings
from framework.nn.clipping import clip_by_norm, clip_by_value, global_norm

log = logging.getLogger(__name__)

BLOCK_SECONDS = 0.1  # the per-step metrics are handed on to the observers at least this often (and at every boundary)


class StepBoundaryInterrupt:
    """Ctrl-C stops training at the next step boundary (or, after the last step, once the run is evaluated and
    recorded); a second Ctrl-C stops at once.

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
        """Raise :class:`Interrupted` if Ctrl-C was pressed since the last check."""
        if self.requested:
            raise Interrupted


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, taken at a step boundary: the run's state is consistent and can be checkpointed."""


@dataclass
class History:
    """Every per-step metric of the run so far, in step order."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def record(self, metrics: Mapping[str, float]) -> None:
        """Append one step's metrics."""
        for name, value in metrics.items():
            self.values[name].append(value)


class MetricsBlock:
    """The metrics of the updates not yet handed on to the observers: one ``framework_metrics_block`` call per block.

    A block ends every :data:`BLOCK_SECONDS`, before an evaluation or a checkpoint, and when training stops for any
    reason; a hook call per update would cost as much as a fifth of the tutorials' smallest steps.
    """

    def __init__(self, hook: Any, run: RunInfo) -> None:
        self.hook, self.run = hook, run
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.started = time.perf_counter()

    def due(self) -> bool:
        """Whether the block has lasted :data:`BLOCK_SECONDS`."""
        return time.perf_counter() - self.started >= BLOCK_SECONDS

    def hand_on(self) -> None:
        """``framework_metrics_block`` with the rows gathered since the last call, if any; a new block starts."""
        rows, self.rows = self.rows, []
        self.started = time.perf_counter()
        if rows:
            self.hook.framework_metrics_block(run=self.run, block=rows)


@dataclass
class Run:
    """A run, fully built and checked, and how far it has trained."""

    info: RunInfo
    settings: Settings
    task: Task
    dataset: Dataset
    optimizer: Optimizer
    batches: Iterator[Batch]  # the dataset's stream of training batches
    streams: seeding.RandomStreams  # every random stream of the run, for checkpoints
    follow: verdict.Tracker  # when the evaluations reached the task's reference result
    advice: str  # what to try if the run does not reach it
    step: int = 0  # optimizer updates done
    state: Any = None  # the hidden state carried into the next batch
    history: History = field(default_factory=History)
    checkpointed: int | None = None  # the step of the last checkpoint written


@dataclass
class Outcome:
    """A finished run: its final evaluation, every per-step metric, its verdict and its objective."""

    info: RunInfo
    task: Task  # trained
    final: Evaluation
    history: dict[str, list[float]]
    verdict: verdict.Verdict
    objective: float


def choose(pm: plugins.PluginManager, kind: str, config: Mapping[str, Any]) -> tuple[Component, Any]:
    """The component the config selects for ``kind`` and its checked options."""
    node = config.get(kind)
    names = ", ".join(c.name for c in pm.registry.of_kind(kind))
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(kind, node, f"one of: {names} (e.g. {kind}=<name>)")
    component = pm.registry.get(kind, node["name"])
    return component, build_config(component.config_class, node, prefix=kind, ignore=("name",))


def locate_data_files(kind: str, options: Any, launch_dir: Path) -> tuple[Any, dict[str, Path]]:
    """The options with every data file they name (``param(file=True)``) checked and made absolute, and those files
    by option key (see :func:`framework.core.data.check_data_file`)."""
    found = {}
    for option in dataclasses.fields(options):
        value = getattr(options, option.name)
        if option.metadata.get("file") and value is not None:
            found[option.name] = check_data_file(f"{kind}.{option.name}", value, launch_dir)
    located = dataclasses.replace(options, **{name: str(path) for name, path in found.items()})
    return located, {f"{kind}.{name}": path for name, path in found.items()}


def build(
    cfg: DictConfig | Mapping[str, Any],
    pm: plugins.PluginManager,
    overrides: Sequence[str] = (),
    launch_dir: Path | None = None,
    output_dir: Path | None = None,
) -> Run:
    """Check ``cfg`` and build every component of the run by name; nothing is recorded yet.

    Raises :class:`ConfigError` for any value a user must change.
    """
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    settings: Settings = build_config(Settings, config, ignore=KINDS)
    keep_freed_memory()  # every step reuses the previous step's arrays instead of faulting in fresh pages
    launch_dir = launch_dir or Path.cwd()
    chosen, data_files = {}, {}
    for kind in KINDS:
        component, options = choose(pm, kind, config)
        options, files = locate_data_files(kind, options, launch_dir)
        chosen[kind] = (component, options)
        data_files.update(files)
    rng = seeding.RandomStreams(settings.seed)
    dtype = np.dtype(settings.dtype)
    tutorial = tutorial_stream(chosen["dataset"][1], config, settings.seed)

    def component(kind: str, *args: Any) -> Any:
        factory, options = chosen[kind][0].factory, chosen[kind][1]
        return factory(options, *args)

    init_rng = rng("init")  # one stream for every cell a task makes
    dataset = component("dataset", rng("data") if tutorial is None else tutorial, dtype)
    parts = Parts(
        dataset=dataset,
        make_cell=lambda input_size, hidden_size: component("cell", input_size, hidden_size, init_rng, dtype),
        loss=component("loss"),
        rng=rng,
        dtype=dtype,
        tutorial=tutorial,
    )
    task_name = chosen["task"][0].name
    info = RunInfo(
        task=task_name,
        experiment=settings.tracking.experiment or task_name,
        config=config,
        overrides=list(overrides),
        steps=settings.train.steps,
        run_name=settings.tracking.run_name or verdict.run_name(task_name, overrides),
        launch_dir=launch_dir,
        output_dir=output_dir,
        resume=settings.resume,
        data_files=data_files,
    )
    task = component("task", parts)
    info.objective, info.maximize = objective(settings.objective, task)
    with seeding.unchanged(tutorial):  # the probe's batch is drawn again by training, as the tutorial draws it
        probe(task, dataset, settings, chosen, rng)
    batches = dataset.batches(settings.train.batch_size, rng("batches"))
    names = {kind: component.name for kind, (component, _) in chosen.items()}
    advice = verdict.advise(chosen["task"][0], names, overrides, pm.registry)
    follow = verdict.Tracker(verdict.reference_of(task))
    return Run(info, settings, task, dataset, component("optim"), batches, rng, follow, advice)


def tutorial_stream(options: Any, config: Mapping[str, Any], seed: int) -> np.random.RandomState | None:
    """The tutorial's stream, numpy's legacy generator after ``np.random.seed(seed)``, for a dataset that draws as its
    tutorial did (``dataset.generator=tutorial``, :class:`TutorialData`); None for any other.

    The dataset draws its data from it and the task its initial weights, so the run must have the settings the
    tutorial's draws depend on: any other is refused in one line naming them. The stream is not checkpointed: a
    resumed run replays its batches (:func:`restore`), which draws it to where it was.
    """
    if not isinstance(options, TutorialData) or options.generator != "tutorial":
        return None
    flat = flatten(config)
    expected = options.tutorial_settings()
    got = {key: flat.get(f"{key}.name" if key in KINDS else key) for key in expected}
    if got != expected:
        tutorials = ", ".join(f"{key}={value}" for key, value in expected.items())
        differing = ", ".join(f"{key}={got[key]}" for key in expected if got[key] != expected[key])
        raise ConfigError("dataset.generator", "tutorial", f"the tutorial's settings: {tutorials} (got {differing})")
    return seeding.tutorial(seed)


def objective(settings: ObjectiveSettings, task: Task) -> tuple[str, bool]:
    """The final metric a run returns to sweepers and whether higher is better: the task's, unless configured.

    A task that names its final metrics (``Task.metrics``) has a configured one checked before training.
    """
    metric = settings.metric or task.objective
    reported = getattr(task, "metrics", None)
    if reported is not None and metric not in reported:
        raise ConfigError("objective.metric", metric, "a final metric of the task: " + ", ".join(reported))
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
    """One forward and backward pass before anything is recorded, so that components that do not fit together, and a
    step that needs more memory than there is, are refused in one line.

    The step's memory is measured (tracemalloc, which sees numpy's arrays) on the first sequence of the first batch,
    at its second pass (the first may load what a process loads once, such as numba's compiled loops), and scaled
    to the batch; the batch comes from a separate copy of the batch stream: training is unchanged.
    """
    batch = next(dataset.batches(settings.train.batch_size, rng("batches")))
    rows = len(batch.inputs)
    one = Batch(*(None if a is None else a[:1] for a in (batch.inputs, batch.targets, batch.mask)), batch.new_sequence)
    with np.errstate(all="ignore"):
        try:
            task.model.loss_and_grads(one, None)  # unmeasured: a first call's one-off loads (numba's) are no step's
            tracemalloc.start()
            try:
                task.model.loss_and_grads(one, None)
                needed = tracemalloc.get_traced_memory()[1] * rows
            finally:
                tracemalloc.stop()
        except Exception:  # the full batch below says what does not fit
            needed = 0
    available = available_memory()
    if needed > available:
        raise ConfigError(
            "train.batch_size",
            settings.train.batch_size,
            f"a batch whose training step fits in memory: {rows} sequences need about {needed / 2**30:.1f} GiB, "
            f"{available / 2**30:.1f} GiB are available",
        )
    try:
        with np.errstate(all="ignore"):
            task.model.loss_and_grads(batch, None)
    except (ValueError, TypeError, IndexError) as error:
        names = " ".join(f"{kind}={chosen[kind][0].name}" for kind in ("dataset", "cell", "loss"))
        raise IncompatibleError(
            f"task {chosen['task'][0].name!r} cannot train with {names}: {one_line(error)}"
        ) from None


def train(run: Run, hook: Any, interrupt: StepBoundaryInterrupt | None = None) -> Evaluation:
    """The training loop, from ``run.step`` to ``train.steps``; returns the final evaluation.

    One loop for every regime: the dataset's batches decide between full-batch,
    minibatch and one-sequence-per-step training, and whether the final state
    of a batch is carried into the next (truncated BPTT) or reset. An
    evaluation may stop training early (``Evaluation.stop``); the final
    evaluation then happens at that step. Each update's metrics go to the observers in blocks
    (``framework_metrics_block``, :class:`MetricsBlock`) and, for a plugin that asks for them one by one, at once
    (``framework_metrics``). Every ``train.checkpoint_every``
    steps, and at the end, the run is checkpointed. Every ``diagnostics.every``
    steps the gradient flow through time is recorded (metric ``grad_flow_ratio``;
    the final evaluation gets its figure ``gradient_flow``, see framework.diagnostics),
    and the final evaluation gets the figure ``hidden_states`` of the last batch's first
    sequence (framework.core.hidden).
    """
    settings, model = run.settings.train, run.task.model
    flow = FlowRecorder(run.settings.diagnostics.every, run.info.task)
    batch = None  # the last batch trained on
    per_step = bool(hook.framework_metrics.get_hookimpls())  # plugins written for the per-update hook
    block = MetricsBlock(hook, run.info)
    run.follow.start()
    # overflow shows up as an inf or NaN loss or gradient norm, checked every step
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            while run.step < settings.steps:
                step = run.step
                batch = next(run.batches)
                result = model.loss_and_grads(batch, None if batch.new_sequence else run.state)
                norm = global_norm(result.grads)
                if not (math.isfinite(result.loss) and math.isfinite(norm)):
                    raise DivergenceError(step, result.loss, norm)
                if settings.clip_value is not None:
                    clip_by_value(result.grads, settings.clip_value)
                if settings.clip_norm is not None:
                    clip_by_norm(result.grads, settings.clip_norm, norm)
                run.optimizer.step(model.params, result.grads, result.loss)
                run.state = result.state  # carried, never back-propagated through
                metrics = {
                    "loss": result.loss,
                    "grad_norm": norm,
                    **run.task.trace(result.loss),
                    **flow.metrics(step, result),
                }
                run.history.record(metrics)
                block.rows.append((step, metrics))
                if per_step:
                    hook.framework_metrics(run=run.info, step=step, metrics=metrics)
                run.step = done = step + 1
                evaluating = settings.eval_every and done % settings.eval_every == 0 and done < settings.steps
                checkpointing = (
                    settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps
                )
                if evaluating or checkpointing or block.due():
                    block.hand_on()
                if evaluating:
                    evaluation = run.task.evaluate(done, run.history.values, final=False)
                    run.follow.evaluated(done, evaluation.metrics)
                    if evaluation.stop:  # the final evaluation below reports this step
                        log.info(
                            "%s: stopped early at step %d of %d: its result is reached (the task's stop rule)",
                            run.info.task,
                            done,
                            settings.steps,
                        )
                        break
                    hook.framework_evaluation(run=run.info, step=done, evaluation=evaluation, final=False)
                if checkpointing:
                    save_checkpoint(run, hook)
                if interrupt is not None:
                    interrupt.check()
        finally:  # the metrics of the updates done, however training stopped
            block.hand_on()
    final = run.task.evaluate(run.step, run.history.values, final=True)
    run.follow.evaluated(run.step, final.metrics)
    run.info.verdict = verdict.verdict(run.follow, final.metrics, run.advice)
    final.metrics.update(run.info.verdict.metrics())
    final.figures.update(flow.figures())
    final.figures.update(hidden.figures(model, batch, run.info.task))
    hook.framework_evaluation(run=run.info, step=run.step, evaluation=final, final=True)
    save_checkpoint(run, hook)
    return final


def save_checkpoint(run: Run, hook: Any) -> None:
    """Write the run's checkpoint to ``<output dir>/checkpoints/last.npz`` and announce it, once per step
    (no output dir: none)."""
    if run.info.output_dir is None or run.checkpointed == run.step:
        return
    task_state = run.task.checkpoint_state() if isinstance(run.task, Resumable) else {}
    snapshot = checkpoint.Checkpoint(
        task=run.info.task,
        step=run.step,
        params=run.task.model.params,
        optimizer=checkpoint.optimizer_state(run.optimizer),
        state=run.state,
        history=dict(run.history.values),
        streams=run.streams.states(),
        task_state=task_state,
        verdict=run.follow.state(),
    )
    path = checkpoint.save(run.info.output_dir / "checkpoints" / "last.npz", snapshot)
    run.checkpointed = run.step
    hook.framework_checkpoint(run=run.info, step=run.step, path=path)


def restore(run: Run, saved: checkpoint.Checkpoint, origin: str) -> None:
    """Put ``run`` where the checkpoint ``saved`` left it: the next step is ``saved.step``.

    The batch stream is replayed up to that step, so that the resumed run sees
    the batches the original would have; the random streams' saved states must
    then match theirs (else the data differ), and are restored.
    """
    params = run.task.model.params
    checkpoint.check_fits(saved, run.info.task, params, origin)
    for _ in range(saved.step):
        next(run.batches)
    try:
        run.streams.restore(saved.streams)
    except ValueError as error:
        raise CheckpointError(f"the checkpoint {origin} does not fit this run: {error}") from None
    checkpoint.load_params(params, saved.params, origin)
    checkpoint.restore_optimizer(run.optimizer, saved.optimizer)
    if saved.task_state:
        run.task.restore_state(saved.task_state)
    run.step, run.state = saved.step, saved.state
    if saved.verdict is not None:
        run.follow.restore(saved.verdict)
    run.history.values.update({k: list(map(float, v)) for k, v in saved.history.items()})


def execute(
    cfg: DictConfig | Mapping[str, Any],
    overrides: Sequence[str] = (),
    launch_dir: Path | None = None,
    pm: plugins.PluginManager | None = None,
    output_dir: Path | None = None,
    resume_from: tuple[Path, str] | None = None,
) -> Outcome:
    """Build, train and report one run, continuing from the checkpoint file ``resume_from`` (and a few words on where
    it is from) if given, once it is validated against the run; returns its :class:`Outcome`.

    Every run that starts ends through ``framework_run_ended`` with FINISHED,
    FAILED (an exception, a divergence) or KILLED (Ctrl-C, after a last
    checkpoint), and the exception propagates. Checkpoints go to
    ``output_dir/checkpoints`` (Hydra's output folder; a temporary one if None).
    """
    pm = pm or plugins.manager()
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    launch_dir = launch_dir or Path.cwd()
    with contextlib.ExitStack() as scratch:
        if output_dir is None:  # a run from Python: its checkpoints go to a folder of its own, removed after it
            output_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="framework-run-")))
        run = build(config, pm, overrides, launch_dir, output_dir)
        if resume_from is not None:
            path, origin = resume_from
            restore(run, checkpoint.load(path, run.task.model.params, run.settings.train.steps), origin)
        return train_and_report(run, pm.hook)


def train_and_report(run: Run, hook: Any) -> Outcome:
    """Train ``run`` between its start and end events; returns its outcome."""
    status, error = "FAILED", None
    started = time.perf_counter()
    try:
        with StepBoundaryInterrupt() as interrupt, threadpool_limits(limits=run.settings.threads):
            hook.framework_run_started(run=run.info)
            final = train(run, hook, interrupt)
            value = objective_value(run.info, final)
            hook.framework_trained(run=run.info, task=run.task, step=run.step)
            interrupt.check()  # Ctrl-C after the last step boundary: the run is not FINISHED either
        status = "FINISHED"
    except KeyboardInterrupt as interruption:
        status, error = "KILLED", "interrupted (SIGINT)"
        if isinstance(interruption, Interrupted):  # at a step boundary: a consistent state to resume from
            save_checkpoint(run, hook)
        raise
    except Exception as exc:
        error = str(exc) if isinstance(exc, FrameworkError) else f"{type(exc).__name__}: {exc}"
        raise
    except SystemExit as exc:  # sys.exit() in a plugin's code: a failure, not a quiet end of the program
        error = f"sys.exit({exc.code!r}) was called during the run"
        raise ExitCalledError(error) from exc
    finally:
        hook.framework_run_ended(run=run.info, status=status, error=error)
    summary = " ".join(f"{k}={v:.6g}" for k, v in final.metrics.items())
    log.info("%s finished in %.2f s: %s", run.info.run_name, time.perf_counter() - started, summary)
    log.info("%s", run.info.verdict.line())
    return Outcome(run.info, run.task, final, dict(run.history.values), run.info.verdict, value)
