"""`to_dict` / `from_dict` for the dataclass configs every model saves with its weights (config.json, checkpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigMixin")


def _plain(value: Any) -> Any:
    # JSON's types: tuples become lists (as json.dumps writes them), nested dicts and lists are walked.
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class ConfigMixin:
    """Base of a dataclass config. `to_dict()` gives plain JSON types (nested configs as dicts, tuples as lists);
    `from_dict(d)` builds the config back and names any key that is not a field. A top-level `architecture` key that
    is not a field (config.json names the model class with it) is ignored. Lists become tuples in `__post_init__`
    where a field needs one. A field-less dataclass itself: LightningCLI reads a config's fields only when every
    class it derives from is a dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"architecture"})
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys {unknown}: remove them (written by another version?); "
                f"valid keys: {sorted(names)}"
            )
        return cls(**{k: v for k, v in d.items() if k in names})
