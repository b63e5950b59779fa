"""Bad configuration, through the real ``python -m framework`` in a subprocess.

Hypothesis generates, for every group, overrides with wrong types, out-of-range
values, unknown keys and unknown options; each must exit 2 with one line naming
the key and what is accepted, no traceback, and no MLflow run. A few mistakes
Hydra itself reports (parse errors, conflicting modes) are listed by hand.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_no_runs, clean_env, one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.core import plugins
from framework.core.composition import config_groups
from framework.core.config import describe
from framework.core.registry import KINDS
from framework.core.settings import Settings

REGISTRY = plugins.manager().registry
GROUPS = ("settings", *KINDS)
RESERVED = {"true", "false", "null", "nan", "inf"}  # words Hydra does not read as strings
words = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda w: w not in RESERVED)


@dataclass(frozen=True)
class Place:
    """Where an override lands: the options ``cls`` at ``prefix``, after the ``setup`` overrides choose them."""

    prefix: str
    cls: type
    setup: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # keys the node has besides the dataclass's fields

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass(frozen=True)
class Case:
    """A bad command line and the one line it must give."""

    args: tuple[str, ...]
    line: str
    listed: frozenset[str] = frozenset()  # for an unknown key: the keys its line must accept (any order)


def places(group: str) -> list[Place]:
    """Every options node of ``group``: the settings and their sub-groups, or each registered component's."""
    if group == "settings":
        roots = [Place("", Settings, extra=KINDS)]
    else:
        roots = [Place(group, c.config_class, (f"{group}={c.name}",), ("name",)) for c in REGISTRY.of_kind(group)]
    return [node for root in roots for node in nodes(root)]


def nodes(place: Place) -> Iterator[Place]:
    yield place
    hints = typing.get_type_hints(place.cls)
    for field in dataclasses.fields(place.cls):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from nodes(Place(place.key(field.name), hints[field.name], place.setup))


def leaves(place: Place) -> list[tuple[str, dataclasses.Field, Any]]:
    """(key, field, type) of every plain option of ``place``."""
    hints = typing.get_type_hints(place.cls)
    fields = dataclasses.fields(place.cls)
    return [
        (place.key(f.name), f, hints[f.name]) for f in fields if base_type(hints[f.name]) in (int, float, bool, str)
    ]


def base_type(kind: Any) -> Any:
    """``int`` for ``int | None``; the type itself otherwise."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def hydra_text(value: Any) -> str:
    """``value`` as a Hydra override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def wrong_values(kind: Any, field: dataclasses.Field) -> st.SearchStrategy:
    """Values of the wrong type for an option of type ``kind``."""
    containers = st.sampled_from([[1, 2], {"a": 1}])
    base = base_type(kind)
    if base is str:
        others = (
            words.filter(lambda w: w not in field.metadata["choices"]) if "choices" in field.metadata else st.nothing()
        )
        return st.one_of(others, st.integers(-5, 5), st.booleans(), containers)
    if base is bool:
        return st.one_of(words, st.integers(-5, 5), st.just(1.5), containers)
    non_integer = (
        st.integers(-20, 20).map(lambda n: n + 0.5) if base is int else st.sampled_from([math.inf, -math.inf, math.nan])
    )
    return st.one_of(words, st.booleans(), non_integer, containers)


def out_of_range(kind: Any, meta: dict[str, Any]) -> st.SearchStrategy:
    """Numbers of the option's type beyond one of its bounds."""
    steps = st.sampled_from([1, 2, 10, 1000]) if base_type(kind) is int else st.sampled_from([0.5, 1, 10, 1000])
    bounds = [
        *([steps.map(lambda d: meta["ge"] - d)] if "ge" in meta else []),
        *([st.one_of(st.just(meta["gt"]), steps.map(lambda d: meta["gt"] - d))] if "gt" in meta else []),
        *([steps.map(lambda d: meta["le"] + d)] if "le" in meta else []),
        *([st.one_of(st.just(meta["lt"]), steps.map(lambda d: meta["lt"] + d))] if "lt" in meta else []),
    ]
    return st.one_of(bounds)


@st.composite
def bad_value(draw: st.DrawFn, group: str) -> Case:
    """A wrong type or an out-of-range value for an option of ``group``."""
    place = draw(st.sampled_from([p for p in places(group) if leaves(p)]))
    key, field, kind = draw(st.sampled_from(leaves(place)))
    bounded = any(bound in field.metadata for bound in ("ge", "gt", "le", "lt"))
    value = draw(st.one_of(wrong_values(kind, field), *([out_of_range(kind, field.metadata)] if bounded else [])))
    return Case((*place.setup, f"{key}={hydra_text(value)}"), f"{key}={value!r}: expected {describe(field, kind)}")


def option_nodes(group: str) -> list[Place]:
    """The nodes of options inside ``group`` (``train``, ``cell.init``), where a plain value does not belong."""
    return [p for p in places(group) if p.prefix not in ("", group)]


@st.composite
def value_for_options(draw: st.DrawFn, group: str) -> Case:
    """A plain value where ``group`` has a node of options (``train=5``, ``cell.init=abc``)."""
    place = draw(st.sampled_from(option_nodes(group)))
    value = draw(st.one_of(words, st.integers(-5, 5)))
    names = ", ".join(place.key(f.name) for f in dataclasses.fields(place.cls))
    line = f"{place.prefix}={value!r}: expected options set one by one, not a value: {names}"
    return Case((*place.setup, f"{place.prefix}={hydra_text(value)}"), line)


@st.composite
def unknown_key(draw: st.DrawFn, group: str) -> Case:
    """An option ``group`` does not have, given plainly or added with ``+``."""
    place = draw(st.sampled_from(places(group)))
    known = {f.name for f in dataclasses.fields(place.cls)} | set(place.extra)
    key = place.key(draw(words.filter(lambda w: w not in known | config_groups())))
    plus = draw(st.sampled_from(["", "+"]))
    return Case((*place.setup, f"{plus}{key}=1"), f"{key}: no such option; accepted: ", frozenset(known))


@st.composite
def unknown_option(draw: st.DrawFn, group: str) -> Case:
    """A name no plugin registered in the component group, or no name at all."""
    names = [c.name for c in REGISTRY.of_kind(group)]
    choice = draw(st.one_of(words.filter(lambda w: w not in names), st.integers(-5, 5)))
    return Case((f"{group}={choice}",), f"{group}={choice!r}: expected one of: {', '.join(names)}")


def bad_overrides(group: str) -> st.SearchStrategy:
    """Every kind of bad override that ``group`` can be given."""
    kinds = [bad_value(group), unknown_key(group)]
    kinds += [unknown_option(group)] if group in KINDS else []
    kinds += [value_for_options(group)] if option_nodes(group) else []
    return st.one_of(kinds)


def framework(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_refused(case: Case) -> None:
    """Run ``case`` in a fresh launch directory: exit 2, its one line, no run in the store there, no output folder."""
    with tempfile.TemporaryDirectory(prefix="bad-config-") as launch_dir:
        result = framework(*case.args, cwd=Path(launch_dir))
        assert result.returncode == 2, (case.args, result.stderr)
        line = one_line(result.stderr).removeprefix("framework: error: ")
        if case.listed:
            head, _, accepted = line.partition("accepted: ")
            assert head + "accepted: " == case.line, (case.args, line)
            assert set(accepted.split(", ")) == case.listed, (case.args, line)
        else:
            assert line == case.line, case.args
        assert_no_runs(Path(launch_dir) / "mlruns" / "mlflow.db")
        assert not (Path(launch_dir) / "outputs").exists()  # nor the job's folder Hydra made before the refusal


@pytest.mark.parametrize("group", GROUPS)
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.slow  # 30 generated command lines, each a process
def test_generated_bad_overrides_are_refused_in_one_line(group, data, record_property):
    """Generated wrong types, out-of-range values, unknown keys and unknown options, 5 per group -> exit 2,
    one line naming the key and what is accepted, no traceback, no MLflow run."""
    case = data.draw(bad_overrides(group))
    record_property("tried", " ".join(case.args))  # listed on the page tests/faults/fault_table.py writes
    check_refused(case)


OPTIMIZERS = ", ".join(c.name for c in REGISTRY.of_kind("optim"))
MODES = "--run, --multirun, --cfg, --info, --shell-completion"


HYDRA_REFUSALS = [
    (("optim=nope",), f"optim='nope': expected one of: {OPTIMIZERS}"),
    (
        ("train.steps",),
        "train.steps: expected key=value or group=option (Hydra cannot parse it: missing EQUAL at '<EOF>')",
    ),
    (("--multirun", "--cfg", "job"), f"--multirun and --cfg: give only one of {MODES}"),
    (("optim=sgd,adam",), f"optim=sgd,adam: several options sweep only with --multirun; give one of: {OPTIMIZERS}"),
    (("--multirun", "optim=sgd,nope"), f"optim='nope': expected one of: {OPTIMIZERS}"),
    (("seed=1,2",), "seed=1,2: expected one value (sweep over several with --multirun; write a list as key=[a,b])"),
    (("~optim",), f"~optim: a run needs its optim; choose one of: {OPTIMIZERS}"),
    (("+train.steps=3",), "+train.steps: train.steps is already set; give train.steps=<value> to change it"),
    (("~train.nope",), "~train.nope: no such option to remove"),
    (("seed=${oops}",), "seed: cannot be resolved: Interpolation key 'oops' not found"),
    (
        ("task=adder", "--cfg", "job", "train.steps=3"),
        "train.steps=3: give every override before the flags (or every one after them): "
        "python -m framework task=adder train.steps=3 --cfg job",
    ),
    (("--bogus",), "--bogus: no such flag (see: python -m framework --hydra-help)"),
    (
        ("recipe/optim=nope",),
        f"recipe/optim='nope': expected one of: {', '.join(REGISTRY.options('recipe/optim'))}",
    ),
]

# mistakes that were found only after training (the run then FAILED), or once a sweep's parent run was open
RERUN = (
    "rerun from the run's config instead (python -m framework --config-dir <output dir>/.hydra --config-name config)"
)
LATE_REFUSALS = [
    (
        ("objective.metric=nope",),
        "objective.metric='nope': expected a final metric of the task: w_x, w_rec, loss, test_output",
    ),
    (
        ("model.register=true", "model.name=a/b"),
        "model.name='a/b': expected a name MLflow's registry takes: not empty, no '/' or ':'",
    ),
    (
        ("--multirun", "seed=0", "seed=1"),
        "seed: given twice (seed=0 and seed=1); give it once (several values sweep with --multirun: key=a,b)",
    ),
    (
        ("--experimental-rerun", "config.pickle"),
        f"--experimental-rerun config.pickle: not accepted: it unpickles the file, running any code in it; {RERUN}",
    ),
]


@pytest.mark.parametrize(("args", "line"), [pytest.param(*case, id=" ".join(case[0])) for case in LATE_REFUSALS])
def test_mistakes_found_late_before_are_refused_before_training(args, line):
    """An objective the task does not report, a model name MLflow refuses, a key given twice in a multirun, a pickled
    rerun file -> exit 2 before anything trains or any run (or sweep's parent run) exists, one line."""
    check_refused(Case(args, line))


@pytest.mark.slow
@pytest.mark.parametrize(("args", "line"), [pytest.param(*case, id=" ".join(case[0])) for case in HYDRA_REFUSALS])
def test_command_lines_hydra_cannot_compose_are_refused_in_one_line(args, line):
    """Command lines Hydra itself rejects (parse errors, conflicting modes, a sweep without --multirun, a group removed,
    an unresolvable interpolation) -> exit 2, one line naming the override and what is accepted, no MLflow run."""
    check_refused(Case(args, line))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--multirun", "train.stepz=1,2", "seed=0,1"), "train.stepz: no such option; accepted: "),
        (("--multirun", "seed=0,1", "train.steps=-1"), "train.steps=-1: expected an integer >= 1"),
    ],
    ids=["unknown key", "bad value"],
)
def test_a_sweep_no_job_can_run_is_refused_before_it_starts(args, line):
    """A sweep whose every job has the same bad key or value -> exit 2 before any job starts, one line naming the
    key, no parent run and no job folder."""
    with tempfile.TemporaryDirectory(prefix="bad-sweep-") as launch_dir:
        result = framework(*args, cwd=Path(launch_dir))
        assert result.returncode == 2, result.stderr
        assert one_line(result.stderr).startswith(f"framework: error: {line}")
        assert not (Path(launch_dir) / "mlruns").exists()  # no parent run, no store at all
        assert not (Path(launch_dir) / "multirun").exists()  # no job started
