"""VDSM's connection verbs, served by the managed-connection machinery: each VDSM connection id and each
connection reference (refID) is a CID of the ConnectionManager.

connectStorageServer, disconnectStorageServer, validateStorageServerConnection and
getStorageConnectionsList take VDSM's conList; the storageServer_ConnectionRefs_* verbs take VDSM's
2012 ConnectionInfo ({type, params}); discoverSendTargets asks an iSCSI portal for its targets.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

from hsm.api.verbs import verb
from hsm.connections import discovery
from hsm.connections import uri as uris
from hsm.connections.manager import ConnectionManager
from hsm.errors import HsmError, InvalidConnectionURI, InvalidParameterException, StorageServerValidationError
from hsm.storage.domains import check_uuid

NFS, FCP, ISCSI, LOCALFS, POSIXFS = 1, 2, 3, 4, 6
DOM_TYPES = (NFS, FCP, ISCSI, LOCALFS, POSIXFS)
DOM_TYPES_TEXT = "1 (NFS), 2 (FCP), 3 (iSCSI), 4 (localfs) or 6 (posixfs)"
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
    raise InvalidParameterException(f"domType={dom_type!r}: expected {DOM_TYPES_TEXT}")


def _entries(con_list: object) -> list[dict]:
    if not isinstance(con_list, list) or not all(isinstance(con, dict) and con.get("id") for con in con_list):
        raise InvalidParameterException("conList: expected a list of structs, each with an id")
    return con_list


def _check_pool(sp_uuid: object) -> None:
    """spUUID, which VDSM took and ignored here: empty, or a UUID (the blank one too)."""
    if sp_uuid not in ("", None):
        check_uuid("spUUID", sp_uuid, blank=True)


def _statuslist(dom_type: object, con_list: object, act: Callable[[dict], object]) -> dict:
    """VDSM's `statuslist`: `act` on each entry of conList, and its status, 0 or an error number.

    FC needs no connection (its LUNs are simply there): its entries are not acted on, and answer 0.
    """
    statuses = []
    for con in _entries(con_list):
        try:
            if not isinstance(dom_type, int) or isinstance(dom_type, bool) or dom_type not in DOM_TYPES:
                raise InvalidParameterException(f"domType={dom_type!r}: expected {DOM_TYPES_TEXT}")
            if dom_type != FCP:
                act(con)
            statuses.append({"id": con["id"], "status": 0})
        except HsmError as e:
            statuses.append({"id": con["id"], "status": e.code})
    return {"statuslist": statuses}


def _text(params: dict, name: str, default: str | None = None) -> str:
    value = params.get(name, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise StorageServerValidationError(f"{name}={value!r}: expected a non-empty string")
    return value


def _nfs_ref(params: dict) -> str:
    server, sep, path = _text(params, "export").partition(":/")
    if not sep:
        raise StorageServerValidationError("export: expected server:/path")
    given = {"version": params.get("version"), "retrans": params.get("retrans"), "timeo": params.get("timeout")}
    query = {name: _text(given, name) for name, value in given.items() if value not in (None, "", "auto")}
    return f"nfs://{server}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _posixfs_ref(params: dict) -> str:
    query = {"spec": _text(params, "spec"), "vfsType": _text(params, "vfsType")}
    if params.get("options"):
        query["options"] = _text(params, "options")
    return "posixfs://?" + "&".join(f"{name}={value}" for name, value in query.items())


def _iscsi_ref(params: dict) -> str:
    target, credentials = params.get("target"), params.get("credentials") or {}
    if not isinstance(target, dict) or not isinstance(target.get("portal"), dict):
        raise StorageServerValidationError("expected target: {portal: {host, port}, iqn, tpgt}")
    if not isinstance(credentials, dict):
        raise StorageServerValidationError("expected credentials: {type: chap, params: {username, password}}")
    auth = ""
    if credentials:
        if str(credentials.get("type", "chap")).lower() != "chap":
            raise StorageServerValidationError(f"credentials type {credentials.get('type')!r}: only chap")
        chap = credentials.get("params")
        if not isinstance(chap, dict):
            raise StorageServerValidationError("credentials: expected params: {username, password}")
        auth = f"{_quote(_text(chap, 'username'))}:{_quote(_text(chap, 'password'))}@"
    host = _text(target["portal"], "host")
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    port, iqn = _text(target["portal"], "port", "3260"), _text(target, "iqn")
    return f"iscsi://{auth}{host}:{port}/{_quote(iqn)}?iface={_text(params, 'iface', 'default')}"


REF_TYPES = {"nfs": _nfs_ref, "posixfs": _posixfs_ref, "sharedfs": _posixfs_ref, "localfs":
             lambda params: f"localfs://{_text(params, 'path')}", "iscsi": _iscsi_ref}


def ref_uri(con_info: object) -> str:
    """The storage URI of one of VDSM's ConnectionInfo structs, {type, params}; StorageServerValidationError
    (453, as VDSM answered) when it is not a valid one."""
    if not isinstance(con_info, dict) or not isinstance(con_info.get("params", {}), dict):
        raise StorageServerValidationError(f"{con_info!r}: expected {{type, params}}")
    kind = con_info.get("type")
    to_uri = REF_TYPES.get(kind) if isinstance(kind, str) else None
    if to_uri is None:
        raise StorageServerValidationError(f"type={con_info.get('type')!r}: expected iscsi, nfs, posixfs or localfs")
    uri = to_uri(con_info.get("params", {}))
    try:
        uris.parse(uri)
    except InvalidConnectionURI as e:
        raise StorageServerValidationError(str(e)) from None
    return uri


def _mount_option(options: str, name: str) -> str:
    """One option of a mount's options ("soft,retrans=6,..."); 'default' when not set, as VDSM answered."""
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key == name:
            return value
    return "default"


def ref_info(info: dict) -> dict:
    """A managed connection's connectionInfo as VDSM's statuses answered it: {type, params}."""
    scheme = info.get("scheme")
    if scheme == "nfs":
        options = info.get("options", "")
        params: dict = {"export": info["spec"], "retrans": _mount_option(options, "retrans"),
                        "timeout": _mount_option(options, "timeo"), "version": _mount_option(options, "vers")}
    elif scheme == "posixfs":
        params = {"spec": info["spec"], "vfsType": info["vfsType"], "options": info.get("options") or "default"}
    elif scheme == "iscsi":
        host, _, port = info["portal"].rpartition(":")
        params = {"target": {"portal": {"hostname": host, "port": int(port)}, "tpgt": 1, "iqn": info["target"]},
                  "iface": info["iface"]}
    else:
        params = {"path": info.get("path", "")}
    return {"type": scheme, "params": params}


def _last_error(last_error: dict) -> list:
    """lastError as VDSM's (code, message) pair: (0, "") when there was none."""
    return [last_error.get("code", 0), last_error.get("message", "")] if last_error else [0, ""]


class LegacyConnectionsAPI:
    def __init__(self, manager: ConnectionManager) -> None:
        self._connections = manager

    @verb(mutating=True)
    def connectStorageServer(self, domType: int, spUUID: str, conList: list, options: dict | None = None) -> dict:
        _check_pool(spUUID)
        return _statuslist(domType, conList, lambda con: self._connect(legacy_uri(domType, con), con["id"]))

    def _connect(self, uri: str, cid: str) -> None:
        self._connections.manage(uri, cid)
        self._wait(cid)

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
        _check_pool(spUUID)
        return _statuslist(domType, conList, lambda con: self._connections.unmanage(con["id"]))

    @verb()
    def validateStorageServerConnection(self, domType: int, spUUID: str, conList: list,
                                        options: dict | None = None) -> dict:
        """Whether each connection of conList can be made now, keeping none: `statuslist`, 0 or an error number.

        VDSM 4.10 answered 0 for every entry without looking. Here "valid" means: the entry reads as a
        connection, and the storage it names is up already (then it is left alone) or could be connected
        (it is connected and at once torn down again; a failure is its error number, as connectStorageServer
        would give). Nothing is managed or recorded. FC needs no connection: always 0.
        """
        _check_pool(spUUID)
        return _statuslist(domType, conList, lambda con: self._connections.validate(legacy_uri(domType, con)))

    @verb()
    def getStorageConnectionsList(self, spUUID: str = "", options: dict | None = None) -> dict:
        return {"connectionslist": [{"id": cid, "connected": entry["connected"], "managed": entry["managed"],
                                     "lastError": entry["lastError"], **entry["connectionInfo"]}
                                    for cid, entry in self._connections.servers().items()]}

    @verb()
    def discoverSendTargets(self, con: dict, options: dict | None = None) -> dict:
        """The targets an iSCSI portal offers (con: {connection, port, user, password}), as VDSM answered:
        `targets` their names, `fullTargets` "host:port,tpgt iqn" each; 475 when the portal cannot be asked."""
        if not isinstance(con, dict):
            raise InvalidParameterException(f"con={con!r}: expected {{connection, port, user, password}}")
        user, password = con.get("user") or "", con.get("password") or ""
        if not isinstance(user, str) or not isinstance(password, str):
            raise InvalidParameterException("user and password: expected strings")
        where = discovery.portal(con.get("connection"), con.get("port"))
        found = discovery.discover(self._connections.backends.host.supervdsm, where, user, password)
        return {"targets": [target.iqn for target in found], "fullTargets": [target.full() for target in found]}

    @verb(mutating=True)
    def storageServer_ConnectionRefs_acquire(self, conRefArgs: dict, options: dict | None = None) -> dict:
        """Each {refID: ConnectionInfo} managed as the CID refID: `results` {refID: 0 or an error number}.

        0 means the reference is recorded; the connection is then made, and kept, in the background
        (storageServer_ConnectionRefs_statuses shows how it goes). The same refID with the same
        ConnectionInfo again answers 0 (VDSM answered 478); with other information 478; information
        that is not valid 453.
        """
        if not isinstance(conRefArgs, dict):
            raise InvalidParameterException(f"conRefArgs={conRefArgs!r}: expected {{refID: {{type, params}}}}")
        results = {}
        for ref_id, con_info in conRefArgs.items():
            try:
                self._connections.manage(ref_uri(con_info), ref_id)
                results[ref_id] = 0
            except HsmError as e:
                results[ref_id] = e.code
        return {"results": results}

    @verb(mutating=True)
    def storageServer_ConnectionRefs_release(self, refIDs: list, options: dict | None = None) -> dict:
        """Each CID of refIDs no longer managed: `results` {refID: 0 or an error number}. A connection goes
        down with its last reference; 479 for an unknown refID, 478 while a connected repository needs it."""
        if not isinstance(refIDs, list) or not all(isinstance(ref_id, str) for ref_id in refIDs):
            raise InvalidParameterException(f"refIDs={refIDs!r}: expected a list of strings")
        results = {}
        for ref_id in refIDs:
            try:
                self._connections.unmanage(ref_id)
                results[ref_id] = 0
            except HsmError as e:
                results[ref_id] = e.code
        return {"results": results}

    @verb()
    def storageServer_ConnectionRefs_statuses(self, options: dict | None = None) -> dict:
        """Every managed CID: {refID: {connected, lastError: [code, message], connectionInfo: {type, params}}}.

        VDSM 4.10 answered it under `connectionslist`; hsm's legacy contract names it `results`: both keys
        carry the same struct.
        """
        statuses = {cid: {"connected": entry["connected"], "lastError": _last_error(entry["lastError"]),
                          "connectionInfo": ref_info(entry["connectionInfo"])}
                    for cid, entry in self._connections.servers().items() if entry["managed"]}
        return {"connectionslist": statuses, "results": statuses}

    @verb()
    def cleanupUnusedConnections(self, options: dict | None = None) -> dict:
        """Status only, as VDSM 4.10 (which never implemented it): there is nothing unused to clean.

        A physical connection is torn down as soon as its last CID goes, so every connection hsm made is
        in use. Mounts and iSCSI node records that others made are listed (getStorageServerList) but
        never removed behind their owners' backs.
        """
        return {}
