"""Storage URI schemes: one class each, in one table, SCHEMES, that URI parsing and the backends both use.

A scheme checks and normalizes its URIs into a StorageURI, and makes, checks and tears down the
physical connection one names. Adding a scheme is one class and one entry in SCHEMES.
Every privileged act goes through supervdsmd (mount, umount, iscsiadm); checks read the mount
table or sysfs, which never block on the storage itself.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from hsm.connections.mountinfo import mounted_paths
from hsm.errors import HsmError, InvalidConnectionURI, MountError, StorageServerConnectionError
from hsm.ids import is_iqn
from supervdsm.client import SupervdsmClient

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^\[[0-9A-Fa-f:.]+\]$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:/=,-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class StorageURI:
    """A checked storage URI. Two URIs that name the same storage the same way have the same `key`:
    the physical connection that any number of CIDs share. Neither `key` nor `info` holds a password."""

    scheme: str
    key: str                               # normalized, without secrets: one physical connection
    info: dict = field(default_factory=dict)   # what answers show (no password)
    user: str = ""
    password: str = field(default="", repr=False)

    # Mount-based schemes
    @property
    def spec(self) -> str:
        return self.info.get("spec", "")

    @property
    def vfs_type(self) -> str:
        return self.info.get("vfsType", "")

    @property
    def options(self) -> str:
        return self.info.get("options", "")


@dataclass(frozen=True)
class Host:
    """What a scheme acts through on this host: supervdsmd for privileged acts, and the root mounts go under."""

    supervdsm: SupervdsmClient
    mount_root: str


class Scheme(abc.ABC):
    """One kind of storage URI: how it is checked and how the connection it names is made, checked and
    torn down."""

    name: str  # the URI scheme, its key in SCHEMES

    @abc.abstractmethod
    def parse(self, uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
        """`uri` (split as `parts`) checked and normalized; InvalidConnectionURI when it is not valid."""

    @abc.abstractmethod
    def path(self, storage: StorageURI, host: Host) -> str:
        """Where the connection's files are seen on this host ('' when it has no files)."""

    @abc.abstractmethod
    def is_connected(self, storage: StorageURI, host: Host) -> bool:
        """Whether the connection is up, from a cheap look that never touches the storage."""

    @abc.abstractmethod
    def connect(self, storage: StorageURI, host: Host) -> None:
        """Make the connection; an HsmError when it cannot be made."""

    @abc.abstractmethod
    def disconnect(self, storage: StorageURI, host: Host) -> None:
        """Tear the connection down as far as it goes; never an error for what is already gone."""


def _params(query: str, allowed: set[str], uri: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidConnectionURI(f"{uri}: malformed query") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise InvalidConnectionURI(f"{uri}: unknown parameter {name!r} (known: {', '.join(sorted(allowed))})")
        if name in params:
            raise InvalidConnectionURI(f"{uri}: parameter {name!r} given twice")
        if not _VALUE.fullmatch(value):
            raise InvalidConnectionURI(f"{uri}: {name}={value!r} has characters that are not allowed")
        params[name] = value
    return params


def _host_port(netloc: str, uri: str) -> tuple[str, int | None]:
    parsed = urllib.parse.urlsplit(f"//{netloc}")
    try:
        port = parsed.port
    except ValueError:
        raise InvalidConnectionURI(f"{uri}: bad port") from None
    host = parsed.hostname or ""
    host = f"[{host}]" if ":" in host else host
    if not _HOST.fullmatch(host):
        raise InvalidConnectionURI(f"{uri}: bad host {host!r}")
    return host.lower(), port


def _clean_path(path: str, uri: str) -> str:
    if not path.startswith("/") or "\x00" in path or any(part == ".." for part in path.split("/")):
        raise InvalidConnectionURI(f"{uri}: expected an absolute path without '..'")
    return os.path.normpath(path)


def _succeeded(result: dict, error: type[HsmError] = StorageServerConnectionError) -> dict:
    """A privileged program's {rc, out, err}: a non-zero rc is a failure with its stderr."""
    if result.get("rc", 0) != 0:
        raise error(result.get("err", "").strip() or f"exit code {result['rc']}")
    return result


def mountpoint(root: str, storage: StorageURI) -> str:
    """Where a mount-based connection is mounted: under `root`, named after its spec as VDSM named
    them, with a short digest of the key so that one spec mounted two ways gets two places."""
    digest = hashlib.sha1(storage.key.encode()).hexdigest()[:8]
    return os.path.join(root, f"{storage.spec.replace('_', '__').replace('/', '_')}.{digest}")


class MountedScheme(Scheme):
    """A scheme whose connection is a mount that supervdsmd makes under the mount root."""

    def path(self, storage: StorageURI, host: Host) -> str:
        return mountpoint(host.mount_root, storage)

    def is_connected(self, storage: StorageURI, host: Host) -> bool:
        return self.path(storage, host) in mounted_paths()

    def connect(self, storage: StorageURI, host: Host) -> None:
        _succeeded(host.supervdsm.call("mount", spec=storage.spec, mountpoint=self.path(storage, host),
                                       vfsType=storage.vfs_type, options=storage.options), MountError)

    def disconnect(self, storage: StorageURI, host: Host) -> None:
        if self.is_connected(storage, host):
            host.supervdsm.call("umount", mountpoint=self.path(storage, host), lazy=True)


class NfsScheme(MountedScheme):
    """nfs://server[:port]/export?version=4.2&retrans=3&timeo=600, mounted soft and unshared."""

    name = "nfs"
    PARAMS = {"version": "vers", "retrans": "retrans", "timeo": "timeo", "proto": "proto"}  # URI's -> mount's

    def parse(self, uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
        if parts.username or parts.password:
            raise InvalidConnectionURI(f"{uri}: NFS takes no user or password")
        host, port = _host_port(parts.netloc, uri)
        export = _clean_path(urllib.parse.unquote(parts.path), uri)
        params = _params(parts.query, set(self.PARAMS), uri)
        options = [f"{self.PARAMS[name]}={value}" for name, value in sorted(params.items())]
        if port:
            options.append(f"port={port}")
        query = "&".join(f"{name}={value}" for name, value in sorted(params.items()))
        key = f"nfs://{host}{f':{port}' if port else ''}{export}" + (f"?{query}" if query else "")
        info: dict[str, object] = {"scheme": self.name, "server": host, "export": export, "spec": f"{host}:{export}",
                "vfsType": "nfs", "options": ",".join(["soft", "nosharecache", *options])}
        if port:
            info["port"] = port
        return StorageURI(self.name, key, info)


class PosixfsScheme(MountedScheme):
    """posixfs://?spec=/dev/sdb1&vfsType=ext4&options=noatime: any mount the kernel can make."""

    name = "posixfs"

    def parse(self, uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
        if parts.netloc or parts.path not in ("", "/"):
            raise InvalidConnectionURI(f"{uri}: expected posixfs://?spec=...&vfsType=...&options=...")
        params = _params(parts.query, {"spec", "vfsType", "options"}, uri)
        if "spec" not in params or "vfsType" not in params:
            raise InvalidConnectionURI(f"{uri}: spec and vfsType are required")
        spec = params["spec"] if ":" in params["spec"] else _clean_path(params["spec"], uri)
        if not _NAME.fullmatch(params["vfsType"]):
            raise InvalidConnectionURI(f"{uri}: bad vfsType")
        options = ",".join(sorted(filter(None, params.get("options", "").split(","))))
        key = f"posixfs://?spec={spec}&vfsType={params['vfsType']}" + (f"&options={options}" if options else "")
        return StorageURI(self.name, key, {"scheme": self.name, "spec": spec, "vfsType": params["vfsType"],
                                           "options": options})


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


def _node(storage: StorageURI) -> dict[str, str]:
    """The open-iscsi node record of an iSCSI connection, as supervdsmd's iscsiNode names it."""
    return {"target": storage.info["target"], "portal": storage.info["portal"], "iface": storage.info["iface"]}


class IscsiScheme(Scheme):
    """iscsi://[user:password@]portal[:port]/iqn[?iface=name]: an open-iscsi node record and its session.
    The CHAP password goes to the node record only: never into the key, the info or a log."""

    name = "iscsi"

    def parse(self, uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
        host, port = _host_port(parts.netloc.rpartition("@")[2], uri)
        iqn = urllib.parse.unquote(parts.path.lstrip("/"))
        if not is_iqn(iqn):
            raise InvalidConnectionURI(f"{uri}: expected a target name such as iqn.2026-11.org.example:disk1")
        params = _params(parts.query, {"iface"}, uri)
        iface = params.get("iface", "default")
        if not _NAME.fullmatch(iface):
            raise InvalidConnectionURI(f"{uri}: bad iface")
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        if password and not user:
            raise InvalidConnectionURI(f"{uri}: a password needs a user")
        portal = f"{host}:{port or 3260}"
        key = f"iscsi://{user + '@' if user else ''}{portal}/{iqn}?iface={iface}"
        info = {"scheme": self.name, "portal": portal, "target": iqn, "iface": iface}
        if user:
            info["user"] = user
        return StorageURI(self.name, key, info, user, password)

    def path(self, storage: StorageURI, host: Host) -> str:
        return ""  # a session to block devices: no files of its own

    def is_connected(self, storage: StorageURI, host: Host) -> bool:
        return storage.info["target"] in iscsi_sessions()

    def connect(self, storage: StorageURI, host: Host) -> None:
        node = _node(storage)
        _succeeded(host.supervdsm.call("iscsiNode", op="new", **node))
        if storage.user:
            for name, value in (("node.session.auth.authmethod", "CHAP"),
                                ("node.session.auth.username", storage.user),
                                ("node.session.auth.password", storage.password)):
                _succeeded(host.supervdsm.call("iscsiNode", op="update", name=name, value=value, **node))
        _succeeded(host.supervdsm.call("iscsiNode", op="login", **node))

    def disconnect(self, storage: StorageURI, host: Host) -> None:
        node = _node(storage)
        host.supervdsm.call("iscsiNode", op="logout", **node)
        host.supervdsm.call("iscsiNode", op="delete", **node)


class LocalfsScheme(Scheme):
    """localfs:///path: a directory of this host, connected when it is there."""

    name = "localfs"

    def parse(self, uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
        if parts.netloc or parts.query or parts.username:
            raise InvalidConnectionURI(f"{uri}: expected localfs:///absolute/path")
        path = _clean_path(urllib.parse.unquote(parts.path), uri)
        return StorageURI(self.name, f"localfs://{path}", {"scheme": self.name, "path": path})

    def path(self, storage: StorageURI, host: Host) -> str:
        return storage.info["path"]

    def is_connected(self, storage: StorageURI, host: Host) -> bool:
        return os.path.isdir(storage.info["path"])

    def connect(self, storage: StorageURI, host: Host) -> None:
        if not os.path.isdir(storage.info["path"]):
            raise StorageServerConnectionError(f"{storage.info['path']}: no such directory")

    def disconnect(self, storage: StorageURI, host: Host) -> None:
        pass  # the directory is the host's own: nothing was made


SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in
                              (NfsScheme(), PosixfsScheme(), IscsiScheme(), LocalfsScheme())}
