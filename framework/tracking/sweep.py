"""A sweep in MLflow: one parent run per ``--multirun``, a child run per job, a summary at the end.

A Hydra callback (``hydra.callbacks.sweep`` in conf/config.yaml) opens, when a
multirun starts, a parent run in the experiment of each task the sweep covers
(usually one), all tagged with a fresh sweep id. The id reaches every job
through ``hydra.job.env_set``, which Hydra applies inside the job wherever it
runs (this process, a joblib worker, a Ray worker, a SLURM node); the job's
tracker finds its experiment's parent by that tag and nests its run under it.

When the sweep ends, however it ends, each parent receives the summary: a
table of its children (status, the parameters that vary, final metrics), the
number of jobs per status, and the best child for the objective the children
report (``objective.*``). The parent is FINISHED when the sweep completed and
every child finished, KILLED when a child was interrupted, FAILED otherwise.

A sweep can also ask its parent to plot final metrics of the children against
one swept parameter (``hydra.callbacks.sweep.plot``, see :class:`SweepPlot`):
for each value of x (and of an optional line parameter), the mean, spread and
extremes of each metric over the finished children that share them (e.g. the
seeds), as the table ``tables/by_<x>.json`` and a figure per metric.
"""

from __future__ import annotations

import atexit
import logging
import math
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from framework.core.composition import describe
from framework.core.errors import (
    ConfigError,
    FrameworkError,
    TrackingError,
    described,
    fail,
    one_line,
)
from framework.core.verdict import STEPS_TO_RESULT
from framework.tracking.store import (
    DIRECTION_TAG,
    OBJECTIVE_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_ENV,
    SWEEP_TAG,
    VERDICT_TAG,
    connect,
    pages,
    resolve_uri,
)

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")
TIED_NAMED = 3  # the runs tied for the best that the summary names


@dataclass
class Parent:
    """A sweep's parent run in one experiment."""

    client: Any
    experiment_id: str
    run_id: str


def swept_values(overrides: Sequence[str], key: str) -> list[str] | None:
    """The values the command-line overrides give ``key`` (several for a sweep), None if not overridden."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group == key:
            if override.is_sweep_override():
                return [str(value) for value in override.sweep_string_iterator()]
            return [override.get_value_element_as_str()]
    return None


def sweep_experiments(config: DictConfig) -> list[str]:
    """The experiments the sweep's jobs record into: one parent run goes into each.

    ``tracking.experiment`` if set (or swept), else the task's name, one per task swept.
    """
    overrides = list(config.hydra.overrides.task)
    names = (
        swept_values(overrides, "tracking.experiment")
        or ([config.tracking.experiment] if config.tracking.experiment else None)
        or swept_values(overrides, "task")
        or [config.hydra.runtime.choices.task]
    )
    return list(dict.fromkeys(names))


def first_job(overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep's first job: each discrete sweep (``a=1,2``, ``range(3)``, ``choice(...)``)
    at its first value; the other sweeps (intervals, a sweeper's own) left to their defaults."""
    job = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            job.append(override.input_line)
        elif override.is_discrete_sweep():
            job.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
    return job


def check_first_job(config: DictConfig) -> None:
    """Compose and build the sweep's first job (nothing trains, nothing is recorded), so that a config
    no job can run (an unknown key, a bad value common to all) is refused before anything starts.

    Raises what :func:`framework.core.engine.build` raises, or Hydra's composition errors.
    """
    from hydra import compose

    from framework.core import engine, plugins

    job = compose(config_name=config.hydra.job.config_name, overrides=first_job(config.hydra.overrides.task))
    engine.build(job, plugins.manager())


def children_of(parent: Parent) -> list[Any]:
    """Every run nested under ``parent``, oldest first."""
    return list(
        pages(
            lambda page_token: parent.client.search_runs(
                [parent.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'",
                order_by=["attribute.start_time ASC"],
                max_results=1000,
                page_token=page_token,
            )
        )
    )


def varying_params(children: Sequence[Any]) -> list[str]:
    """The parameter keys whose values differ between the children, sorted (run names aside): what the sweep swept,
    and what follows from it (a recipe's settings)."""
    keys = {key for child in children for key in child.data.params} - {"tracking.run_name"}
    return sorted(k for k in keys if len({child.data.params.get(k) for child in children}) > 1)


def objective_of(children: Sequence[Any]) -> tuple[str, str] | None:
    """The objective metric and direction the finished children report; None if they disagree (several tasks)."""
    finished = [c for c in children if c.info.status == "FINISHED"]
    objectives = {(c.data.tags.get(OBJECTIVE_TAG), c.data.tags.get(DIRECTION_TAG)) for c in finished}
    return next(iter(objectives)) if len(objectives) == 1 else None


def best_children(children: Sequence[Any]) -> tuple[list[Any], str] | None:
    """The finished children with the best objective (several when tied), the one that reached the tutorial's result
    in the fewest steps (``steps_to_result``) first, then by run name, so that the first is the same whichever
    finished first; and the objective's name. None without a common objective or a score."""
    objective = objective_of(children)
    if objective is None:
        return None
    metric, direction = objective
    scored = [
        c for c in children if c.info.status == "FINISHED" and math.isfinite(c.data.metrics.get(metric, math.nan))
    ]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    best = pick(c.data.metrics[metric] for c in scored)
    tied = [c for c in scored if c.data.metrics[metric] == best]
    return sorted(tied, key=lambda c: (c.data.metrics.get(STEPS_TO_RESULT, math.inf), c.info.run_name or "")), metric


def summary_table(children: Sequence[Any]) -> dict[str, list[Any]]:
    """One row per child, its answer first: run name, the swept values, the objective and the verdict; then its status,
    id and every other final metric. A column no job set is left out."""
    objective = objective_of(children)
    first = [objective[0]] if objective else []
    metrics = first + sorted({key for child in children for key in child.data.metrics} - set(first))
    columns = {
        "run_name": [c.info.run_name for c in children],
        **{key: [c.data.params.get(key) for c in children] for key in varying_params(children)},
        **{key: [c.data.metrics.get(key) for c in children] for key in first},
        "verdict": [c.data.tags.get(VERDICT_TAG) for c in children],
        "status": [c.info.status for c in children],
        "run_id": [c.info.run_id for c in children],
        **{key: [c.data.metrics.get(key) for c in children] for key in metrics[len(first) :]},
    }
    return {key: values for key, values in columns.items() if any(value is not None for value in values)}


def parent_status(counts: Counter, completed: bool) -> str:
    """FINISHED if the sweep completed and every child finished; KILLED if a child was interrupted; else FAILED."""
    if counts["KILLED"]:
        return "KILLED"
    if completed and counts and counts["FINISHED"] == sum(counts.values()):
        return "FINISHED"
    return "FAILED"


@dataclass(frozen=True)
class SweepPlot:
    """Final metrics of a sweep's children against the swept parameter ``x``, one line per value of ``lines``.

    Configured as ``hydra.callbacks.sweep.plot`` (params as the children record them, e.g.
    ``dataset.echo_step``, ``cell.name``)::

        plot: {x: dataset.echo_step, lines: cell.name, metrics: [accuracy, grad_flow_ratio]}
    """

    x: str
    metrics: tuple[str, ...]
    lines: str | None = None

    @classmethod
    def parse(cls, node: Mapping[str, Any] | None) -> SweepPlot | None:
        """The plot a ``plot`` node asks for (None: no plot); a malformed node raises :class:`ConfigError`."""
        if node is None:
            return None
        key = "hydra.callbacks.sweep.plot"
        if not isinstance(node, Mapping) or set(node) - {"x", "lines", "metrics"}:
            raise ConfigError(key, node, "a mapping with keys x, metrics and optionally lines")
        metrics = node.get("metrics")
        if isinstance(metrics, str) or not isinstance(metrics, Sequence) or not metrics:
            raise ConfigError(f"{key}.metrics", metrics, "a non-empty list of final metrics of the jobs")
        x, lines = node.get("x"), node.get("lines")
        for name, value in (("x", x), ("lines", lines)):
            if not isinstance(value, str) and not (name == "lines" and value is None):
                raise ConfigError(f"{key}.{name}", value, "a parameter the jobs record, e.g. seed or cell.name")
        return cls(x, tuple(map(str, metrics)), lines)

    @property
    def name(self) -> str:
        """The x parameter's last part, for file names: dataset.echo_step -> echo_step."""
        return self.x.rsplit(".", 1)[-1]


def positions(values: set[str]) -> dict[str, float]:
    """Where parameter values go on an axis: at their number if every value is one, else 0, 1, ... in text order."""
    try:
        return {value: float(value) for value in values}
    except ValueError:
        return {value: float(i) for i, value in enumerate(sorted(values))}


def ordered(values: set[str]) -> list[str]:
    """Parameter values in the order of their :func:`positions`."""
    return sorted(values, key=positions(values).__getitem__)


def plot_table(children: Sequence[Any], plot: SweepPlot) -> dict[str, list[Any]]:
    """One row per (line, x) of the finished children: their number and, for each metric m over them,
    m_mean = (1/n) sum_i m_i, m_std = sqrt((1/n) sum_i (m_i - m_mean)^2), m_min, m_max (None: no value)."""
    finished = [c for c in children if c.info.status == "FINISHED" and plot.x in c.data.params]
    line_of = {c.info.run_id: c.data.params.get(plot.lines, "") if plot.lines else "" for c in finished}
    table: dict[str, list[Any]] = {plot.lines: []} if plot.lines else {}
    table.update({plot.x: [], "runs": []})
    for line in ordered(set(line_of.values())):
        runs = [c for c in finished if line_of[c.info.run_id] == line]
        for x in ordered({c.data.params[plot.x] for c in runs}):
            group = [c for c in runs if c.data.params[plot.x] == x]
            if plot.lines:
                table[plot.lines].append(line)
            table[plot.x].append(x)
            table["runs"].append(len(group))
            for metric in plot.metrics:
                values = np.array([c.data.metrics.get(metric, math.nan) for c in group], dtype=float)
                values = values[np.isfinite(values)]
                stats = (values.mean(), values.std(), values.min(), values.max()) if len(values) else (None,) * 4
                for stat, value in zip(("mean", "std", "min", "max"), stats, strict=True):
                    table.setdefault(f"{metric}_{stat}", []).append(None if value is None else float(value))
    return table


def plot_figure(table: dict[str, list[Any]], plot: SweepPlot, metric: str):
    """``metric`` against x: per line the mean over its runs (markers) and the band from min to max.

    The y axis is logarithmic when every value is > 0 and they span more than two decades.
    """
    from matplotlib.figure import Figure

    at = positions(set(table[plot.x]))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    lines = table[plot.lines] if plot.lines else [""] * len(table[plot.x])
    for line in dict.fromkeys(lines):
        rows = [i for i, name in enumerate(lines) if name == line and table[f"{metric}_mean"][i] is not None]
        if rows:
            xs = [at[table[plot.x][i]] for i in rows]
            mean, low, high = ([table[f"{metric}_{s}"][i] for i in rows] for s in ("mean", "min", "max"))
            (drawn,) = ax.plot(xs, mean, "o-", label=line or None)
            ax.fill_between(xs, low, high, color=drawn.get_color(), alpha=0.2, lw=0)
    values = [v for s in ("min", "max") for v in table[f"{metric}_{s}"] if v is not None]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xticks(list(at.values()), list(at))
    runs = sorted(set(table["runs"]))
    each = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]}"
    ax.set(xlabel=plot.x, ylabel=metric, title=f"final {metric}: mean over {each} runs each, band from min to max")
    if plot.lines:
        ax.legend(title=plot.lines)
    return figure


def log_plots(client: Any, run_id: str, children: Sequence[Any], plot: SweepPlot) -> None:
    """The plot's table and one figure per metric into the parent run (nothing without a finished child)."""
    table = plot_table(children, plot)
    if not table[plot.x]:
        log.warning("sweep %s: no finished job records %s, so there is nothing to plot", run_id, plot.x)
        return
    client.log_table(run_id, table, f"tables/by_{plot.name}.json")
    for metric in plot.metrics:
        client.log_figure(run_id, plot_figure(table, plot, metric), f"figures/{metric}_by_{plot.name}.png")


def follows(children: Sequence[Any], key: str, other: str) -> bool:
    """Whether the value of ``key`` follows from that of ``other`` in every child (a recipe's setting from the swept
    cell or optimizer), and ``other`` takes more values, or as many and leads: a component's ``.name``, else the
    shorter key."""
    values: dict[str | None, str | None] = {}
    for child in children:
        lead, value = child.data.params.get(other), child.data.params.get(key)
        if values.setdefault(lead, value) != value:
            return False
    led = {child.data.params.get(key) for child in children}
    return len(values) > len(led) or (len(values) == len(led) and precedence(other) < precedence(key))


def precedence(key: str) -> tuple[bool, int, str]:
    """The order in which of two keys that follow from each other the first leads: a component's choice
    (``cell.name``), then the shorter key."""
    return not key.endswith(".name"), key.count("."), key


def swept(children: Sequence[Any], drawn: Sequence[str] = ()) -> list[str]:
    """The parameters a sweep's objective is drawn against: those that vary, but the seed (its spread is the band),
    the run names, the keys in ``drawn`` (a plot of the sweep has them) and those that follow from another (the
    settings a swept component's recipe brings)."""
    keys = [key for key in varying_params(children) if key != "seed"]
    return [
        key
        for key in keys
        if key not in drawn and not any(follows(children, key, other) for other in keys if other != key)
    ]


def objective_figure(children: Sequence[Any], key: str, metric: str):
    """The objective of the finished children against the values of ``key``: per value the median over its runs (the
    seeds, and any other swept value) and the band from the smallest to the largest."""
    from matplotlib.figure import Figure

    finished = [c for c in children if c.info.status == "FINISHED" and metric in c.data.metrics]
    values = {c.data.params.get(key) for c in finished} - {None}
    at = positions(values)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    xs, median, low, high, runs = [], [], [], [], []
    for value in ordered(values):
        scores = [c.data.metrics[metric] for c in finished if c.data.params.get(key) == value]
        xs.append(at[value])
        median.append(float(np.median(scores)))
        low.append(min(scores))
        high.append(max(scores))
        runs.append(len(scores))
    (line,) = ax.plot(xs, median, "o-", label="median")
    ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0, label="min to max")
    ax.set_xticks(xs, [str(v) for v in ordered(values)], rotation=30 if len(xs) > 6 else 0)
    each = f"{min(runs)}" if min(runs) == max(runs) else f"{min(runs)}-{max(runs)}"
    ax.set(xlabel=key, ylabel=metric, title=f"final {metric} by {key}: median and range over {each} runs each")
    ax.legend()
    return figure


def log_objective_figures(client: Any, run_id: str, children: Sequence[Any], plot: SweepPlot | None = None) -> None:
    """One figure of the objective against each swept parameter into the parent run: ``figures/<metric>_by_<key>.png``
    (nothing without a common objective; not against the keys of a ``plot`` of the objective, which draws them)."""
    objective = objective_of(children)
    if objective is None:
        return
    metric = objective[0]
    drawn = (plot.x, *([plot.lines] if plot.lines else [])) if plot is not None and metric in plot.metrics else ()
    for key in swept(children, drawn):
        client.log_figure(run_id, objective_figure(children, key, metric), f"figures/{metric}_by_{key}.png")


def tied_note(names: Sequence[str]) -> str:
    """``, tied with N: a, b, c and M more``: the first :data:`TIED_NAMED` runs tied for the best (the parent's tag
    ``best_runs_tied`` lists them all)."""
    more = f" and {len(names) - TIED_NAMED} more" if len(names) > TIED_NAMED else ""
    return f", tied with {len(names)}: {', '.join(names[:TIED_NAMED])}{more}"


def summarise(parent: Parent, completed: bool, plot: SweepPlot | None = None) -> None:
    """Write the sweep's summary into its parent run and end it."""
    from mlflow.entities import Metric, Param

    client, run_id = parent.client, parent.run_id
    children = children_of(parent)
    counts = Counter(child.info.status for child in children)
    note = f"{len(children)} jobs" + "".join(f", {counts[s]} {s}" for s in STATUSES if counts[s])
    if not completed:
        note += "; the sweep did not complete (a job failed, or it was interrupted)"
    metrics = [Metric(f"jobs_{s.lower()}", counts[s], 0, 0) for s in STATUSES]
    params, tags = [], {}
    best = best_children(children)
    if best is not None:
        (child, *tied), metric = best
        note += f". Best: {child.info.run_name} ({metric}={child.data.metrics[metric]:.6g})"
        if tied:
            note += tied_note([c.info.run_name for c in tied])
            tags["best_runs_tied"] = ", ".join(c.info.run_id for c in tied)
        metrics.append(Metric(f"best_{metric}", child.data.metrics[metric], 0, 0))
        varying = {key: child.data.params.get(key) for key in varying_params(children)}
        params = [Param(f"best.{key}", value) for key, value in varying.items() if value is not None]
        tags.update(best_run_id=child.info.run_id, best_run_name=child.info.run_name, **{OBJECTIVE_TAG: metric})
    tags["mlflow.note.content"] = note
    client.log_batch(run_id, metrics=metrics, params=params, synchronous=True)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if children:
        client.log_table(run_id, summary_table(children), "summary.json")
        try:
            log_objective_figures(client, run_id, children, plot)
        except Exception as error:  # the summary stands without the figures; the run must still end
            log.error("could not draw the objective of sweep run %s: %s", run_id, one_line(error))
    if children and plot is not None:
        try:
            log_plots(client, run_id, children, plot)
        except Exception as error:  # the summary stands without the plots; the run must still end
            log.error("could not plot sweep run %s: %s", run_id, one_line(error))
    client.set_terminated(run_id, parent_status(counts, completed))
    log.info("sweep %s: %s", run_id, note)


def open_parent(
    uri: str,
    experiment: str,
    sweep_id: str,
    command: str,
    name: str,
    params: Sequence[str],
    description: Mapping[str, Any],
    folder: str | None = None,
) -> Parent:
    """Create a sweep's parent run in ``experiment``: tagged with the sweep's id and ``command``, named ``name``, its
    ``params`` (overrides) as params and ``description`` as sweep.yaml; ``folder``: where its jobs' outputs go."""
    from mlflow.entities import Param

    client, experiment_id = connect(uri, experiment)
    tags = {SWEEP_TAG: sweep_id, ROLE_TAG: "sweep", "command": command}
    if folder is not None:
        tags["framework.sweep_dir"] = folder
    run_id = client.create_run(experiment_id, tags=tags, run_name=name[:200]).info.run_id
    pairs = (override.partition("=") for override in params)
    client.log_batch(
        run_id, params=[Param(key.lstrip("+~"), value[:6000]) for key, _, value in pairs], synchronous=True
    )
    client.log_text(run_id, yaml.safe_dump(dict(description), sort_keys=False), "sweep.yaml")
    return Parent(client, experiment_id, run_id)


class SweepRecorder(Callback):
    """Hydra callback: the parent run(s) of a multirun, and their summary when it ends."""

    def __init__(self, plot: Mapping[str, Any] | None = None) -> None:
        self.parents: list[Parent] = []
        self.plot_node = plot  # checked when the sweep starts, where a bad value can end it in one line
        self.plot: SweepPlot | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.plot = SweepPlot.parse(self.plot_node)
            check_first_job(config)
        except FrameworkError as error:
            fail(error, error.exit_code)
        except CompactHydraException as error:  # Hydra would only warn about a callback's exception
            fail(describe(error), 2)
        if not config.tracking.enabled:
            return
        sweep_id = uuid.uuid4().hex
        uri = resolve_uri(config.tracking.uri, Path(config.hydra.runtime.cwd))
        atexit.register(self.close, completed=False)  # a sweep that raises or is interrupted is summarised too
        overrides = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]
        described_sweep = {
            "overrides": list(config.hydra.overrides.task),
            "hydra_overrides": list(config.hydra.overrides.hydra),
            "sweeper": OmegaConf.to_container(config.hydra.sweeper),
            "launcher": OmegaConf.to_container(config.hydra.launcher),
        }
        try:
            for experiment in sweep_experiments(config):
                parent = open_parent(
                    uri,
                    experiment,
                    sweep_id,
                    command=" ".join(["python", "-m", "framework", "--multirun", *overrides]),
                    name=" ".join(["sweep", *config.hydra.overrides.task]),
                    params=overrides,
                    description=described_sweep,
                    folder=config.hydra.sweep.dir,
                )
                self.parents.append(parent)
        except TrackingError as error:
            fail(error, 1)
        except Exception as error:
            fail(f"cannot open the sweep's run in {uri}: {described(error)}", 1)
        with read_write(config.hydra.overrides.hydra):
            config.hydra.overrides.hydra.append(f"++hydra.job.env_set.{SWEEP_ENV}={sweep_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self.close)
        self.close(completed=True)

    def close(self, completed: bool) -> None:
        """Summarise and end every parent run still open."""
        parents, self.parents = self.parents, []
        for parent in parents:
            try:
                summarise(parent, completed, self.plot)
            except Exception as error:  # the jobs' own records are intact; say what is missing
                log.error("could not write the summary of sweep run %s: %s", parent.run_id, one_line(error))
