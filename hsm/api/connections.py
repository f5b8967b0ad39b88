"""The connection verbs: manageStorageServer, unmanageStorageServer, getStorageServerList."""

from __future__ import annotations

from hsm.api.verbs import verb
from hsm.connections.manager import ConnectionManager


class ConnectionsAPI:
    def __init__(self, manager: ConnectionManager) -> None:
        self._connections = manager

    @verb(mutating=True)
    def manageStorageServer(self, uri: str, connectionID: str, options: dict | None = None) -> dict:
        self._connections.manage(uri, connectionID)
        return {}

    @verb(mutating=True)
    def unmanageStorageServer(self, connectionID: str, options: dict | None = None) -> dict:
        self._connections.unmanage(connectionID)
        return {}

    @verb()
    def getStorageServerList(self, options: dict | None = None) -> dict:
        return {"servers": self._connections.servers()}
