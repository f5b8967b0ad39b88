"""VDSM's storage domains over the engine: a domain is a repository whose id and uuid are its sdUUID.

createStorageDomain makes the repository in a folder named after the sdUUID
(as VDSM did: `<path>/<sdUUID>` for localfs, `<mount>/<sdUUID>` for NFS and
posixfs) and connects it under its sdUUID. Where each domain lives is kept in
`<state_dir>/domains.json` (written through the atomic-write helper), so a
domain is found again after an hsmd restart: it is connected on first use.
Repositories connected by the new API (the default `local` one too) are
domains as well, named by their uuid.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass

from hsm.atomicfile import atomic_write
from hsm.connections.manager import ConnectionManager
from hsm.errors import (
    HsmError,
    InvalidParameterException,
    StorageDomainAccessError,
    StorageDomainActionError,
    StorageDomainAlreadyExists,
    StorageDomainClassError,
    StorageDomainDescriptionTooLongError,
    StorageDomainDoesNotExist,
    StorageDomainFSNotMounted,
    StorageDomainTypeError,
    StorageServerAccessPermissionError,
    UnsupportedDomainVersion,
)
from hsm.ids import is_uuid
from hsm.storage.block import BlockRepository
from hsm.storage.engine import Engine
from hsm.storage.repository import ISO_FOLDER, FileRepository

log = logging.getLogger("hsm.storage.domains")

NFS, FCP, ISCSI, LOCALFS, POSIXFS = 1, 2, 3, 4, 6
TYPE_NAMES = {NFS: "NFS", FCP: "FCP", ISCSI: "ISCSI", LOCALFS: "LOCALFS", POSIXFS: "POSIXFS"}
FORMATS = {NFS: "nfs-1", FCP: "block-1", ISCSI: "block-1", LOCALFS: "localfs-1", POSIXFS: "posixfs-1"}
BLOCK_TYPES = (FCP, ISCSI)
CLASSES = {1: "Data", 2: "Iso", 3: "Backup"}
VERSIONS = (0, 2, 3)  # the domain versions VDSM 4.10 made
MAX_DESCRIPTION = 50  # characters, as VDSM allowed
BLANK_UUID = "00000000-0000-0000-0000-000000000000"
LVM_UUID = re.compile(r"[A-Za-z0-9]{6}(-[A-Za-z0-9]{4}){5}-[A-Za-z0-9]{6}")  # a VG's own UUID


def check_uuid(name: str, value: object, blank: bool = False) -> str:
    """A UUID in VDSM's textual form; the blank UUID only where `blank` allows it."""
    if not is_uuid(value) or (value == BLANK_UUID and not blank):
        raise InvalidParameterException(f"{name}={value!r}: expected a UUID")
    return value


def check_description(value: object, name: str = "description",
                      too_long: type[HsmError] = StorageDomainDescriptionTooLongError) -> str:
    """A domain's (or, with its own error, a pool's) description: a string of at most MAX_DESCRIPTION."""
    if not isinstance(value, str):
        raise InvalidParameterException(f"{name}={value!r}: expected a string")
    if len(value) > MAX_DESCRIPTION:
        raise too_long(f"{len(value)} characters, at most {MAX_DESCRIPTION}")
    return value


def number(name: str, value: object, default: int | None = None) -> int:
    """An integer argument VDSM's clients send as an int or a decimal string ('' for the default)."""
    if value in ("", None) and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameterException(f"{name}={value!r}: expected a number")
    try:
        return int(value)
    except ValueError:
        raise InvalidParameterException(f"{name}={value!r}: expected a number") from None


def _remote(path: str) -> str:
    host, colon, rest = path.rpartition(":") if ":" in path else ("", "", path)
    return f"{host}{colon}{re.sub('/+', '/', rest).rstrip('/') or '/'}"


def same_remote(one: str, other: str) -> bool:
    """Whether two remote paths name the same place, as VDSM compared them: doubled or trailing slashes aside."""
    return _remote(one) == _remote(other)


def load_table(path: str, record: type) -> dict:
    """{key: record(**fields)} from a file save_table wrote; none, or a damaged one (logged), reads as empty."""
    try:
        with open(path, encoding="utf-8") as f:
            return {key: record(**fields) for key, fields in json.load(f).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.error("Ignoring damaged %s: %s", path, e)
        return {}


def save_table(path: str, table: dict) -> None:
    """{key: dataclass record}, durably (the atomic-write helper)."""
    atomic_write(path, json.dumps({key: asdict(item) for key, item in sorted(table.items())}, indent=1).encode())


@dataclass
class Place:
    """Where a domain is: enough to connect it again after a restart."""
    format: str
    params: dict
    storageType: int
    remotePath: str


class Domains:
    def __init__(self, engine: Engine, connections: ConnectionManager | None, state_dir: str) -> None:
        self._engine = engine
        self._connections = connections
        self._path = os.path.join(state_dir, "domains.json")
        self._lock = threading.RLock()
        self._places: dict[str, Place] = self._load()
        engine.reconnect = self.get

    def _load(self) -> dict[str, Place]:
        return load_table(self._path, Place)

    def _save(self) -> None:
        save_table(self._path, self._places)

    # -- create and remove ----------------------------------------------

    def create(self, storage_type: object, sd_uuid: object, name: object, remote: object, dom_class: object,
               version: object = "") -> None:
        sd_uuid = check_uuid("sdUUID", sd_uuid)
        name = check_description(name)
        kind = number("storageType", storage_type)
        if kind not in FORMATS:
            raise StorageDomainTypeError(f"storageType={storage_type!r}: expected 1 (NFS), 2 (FCP), 3 (iSCSI), "
                                         "4 (localfs) or 6 (posixfs)")
        klass = number("domClass", dom_class)
        if klass not in CLASSES:
            raise StorageDomainClassError(f"domClass={dom_class!r}: expected 1 (Data), 2 (Iso) or 3 (Backup)")
        version = number("domVersion", version, default=VERSIONS[0])
        if version not in VERSIONS:
            raise UnsupportedDomainVersion(f"domVersion={version}: expected one of {VERSIONS}")
        if not isinstance(remote, str) or not remote:
            raise InvalidParameterException(f"typeSpecificArg={remote!r}: expected the domain's path (a VG's "
                                            "UUID for a block domain)")
        labels = {"name": name, "domainClass": CLASSES[klass], "domainVersion": version}
        with self._lock:
            place = self._place_for(kind, sd_uuid, remote)
            known = self._places.get(sd_uuid)
            if known is not None and (known.format, known.params) != (place.format, place.params):
                raise StorageDomainAlreadyExists(f"{sd_uuid} is at {known.remotePath}")
            twin = self._connected(sd_uuid)
            if twin is not None and (twin.id != sd_uuid or twin.labels != labels):
                raise StorageDomainAlreadyExists(f"{sd_uuid} is repository {twin.id} at {twin.path}")
            self._engine.create_repository(place.format, place.params, repo_uuid=sd_uuid, labels=labels)
            if known is None:
                self._places[sd_uuid] = place
                self._save()
            if twin is None:
                self._engine.connect(sd_uuid, place.format, place.params)
        log.info("Created storage domain %s (%s) on %s", sd_uuid, TYPE_NAMES[kind], place.remotePath)

    def _place_for(self, kind: int, sd_uuid: str, remote: str) -> Place:
        if kind in BLOCK_TYPES:  # remote: the LVM UUID of the VG createVG made, named after the domain
            if not LVM_UUID.fullmatch(remote):
                raise InvalidParameterException(f"typeSpecificArg={remote!r}: expected a VG's LVM UUID")
            vg_name = self._engine.vg_name_of(remote)
            return Place(FORMATS[kind], {"vgName": vg_name, "vgUUID": remote}, kind, remote)
        if kind == LOCALFS:
            if not os.path.isabs(remote):
                raise InvalidParameterException(f"typeSpecificArg={remote!r}: expected an absolute path")
            if not os.path.isdir(remote):
                raise StorageDomainFSNotMounted(f"{remote}: no such directory")
            return Place(FORMATS[kind], {"path": os.path.normpath(remote), "subdir": sd_uuid}, kind,
                         os.path.normpath(remote))
        return Place(FORMATS[kind], {"connectionId": self._connection_of(remote), "subdir": sd_uuid}, kind,
                     remote)

    def _connection_of(self, remote: str) -> str:
        """The managed connection (a legacy one too) whose mount serves `remote`, connected ones first."""
        found = []
        for cid, entry in (self._connections.servers() if self._connections else {}).items():
            info = entry["connectionInfo"]
            if entry["managed"] and info.get("scheme") in ("nfs", "posixfs") \
                    and same_remote(info.get("spec", ""), remote):
                found.append((not entry["connected"], cid))
        if not found:
            raise StorageDomainFSNotMounted(f"{remote}: no storage connection mounts it; connectStorageServer first")
        return min(found)[1]

    def extend(self, repo: BlockRepository, devices: list[str]) -> None:
        """Add devices to a block domain's VG (extendStorageDomain)."""
        self._engine.extend_repository(repo.id, devices)
        log.info("Extended storage domain %s with %s", repo.uuid, ", ".join(devices))

    def remove(self, sd_uuid: str) -> None:
        """Delete the domain and everything in it (formatStorageDomain)."""
        with self._lock:
            repo = self.get(sd_uuid)
            if repo.id != sd_uuid:
                raise StorageDomainActionError(f"{sd_uuid} is repository {repo.id}, not made by "
                                               "createStorageDomain: disconnect it with the repository verbs")
            self._engine.remove_repository(sd_uuid)
            if self._places.pop(sd_uuid, None) is not None:
                self._save()
        log.info("Formatted storage domain %s", sd_uuid)

    # -- lookups --------------------------------------------------------

    def _connected(self, sd_uuid: str) -> FileRepository | None:
        try:
            return self._engine.by_uuid(sd_uuid, reconnect=False)
        except StorageDomainDoesNotExist:
            return None

    def get(self, sd_uuid: object) -> FileRepository:
        """The domain's repository, connected now if it was not (after a restart): 358 when unknown."""
        sd_uuid = check_uuid("sdUUID", sd_uuid)
        repo = self._connected(sd_uuid)
        if repo is not None:
            return repo
        with self._lock:
            place = self._places.get(sd_uuid)
            if place is None:
                raise StorageDomainDoesNotExist(sd_uuid)
            repo = self._connected(sd_uuid)
            return repo if repo is not None else self._engine.connect(sd_uuid, place.format, place.params)

    def uuids(self) -> list[str]:
        """Every domain that can be reached now; the others are logged and left out, as VDSM did."""
        found = {repo.uuid for repo in list(self._engine.repositories.values())}
        for sd_uuid in sorted(set(self._places) - found):
            try:
                found.add(self.get(sd_uuid).uuid)
            except HsmError as e:
                log.warning("Storage domain %s cannot be reached: %s", sd_uuid, e)
        return sorted(found)

    def storage_type(self, repo: FileRepository) -> int:
        place = self._places.get(repo.uuid)
        return place.storageType if place else {v: k for k, v in FORMATS.items()}[repo.format]

    def remote_path(self, repo: FileRepository) -> str:
        """Where the domain is: a file domain's path, a block domain's VG UUID."""
        place = self._places.get(repo.uuid)
        if place:
            return place.remotePath
        return repo.lvm.vg().uuid if isinstance(repo, BlockRepository) else repo.path

    def info(self, repo: FileRepository) -> dict:
        """VDSM's getStorageDomainInfo keys that belong to the domain itself (the pool adds its own)."""
        labels = repo.labels
        kind = self.storage_type(repo)
        where = {"vguuid": self.remote_path(repo)} if kind in BLOCK_TYPES else {"remotePath": self.remote_path(repo)}
        return {"uuid": repo.uuid, "type": TYPE_NAMES[kind],
                "class": labels.get("domainClass", "Data"), "name": labels.get("name", repo.id),
                "version": str(labels.get("domainVersion", VERSIONS[0])), **where}

    @staticmethod
    def stats(repo: FileRepository) -> dict:
        if isinstance(repo, BlockRepository):
            vg = repo.lvm.vg()
            return {"disktotal": str(vg.size), "diskfree": str(vg.free), "mdavalid": True, "mdathreshold": True,
                    "mdasize": vg.mda_size, "mdafree": 0}
        try:
            space = repo.io.statvfs(repo.path)
        except OSError as e:
            raise StorageDomainAccessError(f"{repo.uuid}: {e}") from None
        return {"disktotal": str(space["total"]), "diskfree": str(space["free"]), "mdavalid": True,
                "mdathreshold": True, "mdasize": 0, "mdafree": 0}

    @staticmethod
    def validate(repo: FileRepository) -> None:
        health = repo.check_health()
        if not health.valid:
            raise StorageDomainAccessError(f"{repo.uuid}: {health.error}")

    @staticmethod
    def files(repo: FileRepository, pattern: str, case_sensitive: bool = True) -> dict[str, dict]:
        """An ISO domain's files matching `pattern`: {name: {status, ctime, size}}.

        getFileList matches case-sensitively; getIsoList does not (a BOOT.ISO is an ISO too), as in VDSM.
        """
        folder = os.path.join(repo.path, ISO_FOLDER)
        try:
            names = [name for name in repo.io.listdir(folder) if fnmatch.fnmatchcase(
                name if case_sensitive else name.lower(), pattern if case_sensitive else pattern.lower())]
            found = {}
            for name in names:
                st = repo.io.stat(os.path.join(folder, name))
                if st["mode"] & 0o170000 != 0o100000:
                    continue  # only plain files are ISO or floppy images
                # VDSM checked that qemu may read the file; hsm checks that any user may.
                readable = st["mode"] & 0o004
                found[name] = {"status": 0 if readable else StorageServerAccessPermissionError.code,
                               "ctime": f"{st['ctime']:.0f}", "size": str(st["size"])}
        except OSError as e:
            raise StorageDomainAccessError(f"{repo.uuid}: {e}") from None
        return found
