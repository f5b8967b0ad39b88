"""The host's mount table, read from /proc/self/mountinfo, which never blocks on the storage itself."""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """A mountinfo field as the kernel escaped it (space, tab, newline, backslash as \\ooo) made plain."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mounted_paths() -> dict[str, dict]:
    """Every mount point of this host: {path: {spec, vfsType}}."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            found[_unescape(fields[4])] = {"spec": _unescape(fields[dash + 2]), "vfsType": fields[dash + 1]}
    return found


def filesystem_of(path: str) -> str:
    """The type of the file system `path` is on, from the mount table alone (never touching the path)."""
    path = os.path.abspath(path)
    best, found = "", ""
    for mount, info in mounted_paths().items():
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, found = mount, info["vfsType"]
    return found
