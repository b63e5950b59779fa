"""A progress bar on the run-event hooks (tqdm).

It appears only when the run lasts more than two seconds and standard error
is a terminal; in a pipe, a log file or CI it stays silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from framework.core.hookspecs import hookimpl
from framework.core.protocols import RunInfo

REFRESH_SECONDS = 0.5


class ProgressBar:
    """Shows steps done, steps per second and the latest loss."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown_at = 0.0

    @hookimpl
    def framework_run_started(self, run: RunInfo) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self.bar = tqdm(total=run.steps, desc=run.task, unit="step", delay=2.0, mininterval=REFRESH_SECONDS)

    @hookimpl
    def framework_metrics_block(self, run: RunInfo, block: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        if self.bar is None:
            return
        self.bar.update(len(block))
        now = time.monotonic()
        _, metrics = block[-1]
        if now - self.shown_at > REFRESH_SECONDS and "loss" in metrics:
            self.shown_at = now
            self.bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)

    @hookimpl
    def framework_run_ended(self, run: RunInfo, status: str, error: str | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


progress = ProgressBar()  # the plugin object (see plugins.DEFAULT_PLUGINS)
