"""Marking methods as verbs and finding them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hsm.errors import InvalidParameterException


@dataclass(frozen=True)
class Verb:
    name: str
    func: Callable[..., dict]
    mutating: bool
    signature: inspect.Signature
    when: Callable[[tuple], bool] | None = None  # a second form of a name: whether it takes these arguments
    other: Verb | None = None                    # the name's second form

    def form_for(self, args: tuple | list) -> Verb:
        """The form of this verb that serves `args` (VDSM's legacy forms share three names with the new API)."""
        if self.other is not None and self.other.when is not None and self.other.when(tuple(args)):
            return self.other
        return self


def verb(mutating: bool = False, name: str | None = None,
         when: Callable[[tuple], bool] | None = None) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Exposes a method as a verb, under its own name or `name`. Mutating verbs honour options.requestId.

    A name may have two forms: the second gives `when`, which tells from the arguments alone that a
    call is for it.
    """
    def mark(func: Callable[..., dict]) -> Callable[..., dict]:
        func.__hsm_verb__ = {"mutating": mutating, "name": name, "when": when}  # type: ignore[attr-defined]
        return func
    return mark


def collect(groups: list[object]) -> dict[str, Verb]:
    """Every verb of every group object, by wire name; a name may appear once, or twice as two forms."""
    found: dict[str, Verb] = {}
    for group in groups:
        for attribute, member in inspect.getmembers(group, inspect.ismethod):
            marks = getattr(member, "__hsm_verb__", None)
            if marks is None:
                continue
            name = marks["name"] or attribute
            made = Verb(name, member, marks["mutating"], inspect.signature(member), marks["when"])
            known = found.get(name)
            if known is None:
                found[name] = made
                continue
            first, second = (known, made) if made.when is not None else (made, known)
            if known.other is not None or first.when is not None or second.when is None:
                raise ValueError(f"verb {name} defined twice")
            found[name] = replace(first, other=second)
    return found


def require_str(name: str, value: Any, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise InvalidParameterException(f"{name}={value!r}: expected a non-empty string")
    return value
