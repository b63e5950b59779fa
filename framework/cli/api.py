"""The Python API, for notebooks and scripts: the command line's runs and sweeps, as functions.

    import framework
    result = framework.run("adder", optim="adam", seed=3)
    result.metrics["accuracy"], result.verdict.line(), result.figures["right_sums"]
    result.model.predict(pandas.DataFrame({"a": [3], "b": [4]}))

    results = framework.sweep("adder", optim=["sgd", "adam"], seed=[0, 1, 2], jobs=2)

A run goes through the very composition, checks, recipes and tracking of ``python -m framework``:
keyword arguments select a component (``optim="adam"``) or set values (``seed=3``, ``train={"steps": 300}``),
and Hydra override strings are taken too (``framework.run("counting", "train.steps=300")``). Every mistake
raises :class:`~framework.core.errors.FrameworkError`, whose message is the command line's one line. Runs
made one after another in a process (a notebook) share nothing but the plugins: Hydra's state is cleared
after each composition, and MLflow is used only by the recording process and by a result's ``model``.
"""

from __future__ import annotations

import datetime
import inspect
import io
import itertools
import os
import shlex
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.cli import host
from framework.core import engine
from framework.core.composition import check_overrides, describe, unique
from framework.core.errors import CommandLineError, ConfigError, FrameworkError, one_line
from framework.core.protocols import Predictor
from framework.core.verdict import Verdict
from framework.tracking.resume import resumable
from framework.tracking.store import SWEEP_ENV, resolve_uri, where_to_look


def as_overrides(settings: Mapping[str, Any]) -> list[str]:
    """Keyword arguments as Hydra overrides: ``optim="adam"`` -> ``optim=adam``, ``train={"steps": 3}`` ->
    ``train.steps=3``, ``optim={"name": "adam", "lr": 0.1}`` -> ``optim=adam optim.lr=0.1``, None -> null."""
    found = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            nested = dict(value)
            if "name" in nested:
                found.append(f"{key}={nested.pop('name')}")
            found += as_overrides({f"{key}.{k}": v for k, v in nested.items()})
        else:
            found.append(f"{key}={override_value(value)}")
    return found


def override_value(value: Any) -> str:
    """A Python value as Hydra writes it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and any(c in value for c in " ,=[]{}()'\"\\"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def composed(overrides: Sequence[str]) -> dict[str, Any]:
    """The run's config, composed by Hydra from the primary config and ``overrides`` (checked first), resolved."""
    pm = host.manager()
    check_overrides(overrides, pm.registry, multirun=False)
    if GlobalHydra.instance().is_initialized():
        raise CommandLineError("framework.run cannot compose a run inside another Hydra app (Hydra is initialized)")
    try:
        with initialize_config_module(config_module="framework.conf", version_base="1.3"):
            config = compose(config_name="config", overrides=list(overrides))
        return OmegaConf.to_container(config, resolve=True)
    except CompactHydraException as error:
        raise CommandLineError(describe(error)) from None
    except OmegaConfBaseException as error:
        raise ConfigError(error.full_key or "config", None, one_line(error)) from None


def output_folder(launch_dir: Path) -> Path:
    """A new folder of the run's own, as the command line's: ``outputs/<date>/<time>_<unique>``."""
    now = datetime.datetime.now()
    folder = launch_dir / "outputs" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{unique()}"
    folder.mkdir(parents=True)
    return folder


@dataclass
class Result:
    """A finished run: what it reached, every metric, its samples, tables and figures, and where it is recorded."""

    name: str
    metrics: dict[str, float]  # the final evaluation's (with the verdict's: reached, steps_to_result, ...)
    history: dict[str, list[float]]  # every per-step metric, step by step
    samples: dict[str, str]
    tables: dict[str, dict[str, list]]
    verdict: Verdict
    output_dir: Path
    config: dict[str, Any]
    data_files: dict[str, Path]
    run_id: str | None = None  # None: not tracked
    experiment_id: str | None = None
    tracking_uri: str | None = None
    drawers: dict[str, Callable[[], Any]] = field(default_factory=dict, repr=False)
    task: Any = field(default=None, repr=False)  # the trained task, in the process that trained it

    @cached_property
    def figures(self) -> dict[str, Any]:
        """The run's figures (matplotlib Figures, shown inline in Jupyter), drawn when first asked for."""
        return {name: draw() if callable(draw) else draw for name, draw in self.drawers.items()}

    @cached_property
    def model(self) -> Any:
        """The trained network as the pyfunc model MLflow serves: ``model.predict(pandas.DataFrame(...))``; from the
        store for a tracked run, else saved from the run itself."""
        with warnings.catch_warnings():  # MLflow imports tqdm.auto, which warns in a notebook without ipywidgets
            warnings.filterwarnings("ignore", "IProgress not found")
            import mlflow.pyfunc

            from framework.tracking.models import quiet

        with quiet():
            return self.load_model(mlflow.pyfunc)

    def load_model(self, pyfunc: Any) -> Any:
        """The pyfunc model (see :attr:`model`), loaded with ``pyfunc`` (MLflow's module)."""
        if self.run_id is not None:
            from mlflow import MlflowClient
            from mlflow.artifacts import download_artifacts

            client = MlflowClient(tracking_uri=self.tracking_uri)
            found = client.search_logged_models([self.experiment_id], filter_string=f"source_run_id = '{self.run_id}'")
            if not found:
                raise FrameworkError(f"run {self.run_id} logged no model (model.log=false, or its task cannot predict)")
            local = download_artifacts(artifact_uri=found[0].artifact_location, tracking_uri=self.tracking_uri)
            return pyfunc.load_model(local)
        if not isinstance(self.task, Predictor):
            raise FrameworkError(f"{self.name}: no model (its task cannot predict, or it ran in another process)")
        from mlflow.models import Model

        from framework.tracking.model_files import export
        from framework.tracking.models import save

        files = export(self.task, self.config, self.data_files, self.output_dir / "model-files")
        return pyfunc.load_model(str(save(files, self.output_dir, Model())))

    def look(self) -> list[str]:
        """How to open the run in MLflow's UI (nothing for an untracked run)."""
        if self.run_id is None:
            return []
        return where_to_look(self.tracking_uri, self.experiment_id, self.run_id)

    def summary(self) -> str:
        """The run's last lines, as the command line prints them."""
        metrics = " ".join(f"{key}={value:.6g}" for key, value in self.metrics.items())
        return "\n".join([f"{self.name}: {metrics}", self.verdict.line(), *self.look()])

    def __str__(self) -> str:
        return self.summary()

    def _ipython_display_(self) -> None:
        """In Jupyter: the summary, then every figure as a picture (whatever matplotlib backend the kernel has)."""
        from IPython.display import Image, Markdown, display

        display(Markdown("```text\n" + self.summary() + "\n```"))
        for figure in self.figures.values():
            picture = io.BytesIO()
            figure.savefig(picture, format="png")
            display(Image(data=picture.getvalue()))


def run(task: str | None = None, *overrides: str, **settings: Any) -> Result:
    """Train and record one run, as ``python -m framework task=<task> <overrides> <settings>`` does; its Result.

    ``task``: a task's name (None: the default task). ``overrides``: Hydra overrides (``"optim=adam"``,
    ``"train.steps=300"``). ``settings``: the same as keyword arguments (``optim="adam"``, ``train={"steps": 300}``).
    Raises :class:`~framework.core.errors.FrameworkError` (one line) for every mistake and every failed run.
    """
    given = [*([f"task={task}"] if task is not None else []), *overrides, *as_overrides(settings)]
    config = composed(given)
    launch_dir = Path.cwd()
    output_dir = output_folder(launch_dir)
    resume_from = None
    if config.get("resume"):
        config, path = resumable(config, given, launch_dir, output_dir)
        resume_from = (path, f"of run {config['resume']}")
    outcome = engine.execute(config, given, launch_dir, host.manager(), output_dir, resume_from)
    final, links = outcome.final, outcome.info.links
    return Result(
        name=outcome.info.run_name,
        metrics=dict(final.metrics),
        history=outcome.history,
        samples=dict(final.samples),
        tables=dict(final.tables),
        verdict=outcome.verdict,
        output_dir=output_dir,
        config=config,
        data_files=outcome.info.data_files,
        run_id=links.get("mlflow_run_id"),
        experiment_id=links.get("mlflow_experiment_id"),
        tracking_uri=links.get("mlflow_uri"),
        drawers=dict(final.figures),
        task=outcome.task,
    )


def run_job(overrides: Sequence[str], sweep_id: str | None) -> Result:
    """One job of a sweep (in this process or a worker's): a run whose recording is a child of the sweep's parent.

    Its figures are not drawn here (a worker's result crosses a process boundary): they are in the run's record.
    """
    if sweep_id is not None:
        os.environ[SWEEP_ENV] = sweep_id
    try:
        result = run(None, *overrides)
    finally:
        os.environ.pop(SWEEP_ENV, None)
    result.drawers, result.task = {}, None  # they hold the task, which stays in this process
    return result


@dataclass
class Job:
    """The outcome of one job of a sweep: its overrides, and its result or the one line of its failure."""

    overrides: list[str]
    result: Result | None
    error: str | None


MAIN_GUARD = (
    'a script that sweeps with jobs > 1 must call framework.sweep under `if __name__ == "__main__":`, since each '
    "worker process starts by importing the script"
)


def run_jobs(jobs: Sequence[Sequence[str]], workers: int, sweep_id: str | None) -> list[Job]:
    """Run ``jobs`` (each a list of overrides), ``workers`` at a time in worker processes of their own (1: here, one
    after another); each job's failure is kept as its one line, and the other jobs go on."""
    outcomes: list[Job] = []
    if workers <= 1:
        for overrides in jobs:
            try:
                outcomes.append(Job(list(overrides), run_job(overrides, sweep_id), None))
            except FrameworkError as error:
                outcomes.append(Job(list(overrides), None, str(error)))
        return outcomes
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_job, list(overrides), sweep_id) for overrides in jobs]
            for overrides, future in zip(jobs, futures, strict=True):
                try:
                    outcomes.append(Job(list(overrides), future.result(), None))
                except FrameworkError as error:
                    outcomes.append(Job(list(overrides), None, str(error)))
    except BrokenProcessPool:
        raise FrameworkError(
            f"a worker process of the sweep ended abruptly after {len(outcomes)} of {len(jobs)} jobs: {MAIN_GUARD} "
            "(else it was killed, or ran out of memory)"
        ) from None
    return outcomes


@dataclass
class SweepResult:
    """A finished sweep: each job's outcome, and its parent run (None: untracked)."""

    jobs: list[Job]
    parent_run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None

    @property
    def results(self) -> list[Result]:
        """The results of the jobs that finished."""
        return [job.result for job in self.jobs if job.result is not None]

    @property
    def failures(self) -> dict[str, str]:
        """The failed jobs' overrides and their one line."""
        return {" ".join(job.overrides): job.error for job in self.jobs if job.error is not None}


def grid(settings: Mapping[str, Any]) -> list[list[str]]:
    """Every combination of the list-valued settings (the others fixed), as overrides: ``seed=[0, 1]`` -> 2 jobs."""
    swept = {key: value for key, value in settings.items() if isinstance(value, (list, tuple))}
    fixed = {key: value for key, value in settings.items() if key not in swept}
    combinations = itertools.product(*swept.values()) if swept else [()]
    return [as_overrides({**fixed, **dict(zip(swept, values, strict=True))}) for values in combinations]


def sweep(
    task: str | None = None, *overrides: str, jobs: int | None = None, experiment: str | None = None, **settings: Any
) -> SweepResult:
    """Every combination of the list-valued ``settings``, as runs recorded under one parent run (as
    ``python -m framework --multirun`` records them), ``jobs`` at a time (None: one per core, as ``atlas``; 1: one
    after another in this process); the parent run gets the summary table and the objective against each swept value.

    ``framework.sweep("adder", optim=["sgd", "adam"], seed=[0, 1, 2], jobs=2)``: 6 runs, two at a time. The workers
    are processes that start by importing the ``__main__`` script: a script calls this under
    ``if __name__ == "__main__":``.
    """
    caller = inspect.currentframe().f_back
    if caller is not None and caller.f_globals.get("__name__") == "__mp_main__":  # a worker importing the script
        raise FrameworkError(f"framework.sweep was called by a worker process importing the script: {MAIN_GUARD}")
    base = [*([f"task={task}"] if task is not None else []), *overrides]
    job_overrides = [[*base, *job] for job in grid(settings)]
    jobs = min(jobs or os.cpu_count() or 1, len(job_overrides))  # the runs train with one thread: one per core
    for job in job_overrides:  # every job's mistakes, before anything starts
        composed(job)
    config = composed(job_overrides[0])
    if not config["tracking"]["enabled"]:
        return SweepResult(run_jobs(job_overrides, jobs, None), None, None, None)
    from framework.tracking.sweep import open_parent, summarise

    sweep_id = uuid.uuid4().hex
    uri = resolve_uri(config["tracking"]["uri"], Path.cwd())
    name = experiment or config["tracking"]["experiment"] or config["task"]["name"]
    command = shlex.join(["framework.sweep", *base, *as_overrides(settings)])
    parent = open_parent(
        uri, name, sweep_id, command, command, [*base, *as_overrides(settings)], {"jobs": job_overrides}
    )
    completed = False
    try:
        outcomes = run_jobs(job_overrides, jobs, sweep_id)
        completed = True
    finally:
        summarise(parent, completed)
    return SweepResult(outcomes, parent.run_id, parent.experiment_id, uri)
