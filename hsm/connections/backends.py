"""Making, checking and tearing down one physical connection, by scheme.

Every privileged act goes through supervdsmd (mount, umount, iscsiadm);
checks read /proc/self/mountinfo, which never blocks on the storage itself.
"""

from __future__ import annotations

import os
import re

from hsm.connections.uri import StorageURI, mountpoint
from hsm.errors import HsmError, MountError, StorageServerConnectionError
from supervdsm.client import SupervdsmClient

MOUNTED_SCHEMES = ("nfs", "posixfs")


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


def _succeeded(result: dict, error: type[HsmError] = StorageServerConnectionError) -> dict:
    """A privileged program's {rc, out, err}: a non-zero rc is a failure with its stderr."""
    if result.get("rc", 0) != 0:
        raise error(result.get("err", "").strip() or f"exit code {result['rc']}")
    return result


def iscsi_sessions(root: str = "/sys/class/iscsi_session") -> set[str]:
    """Targets this host has an iSCSI session with, from sysfs (readable without privileges)."""
    targets = set()
    for session in os.listdir(root) if os.path.isdir(root) else ():
        try:
            with open(os.path.join(root, session, "targetname")) as f:
                targets.add(f.read().strip())
        except OSError:
            continue
    return targets


class Backends:
    def __init__(self, supervdsm: SupervdsmClient, mount_root: str) -> None:
        self.supervdsm = supervdsm
        self.mount_root = mount_root

    def path(self, storage: StorageURI) -> str:
        """Where the connection's files are seen on this host ('' for iSCSI)."""
        if storage.scheme == "localfs":
            return storage.info["path"]
        if storage.scheme in MOUNTED_SCHEMES:
            return mountpoint(self.mount_root, storage)
        return ""

    def is_connected(self, storage: StorageURI) -> bool:
        if storage.scheme == "localfs":
            return os.path.isdir(storage.info["path"])
        if storage.scheme in MOUNTED_SCHEMES:
            return self.path(storage) in mounted_paths()
        return storage.info["target"] in iscsi_sessions()

    def connect(self, storage: StorageURI) -> None:
        try:
            if storage.scheme == "localfs":
                if not os.path.isdir(storage.info["path"]):
                    raise StorageServerConnectionError(f"{storage.info['path']}: no such directory")
            elif storage.scheme in MOUNTED_SCHEMES:
                _succeeded(self.supervdsm.call("mount", spec=storage.spec, mountpoint=self.path(storage),
                                               vfsType=storage.vfs_type, options=storage.options), MountError)
            else:
                self._iscsi_login(storage)
        except HsmError as e:
            if isinstance(e, (StorageServerConnectionError, MountError)):
                raise
            raise StorageServerConnectionError(str(e)) from None

    def _iscsi_login(self, storage: StorageURI) -> None:
        node = {"target": storage.info["target"], "portal": storage.info["portal"], "iface": storage.info["iface"]}
        _succeeded(self.supervdsm.call("iscsiNode", op="new", **node))
        if storage.user:
            for name, value in (("node.session.auth.authmethod", "CHAP"),
                                ("node.session.auth.username", storage.user),
                                ("node.session.auth.password", storage.password)):
                _succeeded(self.supervdsm.call("iscsiNode", op="update", name=name, value=value, **node))
        _succeeded(self.supervdsm.call("iscsiNode", op="login", **node))

    def disconnect(self, storage: StorageURI) -> None:
        if storage.scheme in MOUNTED_SCHEMES:
            if self.path(storage) in mounted_paths():
                self.supervdsm.call("umount", mountpoint=self.path(storage), lazy=True)
        elif storage.scheme == "iscsi":
            node = {"target": storage.info["target"], "portal": storage.info["portal"],
                    "iface": storage.info["iface"]}
            self.supervdsm.call("iscsiNode", op="logout", **node)
            self.supervdsm.call("iscsiNode", op="delete", **node)

    def iscsi_nodes(self) -> set[tuple[str, str]]:
        """The open-iscsi node records of this host as (portal, target); empty when they cannot be read."""
        try:
            result = self.supervdsm.call("iscsiNodeList")
        except HsmError:
            return set()
        nodes = set()
        for line in result.get("out", "").splitlines() if result.get("rc") == 0 else ():
            portal, _, target = line.strip().partition(" ")
            if target:
                nodes.add((portal.partition(",")[0], target))
        return nodes

    def unmanaged_mounts(self, managed: set[str]) -> dict[str, dict]:
        """Mounts under the mount root that no managed connection made."""
        prefix = self.mount_root.rstrip("/") + "/"
        return {path: info for path, info in mounted_paths().items()
                if path.startswith(prefix) and path not in managed}
