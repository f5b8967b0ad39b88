"""The lvm verb's --config string: parsed, checked against known sections and keys, written back.

Only what hsm and VDSM send is accepted: the device filter and scanning
settings, locking, activation and backup retention. Everything else (log
files, backup and archive folders, `global/etc`, programs to run) is refused,
whatever its name. What lvm receives is the string written back from the parse,
so lvm never reads anything this module did not understand.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hsm.errors import InvalidParameterException

Value = int | str | list
Check = Callable[[Value], bool]

_TOKEN = re.compile(r'\s*(?:([{}=\[\],])|"([^"\\\x00-\x1f\x7f]*)"|([A-Za-z_][A-Za-z0-9_]*)|(-?[0-9]+))')
_MAX_LENGTH = 65536


def _flag(value: Value) -> bool:
    return type(value) is int and value in (0, 1)


def _count(value: Value) -> bool:
    return type(value) is int and 0 <= value <= 1_000_000


def _one_of(*allowed: int | str) -> Check:
    return lambda value: type(value) in (int, str) and value in allowed


def _strings(check: Callable[[str], bool]) -> Check:
    return lambda value: isinstance(value, list) and len(value) <= 4096 and all(
        isinstance(item, str) and check(item) for item in value)


def _filter_entry(item: str) -> bool:
    """'a|regex|' or 'r|regex|': accept or reject, the regex between two equal delimiters."""
    return len(item) >= 3 and item[0] in "ar" and item[1] in "|%/#!@" and item[-1] == item[1]


def _regex(item: str) -> bool:
    return 0 < len(item) <= 4096


def _device(item: str) -> bool:
    return item.startswith("/dev/") and ".." not in item


# Every section and key a caller may set, each with the check its value must pass.
KNOWN: dict[str, dict[str, Check]] = {
    "devices": {
        "filter": _strings(_filter_entry),
        "global_filter": _strings(_filter_entry),
        "preferred_names": _strings(_regex),
        "ignore_suspended_devices": _flag,
        "write_cache_state": _flag,
        "disable_after_error_count": _count,
        "obtain_device_list_from_udev": _flag,
        "use_devicesfile": _flag,
        "hints": _one_of("none", "all"),
        "issue_discards": _flag,
    },
    "global": {
        "activation": _flag,
        "locking_type": _one_of(1, 4),       # VDSM before lvm 2.03 sent it; 2.03 ignores it
        "prioritise_write_locks": _flag,
        "wait_for_locks": _flag,
        "use_lvmpolld": _flag,
        "use_lvmetad": _one_of(0),
    },
    "activation": {
        "udev_sync": _flag,
        "udev_rules": _flag,
        "monitoring": _flag,
    },
    "backup": {
        "retain_min": _count,
        "retain_days": _count,
        "backup": _flag,
        "archive": _flag,
    },
}


def _tokens(text: str) -> list[tuple[str, Value]]:
    tokens: list[tuple[str, Value]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if match is None:
            raise InvalidParameterException(f"config: cannot parse at {text[position:position + 20].strip()!r}")
        punct, string, name, number = match.groups()
        if punct:
            tokens.append(("punct", punct))
        elif string is not None:
            tokens.append(("string", string))
        elif name:
            tokens.append(("name", name))
        else:
            tokens.append(("int", int(number)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, Value]]) -> None:
        self.tokens = tokens
        self.at = 0

    def take(self, kind: str, value: Value | None = None) -> Value:
        if self.at >= len(self.tokens):
            raise InvalidParameterException("config: ends too early")
        got_kind, got = self.tokens[self.at]
        if got_kind != kind or (value is not None and got != value):
            raise InvalidParameterException(f"config: expected {value or kind}, found {got!r}")
        self.at += 1
        return got

    def peek(self, value: str) -> bool:
        return self.at < len(self.tokens) and self.tokens[self.at] == ("punct", value)

    def value(self) -> Value:
        if self.peek("["):
            self.take("punct", "[")
            items: list = []
            while not self.peek("]"):
                if items:
                    self.take("punct", ",")
                items.append(self.scalar())
            self.take("punct", "]")
            return items
        return self.scalar()

    def scalar(self) -> Value:
        kind = self.tokens[self.at][0] if self.at < len(self.tokens) else "end"
        if kind not in ("string", "int"):
            raise InvalidParameterException("config: expected a number or a quoted string")
        return self.take(kind)


def parse(config: str) -> dict[str, dict[str, Value]]:
    """{section: {key: value}} of an lvm --config string; InvalidParameterException for anything not known."""
    if not isinstance(config, str) or len(config) > _MAX_LENGTH or "\n" in config or "\0" in config:
        raise InvalidParameterException("config: expected one line of LVM configuration")
    parser = _Parser(_tokens(config))
    settings: dict[str, dict[str, Value]] = {}
    while parser.at < len(parser.tokens):
        section = str(parser.take("name"))
        if section not in KNOWN:
            raise InvalidParameterException(f"config: section {section!r} is not accepted "
                                            f"(known: {', '.join(KNOWN)})")
        parser.take("punct", "{")
        values = settings.setdefault(section, {})
        while not parser.peek("}"):
            key = str(parser.take("name"))
            if key not in KNOWN[section]:
                raise InvalidParameterException(f"config: {section}/{key} is not accepted")
            if key in values:
                raise InvalidParameterException(f"config: {section}/{key} is given twice")
            parser.take("punct", "=")
            value = parser.value()
            if not KNOWN[section][key](value):
                raise InvalidParameterException(f"config: {section}/{key}={value!r} is not an accepted value")
            values[key] = value
            if parser.peek(","):  # VDSM's older string separates settings with commas
                parser.take("punct", ",")
        parser.take("punct", "}")
    return settings


def _write_value(value: Value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_write_value(item) for item in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def canonical(config: str) -> str:
    """The checked --config string as lvm will be given it."""
    return " ".join(
        f"{section} {{ " + " ".join(f"{key}={_write_value(value)}" for key, value in values.items()) + " }"
        for section, values in parse(config).items())
