"""VDSM's connection verbs (connectStorageServer, disconnectStorageServer, getStorageConnectionsList),
served by the managed-connection machinery: each VDSM connection id becomes a CID."""

from __future__ import annotations

import time
import urllib.parse

from hsm.api.verbs import verb
from hsm.connections.manager import ConnectionManager
from hsm.errors import HsmError, InvalidParameterException

NFS, FCP, ISCSI, LOCALFS, POSIXFS = 1, 2, 3, 4, 6
CONNECT_WAIT = 10.0  # seconds connectStorageServer waits for each connection, as VDSM answered once connected


def _quote(value: object) -> str:
    return urllib.parse.quote(str(value), safe="")


def legacy_uri(dom_type: int, con: dict) -> str:
    """The storage URI of one entry of VDSM's conList."""
    connection = str(con.get("connection", ""))
    if dom_type == NFS:
        server, _, export = connection.partition(":")
        version = str(con.get("protocol_version") or "")
        query = f"?version={version}" if version and version != "auto" else ""
        return f"nfs://{server}{export}{query}"
    if dom_type == LOCALFS:
        return f"localfs://{connection}"
    if dom_type == POSIXFS:
        params = {"spec": connection, "vfsType": con.get("vfs_type") or "none"}
        if con.get("mnt_options"):
            params["options"] = con["mnt_options"]
        return "posixfs://?" + "&".join(f"{name}={value}" for name, value in params.items())
    if dom_type == ISCSI:
        auth = f"{_quote(con['user'])}:{_quote(con.get('password', ''))}@" if con.get("user") else ""
        return f"iscsi://{auth}{con.get('portal') or connection}:{con.get('port') or 3260}/{con.get('iqn', '')}"
    raise InvalidParameterException(f"domType={dom_type!r}: expected 1 (NFS), 2 (FCP), 3 (iSCSI), 4 (localfs) "
                                    "or 6 (posixfs)")


def _entries(con_list: object) -> list[dict]:
    if not isinstance(con_list, list) or not all(isinstance(con, dict) and con.get("id") for con in con_list):
        raise InvalidParameterException("conList: expected a list of structs, each with an id")
    return con_list


class LegacyConnectionsAPI:
    def __init__(self, manager: ConnectionManager) -> None:
        self._connections = manager

    @verb(mutating=True)
    def connectStorageServer(self, domType: int, spUUID: str, conList: list, options: dict | None = None) -> dict:
        statuses = []
        for con in _entries(conList):
            try:
                if domType != FCP:  # FC needs no connection: its LUNs are simply there
                    self._connections.manage(legacy_uri(domType, con), con["id"])
                    self._wait(con["id"])
                statuses.append({"id": con["id"], "status": 0})
            except HsmError as e:
                statuses.append({"id": con["id"], "status": e.code})
        return {"statuslist": statuses}

    def _wait(self, cid: str) -> None:
        deadline = time.monotonic() + CONNECT_WAIT
        while True:
            connected, last_error = self._connections.status(cid)
            if connected:
                return
            if last_error or time.monotonic() > deadline:
                error = HsmError(last_error.get("message", "not connected yet"))
                error.code = last_error.get("code", 451)
                raise error
            time.sleep(0.05)

    @verb(mutating=True)
    def disconnectStorageServer(self, domType: int, spUUID: str, conList: list, options: dict | None = None) \
            -> dict:
        statuses = []
        for con in _entries(conList):
            try:
                if domType != FCP:
                    self._connections.unmanage(con["id"])
                statuses.append({"id": con["id"], "status": 0})
            except HsmError as e:
                statuses.append({"id": con["id"], "status": e.code})
        return {"statuslist": statuses}

    @verb()
    def getStorageConnectionsList(self, spUUID: str = "", options: dict | None = None) -> dict:
        return {"connectionslist": [{"id": cid, "connected": entry["connected"], "managed": entry["managed"],
                                     "lastError": entry["lastError"], **entry["connectionInfo"]}
                                    for cid, entry in self._connections.servers().items()]}
