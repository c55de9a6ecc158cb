"""The one config loader: unknown keys and wrong types are errors naming the key."""

from dataclasses import dataclass, field

import pytest

from neurofm.config import ConfigError, from_dict, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    optim: Inner = field(default_factory=Inner)


def test_defaults_overrides_and_round_trip():
    cfg = from_dict(Outer, {"steps": 20}, overrides=["optim.lr=0.5", "name=x"])
    assert cfg == Outer(name="x", steps=20, optim=Inner(lr=0.5))
    assert isinstance(cfg.optim, Inner)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"run\.yaml: .*optim\.lrr"):
        from_dict(Outer, {"optim": {"lrr": 1.0}}, where="run.yaml")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="steps"):
        from_dict(Outer, overrides=["steps=many"])


def test_an_empty_override_of_a_string_says_how_to_write_an_empty_string():
    """`data.events=` (a new lab clearing the demo's events) parses as null: the error said only
    "Incompatible value 'None' for field of type 'str'"."""
    with pytest.raises(ConfigError, match=r"key 'name': .*an empty value means null: .* write name=\"\""):
        from_dict(Outer, overrides=["name="])
    assert from_dict(Outer, overrides=['name=""']).name == ""
