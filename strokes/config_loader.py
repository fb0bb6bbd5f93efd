"""Loading nested dataclass configs from YAML, with `--set key=value` overrides.

Each component defines its own `...Config` dataclass beside its code, with sane defaults and one
convention (as CleanRL's `Args` and TRL's configs have it):

    @dataclass
    class RolloutConfig:
        SECTION: ClassVar[str] = "rollout"   # its key in the run config, for messages

        top_p: float = 1.0
        '''Nucleus sampling: sample among the most likely tokens holding this much probability.'''

        def __post_init__(self) -> None:
            require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")

every field documented by a docstring line under it (tests/test_configs.py checks), every check in
`__post_init__` through `require`, which names the field. The run config (`selfplay.config.RunConfig`)
nests them. A wrong field name, a value of the wrong type or out of range fails with one line naming
the dotted field (`train.lr`), never a traceback.

A config file may name a parent and hold only what differs from it:

    inherit: shapeworld.yaml      # relative to this file's folder
    train: {method: sft, lr: 5.0e-4}

Sections merge key by key (a mapping in the child updates the parent's, any other value replaces
it); a missing parent or a cycle of parents fails with one line naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import InputError
from .io import write_atomic

T = TypeVar("T")


def require(cfg: Any, name: str, ok: bool, what: str) -> None:
    """Unless `ok`, raise a one-line InputError naming the field: `config field '<section>.<name>'
    <what>, got <value>`, where section is the config's `SECTION` (its key in the run config). For
    a dotted `name` below a field (`loss_weights.text`) the value is left out."""
    if ok:
        return
    section = getattr(cfg, "SECTION", "")
    field = f"{section}.{name}" if section else name
    got = "" if "." in name else f", got {getattr(cfg, name)!r}"
    raise InputError(f"config field '{field}' {what}{got}")


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a dict, checking names and types field by field."""
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(f"config field '{where or cls.__name__}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        field = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InputError(f"unknown config field '{field}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        raise InputError(f"config '{where or cls.__name__}': {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against annotation `tp` (and converted where YAML and the type disagree
    harmlessly: 2 -> 2.0, "2e-4" -> 0.0002), so a bad value is refused here naming `where`, not
    later as a TypeError deep in a `__post_init__` (`'<' not supported between 'str' and 'int'`).
    Items of `list[T]` and keys and values of `dict[K, V]` are checked too (`loop.strip_prompts[0]`,
    `data.mixture.scene_graph`), and a float must be finite: no rate, size or weight means NaN or
    infinity, and NaN passes every `x > 0` check by comparing false both ways."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"config field '{where}' must be a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and not (type(value) is tp):
        raise InputError(f"config field '{where}' must be {tp.__name__}, got {value!r}")
    if tp is float and not isinstance(value, float):
        raise InputError(f"config field '{where}' must be a number, got {value!r}")
    if origin in (list, tuple) and not isinstance(value, (list, tuple)):
        raise InputError(f"config field '{where}' must be a list, got {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise InputError(f"config field '{where}' must be a mapping, got {value!r}")
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    args = typing.get_args(tp)
    if origin is list and args:
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict and args:
        bad = [k for k in value if not isinstance(k, args[0])]
        if bad:
            raise InputError(f"config field '{where}' keys must be {args[0].__name__}, got {bad[0]!r}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` pairs (value parsed as YAML) applied onto a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


INHERIT = "inherit"
"""The key naming a config file's parent."""


def read(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """The YAML at `path` (or nothing) as a dict of sections, its parents merged in (`inherit`), with
    `key=value` overrides applied."""
    data = _resolved(Path(path), ()) if path is not None else {}
    return apply_overrides(data, overrides or [])


def _resolved(path: Path, children: tuple[Path, ...]) -> dict:
    """The file at `path` merged onto its parents; `children` are the files that inherit from it."""
    if not path.is_file():
        if children:
            raise InputError(f"{children[-1]}: field '{INHERIT}' names no config file: {path}")
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop(INHERIT, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise InputError(f"{path}: field '{INHERIT}' must name a config file, got {parent!r}")
    parent_path = path.parent / parent
    chain = (*children, path)
    if any(parent_path.resolve() == p.resolve() for p in chain):
        raise InputError(f"{path}: '{INHERIT}' makes a cycle: " + " -> ".join(str(p) for p in (*chain, parent_path)))
    return merge(_resolved(parent_path, chain), data)


def merge(base: dict, update: dict) -> dict:
    """`update` onto `base`: mappings merge key by key, any other value replaces (a new dict)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at `path` (or start empty), apply overrides, build `cls`."""
    return from_dict(cls, read(path, overrides))


def dump(cfg: Any, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
