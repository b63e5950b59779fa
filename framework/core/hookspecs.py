"""The plugin contract: every hook the engine calls, in one place.

A plugin is any module or object with functions marked ``@hookimpl`` whose
names match these specs (pluggy checks the names and arguments when the
plugin is registered). Built-in components, the tutorial tasks and third-party
packages all plug in through these hooks alone.

Registration hooks receive a ``register`` callable::

    register(name, factory, config_class)          # cells, losses, optimizers, datasets
    register(name, factory, config_class, recipe)  # tasks

``config_class`` is a dataclass of the component's options (made with
:func:`framework.core.config.param`); registering it also makes ``<group>=<name>``
a Hydra option, so a plugin's component is selectable from the command line.
The factories are called as:

- cell:    ``factory(config, input_size, hidden_size, rng, dtype) -> Cell``
- loss:    ``factory(config) -> Loss``
- optim:   ``factory(config) -> Optimizer``
- dataset: ``factory(config, rng, dtype) -> Dataset``
- task:    ``factory(config, parts: Parts) -> Task``

(see :mod:`framework.core.protocols` for the interfaces they return).

A hook implementation or a component that raises during a run fails the run:
it is recorded FAILED, and the command line names the plugin and the function
in one line, with the traceback saved in the run's output folder. A plugin
that fails to import is skipped with a warning (:mod:`framework.core.plugins`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pluggy

from framework.core.protocols import Evaluation, RunInfo, Task
from framework.core.registry import Register

PROJECT = "framework"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# registration: called once per plugin when it is loaded
# ---------------------------------------------------------------------------


@hookspec
def framework_register_cells(register: Register) -> None:
    """Register recurrent cells (Hydra group ``cell``)."""


@hookspec
def framework_register_losses(register: Register) -> None:
    """Register losses (Hydra group ``loss``)."""


@hookspec
def framework_register_optimizers(register: Register) -> None:
    """Register optimizers (Hydra group ``optim``)."""


@hookspec
def framework_register_datasets(register: Register) -> None:
    """Register datasets (Hydra group ``dataset``)."""


@hookspec
def framework_register_tasks(register: Register) -> None:
    """Register tasks (Hydra group ``task``), each with its reference recipe."""


# ---------------------------------------------------------------------------
# run events: called by the engine, implemented by observers (tracking, progress)
# ---------------------------------------------------------------------------


@hookspec
def framework_run_started(run: RunInfo) -> None:
    """A run is about to train: every component is built and valid.

    An observer that raises here stops the run before its first step.
    """


@hookspec
def framework_metrics_block(run: RunInfo, block: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    """The metrics of a block of consecutive optimizer updates, in order: ``(step, metrics)`` for each, ``step``
    0-based, ``metrics`` ``loss`` and more.

    Every update's metrics come in exactly one block. A block ends at least every 0.1 s of training, before each
    evaluation and checkpoint, and when training stops for any reason (its end, an early stop, Ctrl-C, a
    divergence, an exception): an observer has seen every update done when the next event reaches it. The
    tracker and the progress bar use this hook; one call per block costs next to nothing, where a call per
    update cost up to a fifth of the smallest tutorials' training step.
    """


@hookspec
def framework_metrics(run: RunInfo, step: int, metrics: Mapping[str, float]) -> None:
    """The metrics of optimizer update ``step`` (0-based): ``loss`` and more; called as soon as the update is done.

    For an observer that must act at a given update (stop, wait, check); an observer that only reads the metrics
    takes them in blocks (``framework_metrics_block``): while no plugin implements this hook, the engine does not
    call it at all.
    """


@hookspec
def framework_evaluation(run: RunInfo, step: int, evaluation: Evaluation, final: bool) -> None:
    """The task was evaluated after ``step`` updates: metrics, sampled outputs, figures (drawn by whoever asks for
    them, here: :meth:`Evaluation.drawn_figures`)."""


@hookspec
def framework_checkpoint(run: RunInfo, step: int, path: Path) -> None:
    """A checkpoint of the run after ``step`` updates was written to ``path`` (see framework.checkpoint)."""


@hookspec
def framework_trained(run: RunInfo, task: Task, step: int) -> None:
    """Training finished after ``step`` updates; ``task.model.params`` are the trained weights.

    Called once, before ``framework_run_ended`` with FINISHED, so an observer can
    save the trained network (the MLflow model); an observer that raises fails the run.
    """


@hookspec
def framework_run_ended(run: RunInfo, status: str, error: str | None) -> None:
    """The run ended: ``status`` is FINISHED, FAILED or KILLED; ``error`` says why if not finished."""
