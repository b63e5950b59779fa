"""The spare tracking worker that ``python -m framework`` starts before anything else is imported."""

from __future__ import annotations

import pytest

from framework import recorder_process


@pytest.mark.parametrize(
    ("args", "off"),
    [
        (["task=adder", "tracking.enabled=false"], True),
        (["tracking.enabled=False"], True),
        (["++tracking.enabled=FALSE"], True),
        (["tracking.enabled=false", "tracking.enabled=true"], False),  # the last one wins, as in Hydra
        (["tracking.enabled=true"], False),
        (["task=adder"], False),
        (["tracking.enabled_by_me=false"], False),
        (["tracking.uri=sqlite:////tmp/tracking.enabled=false"], False),
    ],
)
def test_the_last_tracking_switch_on_the_command_line_decides(args, off):
    assert recorder_process.tracking_switched_off(args) is off


@pytest.fixture
def no_spare():
    """No spare worker before or after the test (a started one is closed)."""
    recorder_process._spare = None
    yield
    spare, recorder_process._spare = recorder_process._spare, None
    if spare is not None:
        spare.close()


@pytest.mark.parametrize(
    "args",
    [
        ["task=counting", "tracking.enabled=false"],
        ["--multirun", "task=counting", "seed=0,1"],
        ["list"],
        ["cleanup", "--help"],
    ],
)
def test_no_worker_is_started_for_a_command_that_records_nothing_here(no_spare, args):
    recorder_process.prewarm(args)
    assert recorder_process._spare is None


def test_a_single_tracked_run_gets_a_running_worker_that_the_tracker_takes(no_spare):
    recorder_process.prewarm(["task=counting"])
    spare = recorder_process._spare
    assert spare is not None and spare.process.poll() is None
    assert recorder_process.take() is spare
    assert recorder_process._spare is None
    spare.close()  # its input ends before any run started: it exits at once, having recorded nothing
    assert spare.process.returncode == 0
