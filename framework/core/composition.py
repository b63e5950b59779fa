"""Overrides as Hydra composes them: checked before Hydra starts, and Hydra's errors in one line.

Hydra reports a bad override over several lines (an unknown key, an unknown
option of a group with its list, a parse error with a link) and some with a
traceback (``optim=5``). Here the mistakes Hydra cannot explain well are
refused before it starts, and the errors it raises while composing the config
become one line naming the key and what is accepted, like every other
configuration error. The command line and the Python API both go through it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from importlib import resources

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from framework.core.errors import CommandLineError, ConfigError, UnknownKeyError, one_line
from framework.core.registry import GROUPS, KINDS, RECIPE, Registry


def unique() -> str:
    """A name no other process uses now: this process's id and 16 random bits (``${framework_unique:}``, cached per
    config: a run's output folder and a sweep's, ``outputs/<date>/<time>_<unique>`` (conf/config.yaml), so that
    runs and sweeps started in the same second never share one)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


OmegaConf.register_new_resolver("framework_unique", unique, use_cache=True, replace=True)

# Hydra's messages for these mistakes name the override only in their text
AMBIGUOUS = re.compile(r"Ambiguous value for argument '(?P<override>.*)'")
ALREADY_SET = re.compile(r"An item is already at '(?P<key>.*)'")
NOT_THERE = re.compile(r"Could not delete from config\. '(?P<key>.*)' does not exist")


def check_overrides(overrides: Sequence[str], registry: Registry, multirun: bool) -> None:
    """Refuse what Hydra would report with a traceback or a list: a group (``task``, ``dataset``, ``cell``,
    ``loss``, ``optim``, ``hydra/...``) given no option, an unknown one, several without ``multirun``, or
    removed with ``~``; and an override Hydra cannot parse.

    Raises :class:`~framework.core.errors.CommandLineError` or :class:`~framework.core.errors.ConfigError`.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise CommandLineError(describe(error)) from None
    given: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        if key in given:
            raise CommandLineError(
                f"{key}: given twice ({given[key]} and {override.input_line}); give it once "
                "(several values sweep with --multirun: key=a,b)"
            )
        given[key] = override.input_line
    groups = config_groups()
    for override in parsed:
        check_choice(override, registry, groups, multirun)


def config_groups() -> set[str]:
    """The top-level config groups: the registry's (components, recipes), those in Hydra's ConfigStore (Hydra's) and
    conf/'s folders."""
    stored = {name for name in ConfigStore.instance().list("") if not name.endswith(".yaml")}
    shipped = {entry.name for entry in resources.files("framework.conf").iterdir() if entry.is_dir()}
    return {*GROUPS} | stored | {name for name in shipped if not name.startswith("_")}


def check_choice(override: Override, registry: Registry, groups: set[str], multirun: bool) -> None:
    """A group's override must name options of that group; other overrides are left to Hydra."""
    group = override.key_or_group
    if not group:
        raise CommandLineError(f"{override.input_line}: expected key=value or group=option")
    if group.split("/")[0] not in groups:
        return
    names = registry.options(group) if group in KINDS or group.startswith(f"{RECIPE}/") else None
    accepted = f"one of: {', '.join(names)}" if names is not None else f"the name of an option of {group}"
    if override.is_delete():
        raise CommandLineError(f"~{group}: a run needs its {group}; choose {accepted}")
    value = override.value()
    if isinstance(value, Glob):  # the sweeper picks among the group's own options
        return
    if override.is_sweep_override() and not multirun:
        raise CommandLineError(f"{override.input_line}: several options sweep only with --multirun; give {accepted}")
    for choice in override.sweep_iterator() if override.is_sweep_override() else [value]:
        if not isinstance(choice, str) or (names is not None and choice not in names):
            raise ConfigError(group, choice, accepted)


def describe(error: CompactHydraException) -> str:
    """One line for an error Hydra raised composing the config: the key, and what is accepted."""
    if isinstance(error, OverrideParseException):
        lines = [line for line in error.message.splitlines() if not line.startswith(("Error parsing", "See https"))]
        return f"{error.override}: expected key=value or group=option (Hydra cannot parse it: {'; '.join(lines)})"
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return str(ConfigError(group, name, f"one of: {', '.join(error.options)}"))
    cause = error.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and cause.parent_node is not None:
        keys = [str(key) for key in cause.parent_node if key != "hydra"]
        return str(UnknownKeyError(cause.full_key, None, ", ".join(keys)))
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return f"{cause.full_key}: {one_line(cause)}"
    text = str(error)
    if found := AMBIGUOUS.search(text):
        override = found["override"]
        return f"{override}: expected one value (sweep over several with --multirun; write a list as key=[a,b])"
    if found := ALREADY_SET.search(text):
        key = found["key"]
        return f"+{key}: {key} is already set; give {key}=<value> to change it"
    if found := NOT_THERE.search(text):
        return f"~{found['key']}: no such option to remove"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
