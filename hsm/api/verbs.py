"""Marking methods as verbs and finding them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hsm.errors import InvalidParameterException


@dataclass(frozen=True)
class Verb:
    name: str
    func: Callable[..., dict]
    mutating: bool
    signature: inspect.Signature


def verb(mutating: bool = False) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Exposes a method under its own name. Mutating verbs honour options.requestId."""
    def mark(func: Callable[..., dict]) -> Callable[..., dict]:
        func.__hsm_verb__ = {"mutating": mutating}  # type: ignore[attr-defined]
        return func
    return mark


def collect(groups: list[object]) -> dict[str, Verb]:
    """Every verb of every group object, by wire name; a name may appear once."""
    found: dict[str, Verb] = {}
    for group in groups:
        for name, member in inspect.getmembers(group, inspect.ismethod):
            marks = getattr(member, "__hsm_verb__", None)
            if marks is None:
                continue
            if name in found:
                raise ValueError(f"verb {name} defined twice")
            found[name] = Verb(name, member, marks["mutating"], inspect.signature(member))
    return found


def require_str(name: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidParameterException(f"{name}={value!r}: expected a non-empty string")
    return value
