"""Sizes on the wire: decimal strings (XML-RPC ints stop at 2**31-1), ints accepted on input."""

from __future__ import annotations

import re
from typing import Any

from hsm.errors import InvalidParameterException

# ASCII digits only: str.isdigit() takes "²" and other scripts' digits, and int() of
# thousands of digits raises ValueError (Python's limit on int string conversion).
_DECIMAL = re.compile(r"[0-9]+")
MAX_DIGITS = 20  # 2**64 has 20 digits: no byte count hsm handles needs more


def _shown(value: Any) -> str:
    """The value as a message shows it: a long one is cut."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def parse_size(name: str, value: Any) -> int:
    """A byte count from the wire: a decimal string (ASCII digits) or an int, never negative."""
    if isinstance(value, bool):
        raise InvalidParameterException(f"{name}={value!r}: expected a decimal string")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        digits = value.strip().lstrip("0") or "0"
        if len(digits) > MAX_DIGITS:
            raise InvalidParameterException(f"{name}={_shown(value)}: more than {MAX_DIGITS} digits")
        number = int(digits)
    else:
        raise InvalidParameterException(f"{name}={_shown(value)}: expected a decimal string")
    if number < 0:
        raise InvalidParameterException(f"{name}={_shown(value)}: must not be negative")
    return number


def format_size(number: int) -> str:
    """Sizes go on the wire as decimal strings (XML-RPC ints stop at 2**31-1)."""
    return str(int(number))
