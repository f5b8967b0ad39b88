"""Making, checking and tearing down the physical connections of this host, each by its URI's scheme.

What each scheme does is in hsm/connections/schemes.py; here are the verbs the connection
manager calls, and what is found on the host beyond any one connection (iSCSI node records,
mounts under the mount root).
"""

from __future__ import annotations

from hsm.connections.mountinfo import _unescape, filesystem_of, mounted_paths
from hsm.connections.schemes import SCHEMES, Host, StorageURI
from hsm.errors import HsmError, MountError, StorageServerConnectionError
from supervdsm.client import SupervdsmClient

__all__ = ["Backends", "_unescape", "filesystem_of", "mounted_paths"]  # the mount table's readers, as before


class Backends:
    def __init__(self, supervdsm: SupervdsmClient, mount_root: str) -> None:
        self.host = Host(supervdsm, mount_root)

    def path(self, storage: StorageURI) -> str:
        """Where the connection's files are seen on this host ('' for iSCSI)."""
        return SCHEMES[storage.scheme].path(storage, self.host)

    def is_connected(self, storage: StorageURI) -> bool:
        return SCHEMES[storage.scheme].is_connected(storage, self.host)

    def connect(self, storage: StorageURI) -> None:
        """Make the connection; a failure is a MountError or a StorageServerConnectionError."""
        try:
            SCHEMES[storage.scheme].connect(storage, self.host)
        except (StorageServerConnectionError, MountError):
            raise
        except HsmError as e:  # supervdsmd unavailable or refusing: the connection failed all the same
            raise StorageServerConnectionError(str(e)) from None

    def disconnect(self, storage: StorageURI) -> None:
        SCHEMES[storage.scheme].disconnect(storage, self.host)

    def iscsi_nodes(self) -> set[tuple[str, str]]:
        """The open-iscsi node records of this host as (portal, target); empty when they cannot be read."""
        try:
            result = self.host.supervdsm.call("iscsiNodeList")
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
        prefix = self.host.mount_root.rstrip("/") + "/"
        return {path: info for path, info in mounted_paths().items()
                if path.startswith(prefix) and path not in managed}
