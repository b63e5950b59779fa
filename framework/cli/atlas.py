"""The atlas: every tutorial with every optimizer and every cell, on several seeds, and whether each reaches the result.

    python -m framework atlas                  # seeds 0-2, two runs at a time; writes docs/atlas.md and atlas.png
    python -m framework atlas --seeds 10 --jobs 2 --output docs

For every task that states its reference result, the matrix holds its reference recipe and every optimizer and
cell that has a recipe for it (a :class:`~framework.core.registry.Pairing`: ``task=T optim=O`` with no other
override); a pairing known to be unreachable is listed with the reason and not run. Every run is recorded in
the experiment ``atlas`` as a child of one parent run, which gets the table and the heatmap too; the page
``<output>/atlas.md`` and its picture ``atlas.png`` are written from the same numbers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.cli import host
from framework.cli.api import Job, composed, run_jobs
from framework.core.errors import FrameworkError, print_error
from framework.core.registry import PAIRED_KINDS, Registry
from framework.core.verdict import STEPS_TO_RESULT, reference_of
from framework.tracking.store import resolve_uri

EXPERIMENT = "atlas"
PICTURE = "atlas.png"


@dataclass
class Row:
    """One pairing of the atlas: a task and what changes from its reference recipe (nothing: the reference)."""

    task: str
    change: str  # "optim=adam", "cell=lstm", or "" for the reference recipe
    recipe: str  # the settings its recipe adds, or why it cannot reach the result, or that it has no recipe
    runnable: bool
    jobs: list[Job] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.change or "reference"


def rows_of(registry: Registry) -> list[Row]:
    """Every pairing of the atlas, task by task: the reference, then each optimizer, then each cell."""
    rows = []
    for task in registry.of_kind("task"):
        if reference_of(task.factory) is None:  # a worked example, not a training tutorial
            continue
        choices = task.recipe.choices()
        reference = " ".join(f"{kind}={choices[kind][0]}" for kind in PAIRED_KINDS)
        rows.append(Row(task.name, "", f"the tutorial's: {reference}", True))
        for kind in PAIRED_KINDS:
            for component in registry.of_kind(kind):
                if component.name == choices[kind][0]:
                    continue
                pairing = registry.pairing(task.name, kind, component.name)
                change = f"{kind}={component.name}"
                if pairing is None:  # e.g. the counting tutorial's linear cell elsewhere: not part of the atlas
                    continue
                if pairing.unreachable:
                    rows.append(Row(task.name, change, f"cannot: {pairing.unreachable}", False))
                else:
                    settings = " ".join(f"{k}={v}" for k, v in pairing.settings.items())
                    rows.append(Row(task.name, change, settings, True))
    return rows


def job_overrides(row: Row, seed: int) -> list[str]:
    """The command line of one run of ``row``: its task, its change, the seed, recorded in the atlas's experiment."""
    change = [row.change] if row.change else []
    return [f"task={row.task}", *change, f"seed={seed}", f"tracking.experiment={EXPERIMENT}"]


def reached(row: Row) -> list[Any]:
    """The results of ``row``'s runs that reached the task's result."""
    return [job.result for job in row.jobs if job.result is not None and job.result.metrics.get("reached") == 1.0]


def spread(values: Sequence[float], digits: str = ".4g") -> str:
    """``median [min, max]`` of ``values``; ``–`` for none."""
    if not values:
        return "–"
    return f"{statistics.median(values):{digits}} [{min(values):{digits}}, {max(values):{digits}}]"


def table(rows: Sequence[Row], objectives: dict[str, str]) -> dict[str, list[Any]]:
    """The atlas as columns: per pairing, seeds that reached the result, the objective, steps and seconds to it."""
    columns: dict[str, list[Any]] = {key: [] for key in (
        "task", "change", "reached", "objective", "final (median [min, max])", "steps to result (median)",
        "seconds to result (median)", "recipe",
    )}  # fmt: skip
    for row in rows:
        results = [job.result for job in row.jobs if job.result is not None]
        metric = objectives[row.task]
        columns["task"].append(row.task)
        columns["change"].append(row.label)
        columns["reached"].append(f"{len(reached(row))}/{len(row.jobs)}" if row.runnable else "–")
        columns["objective"].append(metric)
        columns["final (median [min, max])"].append(spread([r.metrics[metric] for r in results if metric in r.metrics]))
        steps = [r.metrics[STEPS_TO_RESULT] for r in reached(row)]
        seconds = [r.verdict.seconds for r in reached(row)]
        columns["steps to result (median)"].append(f"{statistics.median(steps):.0f}" if steps else "–")
        columns["seconds to result (median)"].append(f"{statistics.median(seconds):.2f}" if seconds else "–")
        columns["recipe"].append(row.recipe)
    return columns


def heatmap(rows: Sequence[Row]):
    """Tasks (rows) against what is changed (columns): the share of seeds that reached the result, with the median
    seconds to it written in; × a pairing that cannot, – one not in the atlas."""
    import numpy as np
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(row.task for row in rows))
    changes = list(dict.fromkeys(row.label for row in rows))
    share = np.full((len(tasks), len(changes)), np.nan)
    figure = Figure(figsize=(1.1 * len(changes) + 2, 0.7 * len(tasks) + 1.8), layout="constrained")
    ax = figure.subplots()
    for row in rows:
        i, j = tasks.index(row.task), changes.index(row.label)
        if not row.runnable:
            ax.text(j, i, "×", ha="center", va="center", fontsize=12)
            continue
        share[i, j] = len(reached(row)) / max(len(row.jobs), 1)
        seconds = [r.verdict.seconds for r in reached(row)]
        if seconds:
            ax.text(j, i, f"{statistics.median(seconds):.2g} s", ha="center", va="center", fontsize=7)
    image = ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(changes)), changes, rotation=35, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    figure.colorbar(image, ax=ax, label="share of seeds that reached the tutorial's result")
    ax.set_title("each tutorial with one thing changed: share of seeds that learned, median seconds to the result")
    return figure


def markdown(columns: dict[str, list[Any]], seeds: int, workers: int, seconds: float) -> str:
    """The page docs/atlas.md."""
    header = list(columns)
    lines = [
        "# The atlas: every tutorial with one thing changed",
        "",
        "Generated by `python -m framework atlas` (do not edit by hand): each task's reference recipe, and each",
        "optimizer and cell run with its tuned recipe for that task (`python -m framework task=<task> optim=<name>`,",
        "nothing else), on seeds 0 to "
        + f"{seeds - 1}. A run *reached* the result when its final evaluation meets the",
        "task's reference result (see the task's page); steps and seconds are those of training until the first",
        "evaluation that met it. `×`: the pairing cannot reach it (the reason is in the recipe column).",
        "",
        f"![The atlas as a heatmap]({PICTURE})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for i in range(len(columns["task"])):
        lines.append("| " + " | ".join(str(columns[key][i]).replace("|", "\\|") for key in header) + " |")
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines += [
        "",
        f"Measured {when} on {platform.platform()} ({os.cpu_count()} cores), {workers} runs at a time: the whole "
        f"matrix took {seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def atlas(seeds: int, workers: int, output: Path, tasks: Sequence[str] = ()) -> list[Row]:
    """Run the atlas (see the module docstring); its rows, with their jobs' outcomes."""
    pm = host.manager()
    rows = [row for row in rows_of(pm.registry) if not tasks or row.task in tasks]
    runnable = [row for row in rows if row.runnable]
    jobs = [job_overrides(row, seed) for row in runnable for seed in range(seeds)]
    config = composed(jobs[0])
    uri = resolve_uri(config["tracking"]["uri"], Path.cwd()) if config["tracking"]["enabled"] else None
    objectives = {task.name: task.factory.objective for task in pm.registry.of_kind("task")}
    sweep_id = uuid.uuid4().hex if uri else None
    parent = None
    if uri is not None:
        from framework.tracking.sweep import open_parent

        command = "python -m framework atlas " + f"--seeds {seeds} --jobs {workers}"
        parent = open_parent(uri, EXPERIMENT, sweep_id, command, "atlas", [f"seeds={seeds}"], {"jobs": jobs})
    started = time.perf_counter()
    completed = False
    try:
        outcomes = iter(run_jobs(jobs, workers, sweep_id))
        for row in runnable:
            row.jobs = [next(outcomes) for _ in range(seeds)]
        completed = True
    finally:
        if parent is not None:
            from framework.tracking.sweep import summarise

            summarise(parent, completed)
    columns = table(rows, objectives)
    picture = heatmap(rows)
    output.mkdir(parents=True, exist_ok=True)
    picture.savefig(output / PICTURE, dpi=110)
    (output / "atlas.md").write_text(markdown(columns, seeds, workers, time.perf_counter() - started))
    if parent is not None:
        parent.client.log_table(parent.run_id, columns, "atlas.json")
        parent.client.log_artifact(parent.run_id, str(output / PICTURE))
        parent.client.log_artifact(parent.run_id, str(output / "atlas.md"))
    return rows


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m framework atlas``."""
    command = argparse.ArgumentParser(
        prog="python -m framework atlas",
        description="Run every tutorial with every optimizer and cell that has a recipe for it, on several seeds, and "
        "write the table and heatmap of which reach the tutorial's result (docs/atlas.md).",
    )
    command.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every pairing (default 3)")
    command.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: the cores)")
    command.add_argument("--output", type=Path, default=Path("docs"), help="the folder of atlas.md (default docs)")
    command.add_argument("--task", action="append", default=[], help="only this task (repeatable)")
    return command


def main(argv: list[str]) -> int:
    """Entry point of ``python -m framework atlas ARGS...``; the exit code: 1 when a pairing missed its result."""
    args = parser().parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        print_error(f"--seeds {args.seeds} --jobs {args.jobs}: expected integers >= 1")
        return 2
    try:
        rows = atlas(args.seeds, args.jobs, args.output, args.task)
    except FrameworkError as error:
        print_error(error)
        return error.exit_code
    missed = [f"{row.task} {row.label}" for row in rows if row.runnable and len(reached(row)) < len(row.jobs)]
    print(f"wrote {args.output / 'atlas.md'} and {args.output / PICTURE}; ", end="")
    print("every pairing reached the result on every seed" if not missed else f"missed: {', '.join(missed)}")
    return 1 if missed else 0
