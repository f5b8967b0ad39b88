"""Sizes on the wire: decimal strings (XML-RPC ints stop at 2**31-1), ints accepted on input."""

from __future__ import annotations

from typing import Any

from hsm.errors import InvalidParameterException


def parse_size(name: str, value: Any) -> int:
    """A byte count from the wire: a decimal string or an int, never negative."""
    if isinstance(value, bool):
        raise InvalidParameterException(f"{name}={value!r}: expected a decimal string")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        raise InvalidParameterException(f"{name}={value!r}: expected a decimal string")
    if number < 0:
        raise InvalidParameterException(f"{name}={value!r}: must not be negative")
    return number


def format_size(number: int) -> str:
    """Sizes go on the wire as decimal strings (XML-RPC ints stop at 2**31-1)."""
    return str(int(number))
