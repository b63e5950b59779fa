"""The command line: ``python -m framework [list | docs | migrate | cleanup | Hydra overrides ...]``.

User mistakes end with one line on standard error and a non-zero exit code:
2 for a bad config or command line, components that do not fit together, or a
plugin that conflicts with another; 1 for a run that failed (divergence,
tracking store, an exception in a plugin or in the framework: the line names
the plugin, and the traceback is saved in the job's output folder); 130 for Ctrl-C.
A user's own ``HYDRA_FULL_ERROR=1`` keeps Hydra's traceback for a config Hydra cannot compose.
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from framework.cli import commandline, host
from framework.cli.subcommands import LISTINGS, TOOLS
from framework.core import engine, plugins
from framework.core.composition import describe
from framework.core.errors import FrameworkError, PluginError, described, fail, one_line, print_error
from framework.tracking.resume import resumable
from framework.tracking.store import log_where_to_look


class JobFailedError(CompactHydraException):
    """One job of a sweep failed; Hydra goes on with the others and reports it (one line) at the end."""


def fail_job(message: object, code: int) -> NoReturn:
    """End a failed job: the whole program for a single run, only this job in a sweep.

    In a ``--multirun`` the other jobs still run; Hydra exits non-zero at the end.
    """
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        if code == 2:  # a refused config: its job's folder holds only Hydra's copy of it
            discard_unused(Path(hydra_config.runtime.output_dir), Path(hydra_config.runtime.cwd))
        fail(message, code)
    print_error(f"job {hydra_config.job.num}: {message}")
    raise JobFailedError(str(message)) from None


@hydra.main(version_base="1.3", config_path="pkg://framework.conf", config_name="config")
def run(cfg: DictConfig) -> float:
    """One Hydra job: build, train and record one run; returns its objective for sweepers."""
    collect_from_here()
    hydra_config = HydraConfig.get()
    try:
        overrides = OmegaConf.to_container(hydra_config.overrides.task)  # as given: ${...} unresolved
        config = OmegaConf.to_container(cfg, resolve=True)
        launch_dir, output_dir = Path(hydra_config.runtime.cwd), Path(hydra_config.runtime.output_dir)
        resume_from = None
        if config.get("resume"):
            config, path = resumable(config, overrides, launch_dir, output_dir)
            resume_from = (path, f"of run {config['resume']}")
        outcome = engine.execute(config, overrides, launch_dir, host.manager(), output_dir, resume_from)
        if "mlflow_run_id" in outcome.info.links:
            log_where_to_look(outcome.info)
        return outcome.objective
    except FrameworkError as error:
        fail_job(error, error.exit_code)
    except (InterpolationResolutionError, MissingMandatoryValue) as error:
        fail_job(f"{error.full_key}: cannot be resolved: {one_line(error)}", 2)
    except KeyboardInterrupt:
        fail("interrupted; the run is recorded as KILLED", 130)
    except Exception as error:  # a plugin's or the framework's: one line, the traceback in the job's folder
        fail_job(crash(error, Path(hydra_config.runtime.output_dir), Path(hydra_config.runtime.cwd)), 1)


def discard_unused(folder: Path, launch_dir: Path) -> None:
    """Remove a job's output folder that holds nothing but Hydra's copy of the config (``.hydra/``) and empty
    files, then its parents up to ``launch_dir`` that this leaves empty (``outputs/<date>``, ``outputs``)."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    if any(path.parent.name != ".hydra" and path.stat().st_size > 0 for path in files):
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent == launch_dir or not parent.is_relative_to(launch_dir) or any(parent.iterdir()):
            return
        parent.rmdir()


def collect_from_here() -> None:
    """Turn the garbage collector back on if ``python -m framework`` turned it off for its start-up.

    Start-up (imports, plugins, Hydra composing the config twice) makes some 14,000 objects in reference cycles;
    collecting them as they came took 35-60 ms of the 0.6 s before the first step. What exists now is frozen
    instead (``gc.freeze``: kept, never walked again; the peak memory of a run is the same), once per process: a
    sweep (its later jobs, its own process) and the tools (atlas, migrate, cleanup) run with the collector on.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def crash(error: Exception, output_dir: Path, launch_dir: Path) -> str:
    """The line for an unexpected exception of a job, naming the installed plugin it came from;
    the traceback is written to ``<output_dir>/traceback.txt``."""
    saved = output_dir / "traceback.txt"
    saved.write_text("".join(traceback.format_exception(error)))
    found = plugins.manager().culprit(error)
    where = f"plugin {found[0]!r} failed in {found[1]}" if found else "the run failed"
    return f"{where}: {described(error)} (traceback: {os.path.relpath(saved, launch_dir)})"


def print_listing(command: str, args: list[str], pm: plugins.PluginManager) -> None:
    """``python -m framework list`` or ``docs``: print what :data:`LISTINGS` says; ``-h`` says that."""
    if args in (["-h"], ["--help"]):
        print(f"usage: python -m framework {command}\n\nPrints {LISTINGS[command]}.")
        return
    if args:
        fail(f"{command} takes no arguments, got: {' '.join(args)} (see: python -m framework {command} --help)", 2)
    if command == "list":
        print(component_table(pm))
        return
    from framework.cli.docs import own_plugins, reference

    print(reference(pm.registry, own_plugins()), end="")


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
    if sys.argv[1:2] and sys.argv[1] in TOOLS:
        collect_from_here()  # a tool may run for minutes: its garbage must be collected
        raise SystemExit(importlib.import_module(TOOLS[sys.argv[1]]).main(sys.argv[2:]))
    try:
        pm = host.manager()
    except PluginError as error:
        fail(error, 2)
    if sys.argv[1:2] and sys.argv[1] in LISTINGS:
        print_listing(sys.argv[1], sys.argv[2:], pm)
        return
    try:
        if commandline.check(sys.argv[1:], pm.registry).multirun:
            collect_from_here()  # a sweep's own process waits for its jobs for minutes, elsewhere with joblib or Ray
        compose_and_run()
    except FrameworkError as error:
        fail(error, error.exit_code)
    finally:
        # the interpreter's last collections would walk every object of every imported module
        gc.freeze()


def compose_and_run() -> None:
    """Hydra's main, with the errors it raises composing the config as one line (exit 2).

    Hydra prints those itself over several lines unless ``HYDRA_FULL_ERROR`` is
    set, when it raises them instead: set here, so that they reach this function.
    """
    traceback_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        run()
    except JobFailedError:  # a job of the sweep failed: its own line is already printed
        raise SystemExit(1) from None
    except CompactHydraException as error:
        if traceback_wanted:
            raise
        fail(describe(error), 2)
