"""The one to_dict / from_dict every model config shares (core_attention.config.ConfigMixin)."""

import json
from dataclasses import dataclass, field

import pytest

from core_attention.config import ConfigMixin


@dataclass
class Inner(ConfigMixin):
    size: tuple[int, int] = (2, 3)

    def __post_init__(self) -> None:
        self.size = tuple(self.size)


@dataclass
class Outer(ConfigMixin):
    name: str = "x"
    kinds: tuple[str, ...] = ("a", "b")
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if isinstance(self.inner, dict):
            self.inner = Inner.from_dict(self.inner)


def test_round_trip_through_json():
    config = Outer(name="y", kinds=("c",), inner=Inner((4, 5)))
    d = config.to_dict()
    assert d == {"name": "y", "kinds": ["c"], "inner": {"size": [4, 5]}}  # JSON's types: what config.json holds
    assert Outer.from_dict(json.loads(json.dumps(d))) == config


def test_unknown_keys_are_named_and_architecture_is_ignored():
    with pytest.raises(ValueError, match=r"unknown Outer keys \['colour', 'depth'\].*valid keys: \['inner', 'kinds'"):
        Outer.from_dict({"name": "z", "depth": 3, "colour": "red"})
    assert Outer.from_dict({"architecture": "Outer", "name": "z"}) == Outer(name="z")


def test_a_field_named_architecture_is_kept():
    @dataclass
    class WithArchitecture(ConfigMixin):
        architecture: str = "dalle"

    assert WithArchitecture.from_dict({"architecture": "openai"}).architecture == "openai"
