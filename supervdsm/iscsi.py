"""iscsiadm: node and iface records, discovery, login and logout, with checked arguments."""

from __future__ import annotations

import re

from hsm.errors import InvalidParameterException
from hsm.ids import IQN
from supervdsm.command import run

_PORTAL = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}(,[0-9]{1,5})?$")
_IFACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Record settings a caller may change; CHAP secrets among them are never logged.
SETTINGS = frozenset({
    "node.startup", "node.session.auth.authmethod", "node.session.auth.username", "node.session.auth.password",
    "node.session.auth.username_in", "node.session.auth.password_in", "iface.transport_name",
    "iface.initiatorname", "iface.net_ifacename", "iface.hwaddress", "iface.ipaddress",
})
SECRET_SETTINGS = frozenset({"node.session.auth.password", "node.session.auth.password_in"})
_SETTING_VALUE = re.compile(r"^[A-Za-z0-9_.:@+/=-]{0,255}$")


def _check(what: str, pattern: re.Pattern, value: object) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):  # fullmatch: no trailing newline
        raise InvalidParameterException(f"{what}={value!r} is not acceptable")
    return value


def node(op: str, target: str, portal: str, iface: str, name: str, value: str, timeout: float) -> dict:
    argv = ["iscsiadm", "-m", "node", "-T", _check("target", IQN, target), "-p", _check("portal", _PORTAL, portal),
            "-I", _check("iface", _IFACE, iface)]
    if op in ("new", "delete"):
        argv += [f"--op={op}"]
    elif op == "update":
        if name not in SETTINGS:
            raise InvalidParameterException(f"setting {name!r} may not be changed")
        argv += ["--op=update", "-n", name, "-v", _check("value", _SETTING_VALUE, value)]
    elif op == "login":
        argv += ["-l"]
    elif op == "logout":
        argv += ["-u"]
    else:
        raise InvalidParameterException(f"op={op!r}: new, update, delete, login or logout")
    return run(argv, timeout)


def list_nodes(timeout: float) -> dict:
    return run(["iscsiadm", "-m", "node"], timeout)


def iface(op: str, name: str, timeout: float) -> dict:
    if op not in ("new", "delete"):
        raise InvalidParameterException(f"op={op!r}: new or delete")
    return run(["iscsiadm", "-m", "iface", "-I", _check("iface", _IFACE, name), f"--op={op}"], timeout)


def discover(portal: str, iface: str, timeout: float) -> dict:
    return run(["iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", _check("portal", _PORTAL, portal),
                "-I", _check("iface", _IFACE, iface)], timeout)


def redact(args: dict) -> dict:
    """The arguments as they may be logged: CHAP secrets replaced."""
    if args.get("name") in SECRET_SETTINGS:
        return {**args, "value": "********"}
    return args
