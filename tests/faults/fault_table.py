"""The table of faults tried and what happened, made from a real run of the faults suite: docs/faults.md.

    python tests/faults/fault_table.py

runs tests/faults/ (slow tests included) and the fault tests kept elsewhere (:data:`REFERENCED`)
with pytest, and writes one row per test whose docstring reads ``fault -> what must happen``: the
fault it injects, what must happen, its cases and its result; then the overrides the property-based
test generated. Exits with pytest's status. ``test_fault_table.py`` checks that the page lists every
such test.
"""

from __future__ import annotations

import ast
import datetime
import platform
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PAGE = REPO / "docs" / "faults.md"
ARROW = " -> "

# fault tests that live beside the feature they test: node id -> (the faults file whose rows they join,
# "fault -> what must happen")
REFERENCED = {
    "tests/test_cli.py::test_bad_value_exits_2_with_one_line_and_no_run": (
        "test_bad_config",
        "Hand-picked bad values (optim.step_init=-1, train.steps=abc, seed=-1, ...) -> exit 2, one line naming "
        "the key, the value and what is accepted, no MLflow run",
    ),
    "tests/test_task_charlm.py::test_the_cli_refuses_a_missing_file_before_any_run": (
        "test_bad_data",
        "A charlm data file that does not exist -> exit 2, one line naming the file, no MLflow run",
    ),
    "tests/test_cli_plugins.py::test_plugin_failing_to_import_is_reported_once_and_skipped": (
        "test_broken_plugins",
        "A third-party plugin raising on import -> one warning line naming it; the run goes on without it, FINISHED",
    ),
    "tests/test_cli_plugins.py::test_plugin_failing_to_import_is_fatal_when_strict": (
        "test_broken_plugins",
        "The same with FRAMEWORK_STRICT_PLUGINS=1 -> exit 2, one line naming the plugin, no MLflow run",
    ),
    "tests/test_cli_plugins.py::test_plugin_registering_a_builtin_name_is_refused": (
        "test_broken_plugins",
        "A third-party plugin registering a name another plugin has -> exit 2, one line naming both, no MLflow run",
    ),
    "tests/test_cli.py::test_sgd_diverges_with_one_line_and_a_failed_run": (
        "test_divergence",
        "A run that diverges by itself (counting with plain SGD: optim=sgd without its recipe's momentum and "
        "clipping) -> exit 1, one line naming the step, FAILED, the metrics before the divergence kept",
    ),
    "tests/test_checkpoint.py::test_an_interrupted_run_resumes_to_the_uninterrupted_result": (
        "test_interruption",
        "SIGINT at a step that is also a checkpoint, SIGINT during the final evaluation, or SIGKILL of the training "
        "process mid-run; then resume=<run id> -> exit 130 and KILLED (SIGINT); the same run continues from its last "
        "checkpoint to FINISHED, with the parameters of an uninterrupted run bit for bit",
    ),
}


@dataclass
class Row:
    """One fault test: what it injects, what must happen, and how its cases went."""

    test: str  # node id without parameters
    fault: str
    outcome: str
    cases: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tried: list[str] = field(default_factory=list)  # user property "tried" of the test's cases


def described(test: str, text: str) -> Row:
    """The row of ``test`` from its ``fault -> outcome`` text."""
    fault, _, outcome = " ".join(text.split()).partition(ARROW)
    return Row(test, fault, outcome.rstrip("."))


def expected_rows() -> dict[str, Row]:
    """A row for every fault test, file by file: the functions of tests/faults whose docstring reads
    ``fault -> outcome``, each file followed by the :data:`REFERENCED` tests that join it."""
    rows = {}
    for path in sorted(HERE.glob("test_*.py")):
        tests = [node for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)]
        for node in tests:
            docstring = ast.get_docstring(node) or ""
            if node.name.startswith("test_") and ARROW in docstring:
                test = f"{path.relative_to(REPO)}::{node.name}"
                rows[test] = described(test, docstring)
        rows.update({test: described(test, text) for test, (family, text) in REFERENCED.items() if family == path.stem})
    return rows


class Collector:
    """A pytest plugin that fills the rows with the results of the run."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self.rows = rows

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
        report = yield
        row = self.rows.get(item.nodeid.partition("[")[0])
        if row is not None and (report.when == "call" or report.outcome != "passed"):
            callspec = getattr(item, "callspec", None)
            row.cases.append(callspec.id if callspec else "")
            row.results[report.outcome] += 1
            row.tried += [value for name, value in report.user_properties if name == "tried"]
        return report


def render(rows: list[Row], status: int) -> str:
    """The page: how it was made, the table, the generated overrides."""
    versions = f"Python {platform.python_version()}, pytest {pytest.__version__}"
    lines = [
        "# Faults and what happens",
        "",
        f"Made by `python tests/faults/fault_table.py` on {datetime.date.today()} ({versions}) from the results",
        f"of that run of the faults suite (pytest exit status {status}). Each row is one test; the fault is",
        "injected for real, through `python -m framework` in a subprocess with its own tracking store.",
        "",
        "| fault | what must happen | cases | result | test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        named = all(len(case) <= 40 for case in row.cases)  # pytest's own ids of long parameters say little
        cases = ", ".join(f"`{case}`" for case in row.cases if case) if named else f"{len(row.cases)} cases"
        result = ", ".join(f"{count} {outcome}" for outcome, count in sorted(row.results.items())) or "not run"
        lines.append(f"| {row.fault} | {row.outcome} | {cases} | {result} | `{row.test}` |")
    tried = [value for row in rows for value in row.tried]
    if tried:
        lines += ["", "## The generated bad overrides of this run", "", *(f"- `{value}`" for value in tried)]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the fault tests, write docs/faults.md; returns pytest's exit status."""
    rows = expected_rows()
    tests = [str(HERE), *(str(REPO / test) for test in REFERENCED)]
    # slow tests too; in this process (pytest-xdist's workers would keep the results from the collector)
    options = ["-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", ""]
    options.append(f"--ignore={HERE / 'test_fault_table.py'}")
    status = pytest.main([*options, *tests], [Collector(rows)])
    PAGE.write_text(render(list(rows.values()), int(status)))
    print(f"wrote {PAGE.relative_to(REPO)}")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
