"""Typed records for the run-directory contract: documented dataclass fields ↔ JSON.

A record is a dataclass whose fields are declared with :func:`doc` (the field's meaning, its
JSON key when it is not a Python name, and whether a finished run may lack it). This module
turns such records into the JSON the contract stores and back, checks values against the
declared types, names every flattened column (:class:`Columns`) and a record's own keys
(:class:`Keys`), and renders the field table of ``docs/run-directory.md`` (:func:`markdown_rows`).

A key the source did not give is :data:`ABSENT` (left out of the JSON), which is not ``None``
(written as ``null``): old summaries and imported runs lack many keys, and that is visible.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union, final

from repeatability.records.errors import RunDirError


@final  # one instance, ABSENT: Self would not describe it
class _Absent:
    """The key is not in the record (not the same as ``null``)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False

    def __deepcopy__(self, memo: dict) -> _Absent:
        return self


ABSENT: Any = _Absent()
_NONFINITE = ("nan", "inf", "-inf")


def doc(text: str, *, key: str | None = None, optional: bool = False) -> Any:
    """A documented field. ``key``: its JSON key when that is not a Python name (``class``);
    ``optional``: a finished run of the harness may lack it (CUDA-only memory, a diverged run's
    unscored metrics); every other field is required of finished runs (:func:`missing`)."""
    return dataclasses.field(default=ABSENT, metadata={"doc": text, "key": key, "optional": optional})


def json_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _source(cls: type) -> str:
    """The file that declares record ``cls`` (for error messages)."""
    return cls.__module__.replace(".", "/") + ".py"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (hint, False)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _is_record(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _check_leaf(value: Any, hint: Any, where: str) -> Any:
    """A JSON value of a declared type; non-finite floats may be stored as "nan"/"inf"/"-inf"."""
    origin = typing.get_origin(hint) or hint
    ok = {
        str: lambda v: isinstance(v, str),
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in _NONFINITE,
        list: lambda v: isinstance(v, (list, tuple)),
        dict: lambda v: isinstance(v, dict),
        Any: lambda v: True,
    }.get(origin, lambda v: True)
    if not ok(value):
        raise RunDirError(f"summary key {where}: {value!r} is not a {getattr(origin, '__name__', origin)}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build record ``cls`` from its JSON form; unknown keys and wrong types raise
    :class:`RunDirError` naming the key; keys not given stay :data:`ABSENT`."""
    if not isinstance(data, dict):
        raise RunDirError(f"summary key {where or '.'}: expected an object, got {data!r}")
    fields = {json_key(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RunDirError(f"summary key {where + '.' if where else ''}{unknown[0]} is not in the summary schema "
                          f"({_source(cls)}, {cls.__name__}); add it there and to docs/run-directory.md")
    hints = _hints(cls)
    values = {}
    for key, value in data.items():
        f = fields[key]
        values[f.name] = _convert(value, hints[f.name], f"{where}.{key}" if where else key)
    try:
        return cls(**values)
    except ValueError as exc:  # a record's own __post_init__ check
        raise RunDirError(f"summary key {where or '.'}: {exc}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    if value is None or value is ABSENT:
        return value
    inner, _ = _strip_optional(hint)
    if _is_record(inner):
        return value if isinstance(value, inner) else from_dict(inner, value, where)
    origin = typing.get_origin(inner)
    if origin is list and typing.get_args(inner) and _is_record(typing.get_args(inner)[0]):
        item = typing.get_args(inner)[0]
        return [v if isinstance(v, item) else from_dict(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _check_leaf(value, inner, where)


def to_dict(record: Any) -> dict[str, Any]:
    """The record's JSON form: :data:`ABSENT` fields left out, ``None`` kept as ``null``."""
    out: dict[str, Any] = {}
    hints = _hints(type(record))
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is ABSENT:
            continue
        _convert(value, hints[f.name], f.name)  # type check on the way out too
        out[json_key(f)] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def missing(record: Any, prefix: str = "") -> list[str]:
    """Dotted keys a finished run must have but ``record`` lacks (:data:`ABSENT`, not optional)."""
    out = []
    hints = _hints(type(record))
    for f in dataclasses.fields(record):
        path = f"{prefix}{json_key(f)}"
        value = getattr(record, f.name)
        if value is ABSENT:
            if not f.metadata.get("optional"):
                out.append(path)
        elif _is_record(_strip_optional(hints[f.name])[0]) and value is not None:
            out += missing(value, f"{path}.")
    return out


class Columns(str):
    """A dotted column of the flattened record whose every part is a declared field.

    ``Columns.of(Summary).metrics.perplexity_token_weighted == "metrics.perplexity_token_weighted"``;
    a misspelt part raises ``AttributeError`` where it is written. ``getattr(col, name)``
    addresses a field chosen at run time (``getattr(S.seeds, source)``).
    """

    _record: Any

    @classmethod
    def of(cls, record: type, path: str = "") -> Columns:
        node = super().__new__(cls, path)
        node._record = record
        return node

    def __getattr__(self, name: str) -> Columns:
        record = object.__getattribute__(self, "_record")
        if name.startswith("_") or not _is_record(record):
            raise AttributeError(name)
        for f in dataclasses.fields(record):
            if name in (f.name, json_key(f)):
                inner, _ = _strip_optional(_hints(record)[f.name])
                path = f"{self!s}.{json_key(f)}" if str(self) else json_key(f)
                return Columns.of(inner if _is_record(inner) else None, path)
        raise AttributeError(f"{record.__name__} has no field {name!r} ({_source(record)})")


class Keys:
    """The JSON keys of one record's fields as attributes: ``Keys(Metrics).steps == "steps"``. Code
    that fills or reads a group by key names it so; a misspelt key raises ``AttributeError`` where
    it is written, not when a run's summary is checked at its end."""

    def __init__(self, record: type) -> None:
        self._record = record
        for f in dataclasses.fields(record):
            setattr(self, f.name, json_key(f))

    def __getattr__(self, name: str) -> str:  # only reached for a name that is not a field
        record = self.__dict__.get("_record")
        raise AttributeError(f"{getattr(record, '__name__', record)} has no field {name!r}"
                             + (f" ({_source(record)})" if record is not None else ""))


def _type_name(hint: Any) -> str:
    inner, nullable = _strip_optional(hint)
    if _is_record(inner):
        name = "object"
    elif typing.get_origin(inner) is list:
        args = typing.get_args(inner)
        name = f"list of {'objects' if args and _is_record(args[0]) else _type_name(args[0]) if args else 'values'}"
    elif typing.get_origin(inner) is dict or inner is dict:
        name = "object"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if nullable else name


def markdown_rows(record: type, prefix: str = "") -> list[str]:
    """One table row per field, nested records expanded after their own row (dotted keys)."""
    rows = []
    hints = _hints(record)
    for f in dataclasses.fields(record):
        path = f"{prefix}{json_key(f)}"
        text = f.metadata["doc"] + (" *(may be absent)*" if f.metadata.get("optional") else "")
        rows.append(f"| `{path}` | {_type_name(hints[f.name])} | {text} |")
        inner, _ = _strip_optional(hints[f.name])
        if typing.get_origin(inner) is list and typing.get_args(inner) and _is_record(typing.get_args(inner)[0]):
            inner, path = typing.get_args(inner)[0], f"{path}[]"
        if _is_record(inner):
            rows += markdown_rows(inner, f"{path}.")
    return rows

