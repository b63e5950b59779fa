"""The registry's components, recipes and the run-wide settings as Hydra options: the ``framework://`` config source.

:func:`register` puts ``framework://registry`` on Hydra's search path (Hydra's public plugin registration), so
``cell=rnn``, ``task=adder`` and ``recipe/optim=adder_adam`` are looked up here, in the registry of the process's
plugin manager (:func:`framework.core.plugins.manager`, created on first use, as in a launcher's worker), when
Hydra composes a config or lists its groups (``--help``). Nothing is copied into Hydra's ConfigStore, which Hydra
deep-copies for every composition, twice a run: with every option stored there, that copy took 15-25 ms a
composition and grew with each installed plugin.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from framework.core import plugins
from framework.core.config import defaults
from framework.core.registry import COMPONENT_KINDS, GROUPS, RECIPE, Registry
from framework.core.settings import Settings

SCHEME = "framework"
PATH = f"{SCHEME}://registry"
SETTINGS = "framework_settings"  # the run-wide settings' defaults, which conf/config.yaml starts from


def register() -> None:
    """Put the process's registry on Hydra's search path (before Hydra starts; a launcher's workers inherit it)."""
    for clazz in (RegistrySource, RegistrySearchPath):
        Plugins.instance().register(clazz)  # once: Hydra keeps the first registration of a class


class RegistrySearchPath(SearchPathPlugin):
    """Puts the registry on Hydra's search path, after conf/."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider=SCHEME, path=PATH)


class RegistrySource(ConfigSource):
    """A read-only Hydra config source over the process's registry: groups are its kinds and ``recipe/<kind>``."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def __deepcopy__(self, memo: dict[int, Any]) -> RegistrySource:
        return self  # it holds no state: Hydra copies its sources for every composition

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", *GROUPS, *(f"{RECIPE}/{kind}" for kind in COMPONENT_KINDS))

    def is_config(self, config_path: str) -> bool:
        group, name = split(config_path)
        return name in options(group)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        group = config_path.strip("/")
        groups = list(GROUPS) if group == "" else list(COMPONENT_KINDS) if group == RECIPE else []
        return sorted(
            ([] if results_filter == ObjectType.CONFIG else groups)
            + ([] if results_filter == ObjectType.GROUP else options(group))
        )

    def load_config(self, config_path: str) -> ConfigResult:
        group, name = split(config_path)
        found = (defaults(Settings), None) if (group, name) == ("", SETTINGS) else registry().option(group, name)
        if found is None:
            raise ConfigLoadError(f"{self.full_path()}: no option {config_path!r}")
        node, package = found
        return ConfigResult(
            config=OmegaConf.create(node), path=self.full_path(), provider=self.provider, header={"package": package}
        )


def split(config_path: str) -> tuple[str, str]:
    """``cell/rnn.yaml`` -> (``cell``, ``rnn``); ``framework_settings`` -> ("", ``framework_settings``)."""
    group, _, name = config_path.strip("/").removesuffix(".yaml").rpartition("/")
    return group, name


def options(group: str) -> list[str]:
    """The names of the options in ``group`` ("" for the top level: the run-wide settings)."""
    return [SETTINGS] if group == "" else registry().options(group)


def registry() -> Registry:
    """The process's registry (its plugin manager created on first use, as in a launcher's worker)."""
    return plugins.manager().registry
