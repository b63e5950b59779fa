"""docs/faults.md, the table of faults tried and what happened, lists every fault test as it is now."""

from __future__ import annotations

import re

from fault_table import PAGE, expected_rows


def test_the_fault_table_lists_every_fault_test_and_they_passed():
    rows = [line.strip("| ").split(" | ") for line in PAGE.read_text().splitlines() if line.startswith("| ")]
    header, _, *body = rows
    assert header == ["fault", "what must happen", "cases", "result", "test"]
    listed = [(fault, outcome, test) for fault, outcome, _, _, test in body]
    expected = [(row.fault, row.outcome, f"`{row.test}`") for row in expected_rows().values()]
    assert listed == expected, "docs/faults.md is out of date: run python tests/faults/fault_table.py"
    for fault, _, _, result, _ in body:
        assert re.fullmatch(r"\d+ passed", result), (fault, result)
