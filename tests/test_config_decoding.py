"""One decoder for every config: the model's (from_dict, with_overrides, checkpoint metadata) and
training's. Every field of every config dataclass is tried with values it must refuse."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from segfpn.config import ARCHITECTURES, ConfigError, ModelConfig, decode_config


def _fields(kind, prefix=""):
    """(dotted name, type hint) of every leaf field of the config dataclass ``kind``."""
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        hint = hints[f.name]
        options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        nested = [o for o in options if dataclasses.is_dataclass(o)]
        if nested:
            yield from _fields(nested[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


def _nested(dotted: str, value) -> dict:
    out = value
    for key in reversed(dotted.split(".")):
        out = {key: out}
    return out


def _bad_values(hint):
    """Values a field of type ``hint`` must refuse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, type(int | None)):
        args = [a for a in args if a is not type(None)]
        return _bad_values(args[0]) if len(args) == 1 else []
    if origin is typing.Literal:
        return ["middle", 12345]
    if origin is tuple:
        return ["not a list"]
    if hint is bool:
        return ["yes"]
    if hint in (int, float):
        return ["high", [1]]
    if hint is str:
        return [3]
    return []


LEAVES = list(_fields(ModelConfig))


def _preset_with(field: str) -> ModelConfig:
    """A preset that has the config section of the dotted ``field`` (not None)."""
    section = field.split(".")[0] if "." in field else None
    for preset in ARCHITECTURES.values():
        config = preset()
        if section is None or getattr(config, section) is not None:
            return config
    raise AssertionError(f"no preset has a {section} section")


@pytest.mark.parametrize("name, hint", LEAVES, ids=[name for name, _ in LEAVES])
def test_every_model_field_refuses_values_of_the_wrong_kind(name, hint):
    base = _preset_with(name)
    for value in _bad_values(hint):
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            base.with_overrides(_nested(name, value))
        data = base.to_dict()
        node = data
        *path, leaf = name.split(".")
        for key in path:
            node = node[key]
        node[leaf] = value
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            ModelConfig.from_dict(data)


def test_the_reported_override_is_refused_and_says_what_is_allowed():
    with pytest.raises(ConfigError,
                       match=r"box_head\.background_index must be one of \['first', 'last'\], got 'middle'"):
        ModelConfig().with_overrides({"box_head": {"background_index": "middle"}})
    with pytest.raises(ConfigError, match=r"unknown field overrides\.box_head\.score"):
        ModelConfig().with_overrides({"box_head": {"score": 0.3}})
    with pytest.raises(ConfigError, match="not used by this model"):
        ModelConfig().with_overrides({"semantic_head": {"num_classes": 3}})


def test_decoding_round_trips_every_preset():
    for name, preset in ARCHITECTURES.items():
        config = preset()
        assert ModelConfig.from_dict(config.to_dict()) == config, name
        assert decode_config(ModelConfig, config.to_dict(), name) == config
