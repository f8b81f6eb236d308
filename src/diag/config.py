"""Typed configuration from YAML: dataclasses filled from dicts, with one-line errors.

Every YAML file diag reads (generate specs, training configs) is turned into dataclasses by
:func:`from_dict`, which rejects unknown fields (suggesting the closest name), coerces and checks
types, and names the file and the dotted field in every error. ``--set key=value`` overrides
are applied to the raw dict first with :func:`apply_overrides`.

>>> from dataclasses import dataclass
>>> @dataclass
... class Opt:
...     steps: int = 30
>>> from_dict(Opt, {"steps": "12"}, "spec.yaml").steps
12
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from diag.errors import DiagError, where

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    path = Path(path)
    if path.is_dir():
        raise DiagError(f"config file {where(path)} is a folder, not a file: give the path of a "
                        "YAML file")
    if not path.is_file():
        raise DiagError(f"config file {where(path)} does not exist: check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DiagError(f"bad YAML in {where(path)}{at}: {problem}; fix the syntax") from None
    except UnicodeDecodeError:
        raise DiagError(f"{where(path)} is not a UTF-8 text file: give a YAML file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DiagError(f"{where(path)} must hold a YAML mapping (key: value lines), "
                        f"not a {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, source: str = "--set"
                    ) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place.

    A number in the path picks a list item: ``defects.0.count=40`` sets the first defect's
    count.

    >>> apply_overrides({"defects": [{"count": 1}]}, ["defects.0.count=40", "seed=3"])
    {'defects': [{'count': 40}], 'seed': 3}
    """
    for item in overrides or []:
        if "=" not in item:
            raise DiagError(f"{source} '{item}' is not of the form key=value "
                            "(e.g. --set generator.steps=10)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise DiagError(f"{source} '{item}': {'.'.join(parts[:depth]) or 'it'} is a "
                                    f"list of {len(node)} items: use an index from 0 to "
                                    f"{len(node) - 1}")
                if last:
                    node[int(part)] = value
                else:
                    if not isinstance(node[int(part)], (dict, list)):
                        node[int(part)] = {}
                    node = node[int(part)]
            elif last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return data


def _coerce(value: Any, tp: Any, field: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field, source)
            except DiagError as exc:
                errors.append(str(exc))
        raise DiagError(errors[-1] if errors else f"{source}: bad value for {field}")
    if origin is typing.Literal:
        if value not in args:
            raise DiagError(f"{source}: {field} is '{value}', expected one of "
                            f"{', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise DiagError(f"{source}: {field} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise DiagError(f"{source}: {field} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{field}[{i}]", source)
                         for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{field}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise DiagError(f"{source}: {field} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=f"{field}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise DiagError(f"{source}: {field} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise DiagError(f"{source}: {field} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
            try:  # "1e9" (YAML reads exponents without a dot as text), "40.0"
                number = float(value)
            except ValueError:
                pass
            else:
                if number.is_integer():
                    return int(number)
        raise DiagError(f"{source}: {field} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            except ValueError:
                pass
        if number is None:
            raise DiagError(f"{source}: {field} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise DiagError(f"{source}: {field} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise DiagError(f"{source}: {field} must be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking field names and types.

    Args:
        cls: The dataclass type.
        data: The mapping (from YAML).
        source: Where the data came from, for error messages (e.g. ``spec 'crack.yaml'``).
        prefix: Dotted path of ``data`` inside the whole config, for error messages.
    """
    name = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DiagError(f"{source}: {name} must be a mapping (key: value), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key = str(key).replace("-", "_") if str(key).replace("-", "_") in fields else str(key)
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(fields)}"
            raise DiagError(f"{source}: unknown field '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise DiagError(f"{source}: missing required field '{prefix}{missing[0]}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(source, prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (paths as strings), for YAML/JSON. Fields marked
    ``metadata={"omit_none": True}`` are left out while they are None (so files written before
    such an optional field existed still compare equal)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def resolve_path(value: str, base: Path) -> str:
    """``value`` as an absolute path: as it is when absolute (``~`` expanded), else relative
    to ``base`` (a config file's folder).

    >>> resolve_path("/data/x", Path("/cfg")), resolve_path("data", Path("/cfg"))
    ('/data/x', '/cfg/data')
    """
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
