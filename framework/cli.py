"""The command line: ``python -m framework [list | docs | Hydra overrides ...]``.

User mistakes end with one line on standard error and a non-zero exit code:
2 for a bad config, components that do not fit together, or a broken plugin;
1 for a run that failed (divergence, tracking store); 130 for Ctrl-C.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from framework import engine, plugins
from framework.checkpoint import CheckpointError
from framework.config import ConfigError
from framework.registry import PluginError
from framework.tracking import TrackingError


class JobFailedError(CompactHydraException):
    """One job of a sweep failed; Hydra goes on with the others and reports it (one line) at the end."""


def fail(message: object, code: int) -> NoReturn:
    """Print ``framework: error: <message>`` (one line) and exit with ``code``."""
    print(f"framework: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def fail_job(message: object, code: int) -> NoReturn:
    """End a failed job: the whole program for a single run, only this job in a sweep.

    In a ``--multirun`` the other jobs still run; Hydra exits non-zero at the end.
    """
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        fail(message, code)
    print(f"framework: error: job {HydraConfig.get().job.num}: {message}", file=sys.stderr)
    raise JobFailedError(str(message)) from None


@hydra.main(version_base="1.3", config_path="pkg://framework.conf", config_name="config")
def run(cfg: DictConfig) -> float:
    """One Hydra job: build, train and record one run; returns its objective for sweepers."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode == RunMode.MULTIRUN and cfg.tracking.run_name is None:
        cfg.tracking.run_name = hydra_config.job.override_dirname or f"job {hydra_config.job.num}"
    try:
        overrides = list(hydra_config.overrides.task)
        return engine.execute(
            cfg, overrides, Path(hydra_config.runtime.cwd), output_dir=Path(hydra_config.runtime.output_dir)
        )
    except (ConfigError, PluginError, engine.IncompatibleError, CheckpointError) as error:
        fail_job(error, 2)
    except (engine.DivergenceError, TrackingError) as error:
        fail_job(error, 1)
    except KeyboardInterrupt:
        fail("interrupted; the run is recorded as KILLED", 130)


def component_table(pm: plugins.PluginManager) -> str:
    """Every registered component with the plugin and version that provide it."""
    rows = [("KIND", "NAME", "PLUGIN", "VERSION", "DESCRIPTION")]
    for c in pm.registry.all():
        summary = (c.config_class.__doc__ or "").strip().splitlines()[0] if c.config_class.__doc__ else ""
        rows.append((c.kind, c.name, c.plugin, c.version, summary))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, [*widths, 0], strict=True)) for row in rows)


def main() -> None:
    """Entry point of ``python -m framework``."""
    if sys.argv[1:2] == ["migrate"]:  # copies runs between stores; needs no plugins
        from framework.migrate import main as migrate

        raise SystemExit(migrate(sys.argv[2:]))
    try:
        pm = plugins.manager()
    except PluginError as error:
        fail(error, 2)
    if sys.argv[1:] == ["list"]:
        print(component_table(pm))
        return
    if sys.argv[1:] == ["docs"]:
        from framework.docs import own_plugins, reference

        print(reference(pm.registry, own_plugins()), end="")
        return
    try:
        run()
    finally:
        # the interpreter's last collections would walk every object of MLflow's ~2000 modules (~0.4 s)
        gc.freeze()
