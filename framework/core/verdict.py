"""Whether a run learned: the tutorial's result, whether and when the run reached it, and what to try if not.

A task states its reference result (``Task.reference``: the result in words and a test of an evaluation's
metrics). The engine checks every evaluation; the run's verdict is whether the final evaluation reaches
it, and the first evaluation that did (its step and the seconds of training until then). When a run did
not, the verdict says what to try: the component's tuned recipe (a :class:`~framework.core.registry.Pairing`),
the task's reference recipe, or why the chosen component cannot reach it at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framework.core.protocols import Reference
from framework.core.registry import PAIRED_KINDS, Component, Registry

REACHED, NOT_REACHED, NO_REFERENCE = "reached", "not reached", "no reference"
STEPS_TO_RESULT = "steps_to_result"  # the metric: the step of the first evaluation that met the reference


@dataclass
class Tracker:
    """Follows a run's evaluations: the first step (and training seconds) at which its reference was reached.

    Its clock counts the seconds of training, a resumed run's from where its checkpoint left them
    (:meth:`state`, :meth:`restore`).
    """

    reference: Reference | None
    step: int | None = None
    seconds: float | None = None
    trained: float = 0.0  # seconds of training before the clock last started (a resumed run's, from its checkpoint)
    origin: float | None = None  # perf_counter() - trained when training started in this process

    def start(self) -> None:
        """Start the training clock, going on from the seconds already trained."""
        self.origin = time.perf_counter() - self.trained

    def elapsed(self) -> float:
        """The seconds of training so far."""
        return self.trained if self.origin is None else time.perf_counter() - self.origin

    def evaluated(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Note an evaluation after ``step`` updates; whether it reaches the reference."""
        reached = self.reference is not None and reaches(self.reference, metrics)
        if reached and self.step is None:
            self.step, self.seconds = step, self.elapsed()
        return reached

    def state(self) -> dict[str, float | None]:
        """What a checkpoint keeps: the first step that reached the reference, its seconds, the seconds trained."""
        return {"step": self.step, "seconds": self.seconds, "trained": self.elapsed()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Go on from :meth:`state`'s output."""
        self.step, self.seconds, self.trained, self.origin = state["step"], state["seconds"], state["trained"], None


def reaches(reference: Reference, metrics: Mapping[str, float]) -> bool:
    """Whether ``metrics`` reach the reference (a metric it needs that is missing does not)."""
    try:
        return bool(reference.reached(metrics))
    except KeyError:
        return False


@dataclass(frozen=True)
class Verdict:
    """Whether the run reached its task's reference result, when, and what to try if it did not."""

    status: str  # REACHED, NOT_REACHED or NO_REFERENCE
    reference: str  # the result in words
    step: int | None = None  # the first evaluation that reached it
    seconds: float | None = None  # the seconds of training until then
    advice: str = ""  # what to try, when not reached

    def line(self) -> str:
        """One line for the end of the run."""
        if self.status == NO_REFERENCE:
            return "the task states no reference result to compare with"
        if self.status == REACHED:
            return f"reached the tutorial's result ({self.reference}) at step {self.step} ({self.seconds:.2f} s)"
        return f"did NOT reach the tutorial's result ({self.reference}): {self.advice}"

    def metrics(self) -> dict[str, float]:
        """The verdict as metrics of the final evaluation: reached (1 or 0), and at which step (its seconds, which no
        two runs share, are only in the verdict: the metrics of a config and seed are the same every time)."""
        if self.status == NO_REFERENCE:
            return {}
        found = {"reached": float(self.status == REACHED)}
        if self.status == REACHED:
            found[STEPS_TO_RESULT] = float(self.step)
        return found


def verdict(follow: Tracker, final: Mapping[str, float], advice: str) -> Verdict:
    """The verdict of a run whose evaluations ``follow`` followed and whose final metrics are ``final`` (which must
    reach the reference too: a run that reached it and lost it again did not)."""
    if follow.reference is None:
        return Verdict(NO_REFERENCE, "")
    if follow.step is not None and reaches(follow.reference, final):
        return Verdict(REACHED, follow.reference.text, follow.step, follow.seconds)
    return Verdict(NOT_REACHED, follow.reference.text, advice=advice)


def advise(task: Component, chosen: Mapping[str, str], overrides: Sequence[str], registry: Registry) -> str:
    """What to try when a run of ``task`` with the ``chosen`` components (kind -> name) and the command line
    ``overrides`` does not reach the task's result."""
    reference = task.recipe.choices()
    changed = [kind for kind in PAIRED_KINDS if chosen[kind] != reference[kind][0]]
    plain = f"python -m framework task={task.name}"
    for kind in changed:
        pairing = registry.pairing(task.name, kind, chosen[kind])
        if pairing is not None and pairing.unreachable:
            why = pairing.unreachable
            return f"{kind}={chosen[kind]} cannot reach it on {task.name}: {why}; the reference: {plain}"
    for kind in changed:
        if registry.pairing(task.name, kind, chosen[kind]) is None:
            return (
                f"no tuned recipe exists for {kind}={chosen[kind]} on {task.name} (it ran with the component's "
                f"defaults and the task's reference regime); the reference recipe: {plain}"
            )
    own = {f"{kind}={chosen[kind]}" for kind in changed}
    extra = [
        o
        for o in overrides
        if o.lstrip("+~") not in own and key_of(o) not in ("task", "seed", *TRACKING) and full_key(o) not in HOW
    ]
    pairing = " ".join([plain, *sorted(own)])
    recipe = "tuned recipe" if own else "reference recipe"
    if extra:
        return f"try the {recipe} without your other settings ({' '.join(extra)}): {pairing}"
    return f"the {recipe} ({pairing}) did not reach it with this seed: try another seed, or more steps"


TRACKING = ("tracking", "hydra", "model", "diagnostics", "objective", "threads")  # settings that change no number
HOW = ("cell.kernel",)  # options that change how a step is computed, not what it learns (to rounding)


def full_key(override: str) -> str:
    """The key an override sets: ``optim.lr=0.1`` -> ``optim.lr``."""
    return override.lstrip("+~").split("=", 1)[0]


def key_of(override: str) -> str:
    """The top-level key an override sets: ``optim.lr=0.1`` -> ``optim``."""
    return full_key(override).split(".", 1)[0]


def run_name(task: str, overrides: Sequence[str]) -> str:
    """A run's name: its task and what the command line changed from the task's recipe, e.g. ``adder optim=rprop``,
    ``charlm cell=lstm seed=3``; where it is recorded and what changes no number are left out."""
    changed = [o for o in overrides if key_of(o) not in ("task", *TRACKING)]
    return " ".join([task, *changed])


def reference_of(task: Any) -> Reference | None:
    """The task's reference result, if it states one."""
    return getattr(task, "reference", None)
