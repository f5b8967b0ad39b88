"""Running a program for a privileged verb: argv only (never a shell), a timeout, typed failures."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable

from hsm.errors import InvalidParameterException, NotAvailable, StorageTimeout

# A value that goes into an argv: no leading "-" (it would read as an option),
# nothing outside a plain set of characters.
_VALUE = re.compile(r"^[A-Za-z0-9_.+/:=@,%|-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,127}$")


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = ()) -> dict:
    """{rc, out, err} of the program; StorageTimeout when it outlives `timeout` (it is killed).

    `pass_fds` stay open, with the same numbers, in the program (all others are closed).
    """
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})}, check=False, pass_fds=pass_fds)
    except subprocess.TimeoutExpired:
        raise StorageTimeout(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} killed after {timeout} s") from None
    except FileNotFoundError:
        raise NotAvailable(f"{argv[0]} is not installed") from None
    return {"rc": done.returncode, "out": done.stdout.decode(errors="replace"),
            "err": done.stderr.decode(errors="replace")}


Check = Callable[[str], bool]  # an allow-list check of one argument value


def matches(pattern: str) -> Check:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def choice(*allowed: str) -> Check:
    return lambda value: value in allowed


def check_value(what: str, value: str) -> str:
    if not isinstance(value, str) or value.startswith("-") or not _VALUE.fullmatch(value) or ".." in value:
        raise InvalidParameterException(f"{what}={value!r}: not an acceptable value")
    return value


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidParameterException(f"{what}={value!r}: letters, digits, '_', '+', '.', '-' only")
    return value


def check_path(what: str, value: str, roots: list[str] | None = None) -> str:
    """An absolute, normalized path (no "..", no leading "-"), resolved under one of `roots` if given."""
    if (not isinstance(value, str) or not value.startswith("/") or os.path.normpath(value) != value
            or not _VALUE.fullmatch(value)):
        raise InvalidParameterException(f"{what}={value!r}: expected an absolute normalized path")
    if roots is not None:
        real = os.path.realpath(value)
        if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in map(os.path.realpath, roots)):
            raise InvalidParameterException(f"{what}={value!r}: not under {', '.join(roots)}")
    return value
