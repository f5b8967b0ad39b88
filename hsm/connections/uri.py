"""Storage URIs: parsed, checked, normalized, and shown without their secrets.

    nfs://server[:port]/export?version=4.2&retrans=3&timeo=600
    posixfs://?spec=/dev/sdb1&vfsType=ext4&options=noatime    (any mount the kernel can make)
    iscsi://[user:password@]portal[:port]/iqn[?iface=name]
    localfs:///path

Two URIs that name the same storage the same way have the same `key`: the
physical connection that any number of CIDs share. The key never holds a
password.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field

from hsm.errors import InvalidConnectionURI
from hsm.ids import is_iqn

SCHEMES = ("nfs", "posixfs", "iscsi", "localfs")
NFS_PARAMS = {"version": "vers", "retrans": "retrans", "timeo": "timeo", "proto": "proto"}
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^\[[0-9A-Fa-f:.]+\]$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:/=,-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class StorageURI:
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


def _host(netloc: str, uri: str) -> tuple[str, int | None]:
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


def parse(uri: object) -> StorageURI:
    if not isinstance(uri, str) or not uri:
        raise InvalidConnectionURI(f"{uri!r}: expected a URI string")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as e:
        raise InvalidConnectionURI(f"{uri}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidConnectionURI(f"{uri}: unknown scheme {parts.scheme!r} (known: {', '.join(SCHEMES)})")
    if parts.fragment:
        raise InvalidConnectionURI(f"{uri}: no '#' part is allowed")
    return {"nfs": _nfs, "posixfs": _posixfs, "iscsi": _iscsi, "localfs": _localfs}[scheme](uri, parts)


def _nfs(uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
    if parts.username or parts.password:
        raise InvalidConnectionURI(f"{uri}: NFS takes no user or password")
    host, port = _host(parts.netloc, uri)
    export = _clean_path(urllib.parse.unquote(parts.path), uri)
    params = _params(parts.query, set(NFS_PARAMS), uri)
    options = [f"{NFS_PARAMS[name]}={value}" for name, value in sorted(params.items())]
    if port:
        options.append(f"port={port}")
    query = "&".join(f"{name}={value}" for name, value in sorted(params.items()))
    key = f"nfs://{host}{f':{port}' if port else ''}{export}" + (f"?{query}" if query else "")
    info = {"scheme": "nfs", "server": host, "export": export, "spec": f"{host}:{export}",
            "vfsType": "nfs", "options": ",".join(["soft", "nosharecache", *options])}
    if port:
        info["port"] = port
    return StorageURI("nfs", key, info)


def _posixfs(uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
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
    return StorageURI("posixfs", key, {"scheme": "posixfs", "spec": spec, "vfsType": params["vfsType"],
                                       "options": options})


def _iscsi(uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
    host, port = _host(parts.netloc.rpartition("@")[2], uri)
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
    info = {"scheme": "iscsi", "portal": portal, "target": iqn, "iface": iface}
    if user:
        info["user"] = user
    return StorageURI("iscsi", key, info, user, password)


def _localfs(uri: str, parts: urllib.parse.SplitResult) -> StorageURI:
    if parts.netloc or parts.query or parts.username:
        raise InvalidConnectionURI(f"{uri}: expected localfs:///absolute/path")
    path = _clean_path(urllib.parse.unquote(parts.path), uri)
    return StorageURI("localfs", f"localfs://{path}", {"scheme": "localfs", "path": path})


def mountpoint(root: str, storage: StorageURI) -> str:
    """Where a mount-based connection is mounted: under `root`, named after its spec as VDSM named
    them, with a short digest of the key so that one spec mounted two ways gets two places."""
    digest = hashlib.sha1(storage.key.encode()).hexdigest()[:8]
    return os.path.join(root, f"{storage.spec.replace('_', '__').replace('/', '_')}.{digest}")
