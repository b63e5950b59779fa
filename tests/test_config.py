"""Option checking: one mechanism, one-line messages naming key, value and what is accepted."""

from __future__ import annotations

import pytest

from framework.core.config import build, flatten
from framework.core.errors import ConfigError
from framework.core.settings import Settings


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train": {"steps": 0}}, "train.steps=0: expected an integer >= 1"),
        ({"train": {"steps": 2.5}}, "train.steps=2.5: expected an integer >= 1"),
        ({"train": {"steps": "abc"}}, "train.steps='abc': expected an integer >= 1"),
        ({"train": {"steps": True}}, "train.steps=True: expected an integer >= 1"),
        ({"train": {"clip_norm": -1}}, "train.clip_norm=-1: expected a number > 0 or null"),
        ({"train": {"clip_value": float("nan")}}, "train.clip_value=nan: expected a number > 0 or null"),
        ({"dtype": "float16"}, "dtype='float16': expected one of: float64, float32"),
        ({"tracking": {"enabled": "yes"}}, "tracking.enabled='yes': expected true or false"),
        (
            {"train": {"stepz": 3}},
            "train.stepz: no such option; accepted: steps, batch_size, eval_every, clip_value, clip_norm, "
            "checkpoint_every",
        ),
    ],
)
def test_bad_values_name_key_value_and_what_is_accepted(values, message):
    with pytest.raises(ConfigError) as error:
        build(Settings, values)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_values_are_coerced_to_the_declared_type():
    settings = build(Settings, {"seed": 3.0, "train": {"steps": 7, "clip_norm": 1}})
    assert settings.seed == 3 and isinstance(settings.seed, int)
    assert settings.train.clip_norm == 1.0 and isinstance(settings.train.clip_norm, float)
    assert settings.train.steps == 7 and settings.train.batch_size == 0  # the default


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {"a.b": 1, "a.c.d": None, "e": "x"}
