"""The command line of a run, checked before Hydra starts: its flags, then its overrides.

``python -m framework`` takes Hydra's own flags (``--multirun``, ``--cfg job``, ...; see
``python -m framework --hydra-help``) and overrides. Mistakes Hydra would report with a
traceback or over several lines are refused here in one line: two modes at once, and
``--experimental-rerun``, which would unpickle a file (running its code). The overrides
are checked by :func:`framework.core.composition.check_overrides`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from framework.core.composition import check_overrides
from framework.core.errors import CommandLineError
from framework.core.registry import Registry

MODES = ("--run", "--multirun", "--cfg", "--info", "--shell-completion")
RERUN = "--experimental-rerun"


class RefusalError(Exception):
    """What argparse would print and exit with: raised instead, to become one line."""


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`RefusalError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise RefusalError(message)


def parser() -> Parser:
    """The flags ``hydra.main`` accepts (hydra-core 1.3), and the overrides after them."""
    flags = Parser(add_help=False, allow_abbrev=False)
    flags.add_argument("overrides", nargs="*")
    for names in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",)):
        flags.add_argument(*names, action="store_true")
    flags.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    flags.add_argument("--package", "-p")
    flags.add_argument("--run", "-r", action="store_true")
    flags.add_argument("--multirun", "-m", action="store_true")
    flags.add_argument("--shell-completion", "-sc", action="store_true")
    flags.add_argument("--config-path", "-cp")
    flags.add_argument("--config-name", "-cn")
    flags.add_argument("--config-dir", "-cd")
    flags.add_argument(RERUN)
    flags.add_argument(
        "--info", "-i", const="all", nargs="?", choices=["all", "config", "defaults", "defaults-tree", "plugins"]
    )
    return flags


@dataclass(frozen=True)
class CommandLine:
    """What the command line asks for: the overrides, and whether it sweeps or runs at all."""

    overrides: list[str]
    multirun: bool
    runs: bool  # False for --cfg, --info, --help, ...: Hydra prints something and trains nothing


def flag_words(argv: Sequence[str], unknown: Sequence[str]) -> list[str]:
    """The words of ``argv`` that are flags or their values: neither overrides before them nor ``unknown``."""
    first = next((i for i, word in enumerate(argv) if word.startswith("-")), len(argv))
    return [word for word in argv[first:] if word not in unknown]


def check(argv: Sequence[str], registry: Registry) -> CommandLine:
    """Refuse conflicting modes, ``--experimental-rerun`` and bad overrides; what the command line asks for.

    Raises :class:`~framework.core.errors.CommandLineError` or :class:`~framework.core.errors.ConfigError`.
    """
    try:
        args, unknown = parser().parse_known_args(list(argv))
    except RefusalError as refusal:
        raise CommandLineError(f"{' '.join(argv)}: {refusal} (see: python -m framework --help)") from None
    if args.experimental_rerun is not None:
        raise CommandLineError(
            f"{RERUN} {args.experimental_rerun}: not accepted: it unpickles the file, running any code in it; "
            "rerun from the run's config instead (python -m framework --config-dir <output dir>/.hydra "
            "--config-name config)"
        )
    if unknown and args.overrides and all("=" in word and not word.startswith("-") for word in unknown):
        raise CommandLineError(  # Hydra's argparse takes the overrides in one place: all before or all after the flags
            f"{' '.join(unknown)}: give every override before the flags (or every one after them): "
            f"python -m framework {' '.join([*args.overrides, *unknown])} {' '.join(flag_words(argv, unknown))}"
        )
    if unknown:
        raise CommandLineError(f"{' '.join(unknown)}: no such flag (see: python -m framework --hydra-help)")
    given = [args.run, args.multirun, args.cfg is not None, args.info is not None, args.shell_completion]
    if sum(map(bool, given)) > 1:
        modes = " and ".join(mode for mode, on in zip(MODES, given, strict=True) if on)
        raise CommandLineError(f"{modes}: give only one of {', '.join(MODES)}")
    check_overrides(args.overrides, registry, args.multirun)
    prints = args.help or args.hydra_help or args.version or args.cfg or args.info or args.shell_completion
    return CommandLine(list(args.overrides), args.multirun, runs=not prints)
