"""Typed, frozen stage configs built once from a Kedro parameter tree.

Every stage declares its parameters as a frozen dataclass whose defaults are the values of its
``conf/base/parameters_<stage>.yml`` (a test keeps the two equal). The node builds it once with
:func:`build_config`; core functions take the config, never the raw dict. Unknown keys and values
of the wrong type are a :class:`ParameterError` that names the full parameter path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from leader_kedro.contracts import ParameterError

__all__ = ["ParameterError", "as_dict", "build_config"]

T = TypeVar("T")


def build_config(cls: type[T], tree: Mapping[str, Any] | None, where: str) -> T:
    """An instance of the frozen dataclass ``cls`` from the parameter tree found at ``where``.

    Keys absent from ``tree`` take the dataclass default; nested dataclass fields recurse; lists
    become tuples where the field says so; ints are accepted for floats.
    """
    if tree is None:
        tree = {}
    if isinstance(tree, cls):
        return tree
    if not isinstance(tree, Mapping):
        raise ParameterError(f"{where} must be a mapping of parameters, got {type(tree).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {[f'{where}.{k}' for k in unknown]}; "
            f"{where} accepts {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in tree.items():
        values[name] = _coerce(value, hints[name], f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ParameterError(f"missing parameter(s) {[f'{where}.{k}' for k in missing]}")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ParameterError as exc:
                errors.append(str(exc))
        raise ParameterError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise ParameterError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where} must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ParameterError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParameterError(f"{where} must be a string, got {value!r}")
        return value
    return value


def as_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON-friendly data (tuples become lists), e.g. for MLflow or a card."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
