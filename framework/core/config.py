"""Hyper-parameters: declared once as dataclass fields, checked once.

Every configurable thing (a cell, a loss, an optimizer, a task, the training
settings) describes its options as a dataclass whose fields are made with
:func:`param`. The same declaration gives the Hydra defaults, the type and
range checks with one-line messages, and the generated documentation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from framework.core.errors import ConfigError, UnknownKeyError


def param(
    default: Any,
    *,
    doc: str,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    file: bool = False,
) -> Any:
    """A documented dataclass field with optional bounds or a set of choices.

    ``file``: the value is the path of a data file, relative to the launch directory; the engine checks it
    (a regular file of bounded size) and a logged model carries a copy of it.
    """
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices, "file": file or None}
    meta = {"doc": doc, **{k: v for k, v in bounds.items() if v is not None}}
    return dataclasses.field(default=default, metadata=meta)


def defaults(cls: type) -> dict[str, Any]:
    """The default values of the dataclass ``cls`` as a plain nested dict."""
    return dataclasses.asdict(cls())


def describe(field: dataclasses.Field, kind: Any) -> str:
    """What a field accepts, in words: 'a number > 0', 'one of: a, b', ..."""
    meta = field.metadata
    if "choices" in meta:
        return "one of: " + ", ".join(meta["choices"])
    base, optional = _unwrap_optional(kind)
    noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[base]
    if meta.get("file"):
        noun = "the path of a file"
    lo = [f"> {meta['gt']}"] if "gt" in meta else [f">= {meta['ge']}"] if "ge" in meta else []
    hi = [f"< {meta['lt']}"] if "lt" in meta else [f"<= {meta['le']}"] if "le" in meta else []
    text = f"{noun} {' and '.join(lo + hi)}" if lo or hi else noun
    return text + (" or null" if optional else "")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The dataclass ``cls``'s fields' types, annotations resolved (``typing.get_type_hints``, once per class)."""
    return typing.get_type_hints(cls)


def build(cls: type, values: Mapping[str, Any], prefix: str = "", ignore: tuple[str, ...] = ()) -> Any:
    """Instantiate the dataclass ``cls`` from ``values``, checking every field.

    Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
    naming ``prefix.key``. Nested dataclass fields are built recursively.
    Cross-field rules belong in the dataclass's ``__post_init__``, raising
    ``ConfigError`` with the bare field name; it is placed under ``prefix`` here.
    """
    hints = field_types(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known and key not in ignore:
            where = f"{prefix}.{key}" if prefix else key
            raise UnknownKeyError(where, values[key], ", ".join([*known, *ignore]))
    kwargs = {}
    for name, field in known.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], _options(key, values.get(name), hints[name]), key)
        else:
            kwargs[name] = _check(key, values.get(name, field.default), field, hints[name])
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise error.under(prefix) from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys: {'a': {'b': 1}} -> {'a.b': 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _options(key: str, value: Any, cls: type) -> Mapping[str, Any]:
    """The options given for the nested dataclass ``cls`` at ``key``: a mapping (None: the defaults)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        names = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(cls))
        raise ConfigError(key, value, f"options set one by one, not a value: {names}")
    return value


def _unwrap_optional(kind: Any) -> tuple[type, bool]:
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return kind, False


def _check(key: str, value: Any, field: dataclasses.Field, kind: Any) -> Any:
    """Coerce ``value`` to the field's type and check its bounds."""
    base, optional = _unwrap_optional(kind)
    reject = ConfigError(key, value, describe(field, kind))
    if value is None:
        if optional:
            return None
        raise reject
    if base is bool:
        if not isinstance(value, bool):
            raise reject
        return value
    if base is str:
        if not isinstance(value, str) or value not in field.metadata.get("choices", (value,)):
            raise reject
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise reject
    if base is int:
        if isinstance(value, float) and not value.is_integer():
            raise reject
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise reject
    meta = field.metadata
    if (
        ("gt" in meta and not value > meta["gt"])
        or ("ge" in meta and not value >= meta["ge"])
        or ("lt" in meta and not value < meta["lt"])
        or ("le" in meta and not value <= meta["le"])
    ):
        raise reject
    return value
