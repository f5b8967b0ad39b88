"""A file repository (`localfs-1`; `nfs-1` and `posixfs-1` reuse it on a mount).

Layout under the repository's path:

    repository.json        {format, uuid, version, created}, and the labels of a
                           storage domain made by createStorageDomain (LABELS)
    images/<id>.json       one record per image (hsm.storage.image.Image)
    volumes/<vol>.qcow2    the volume files
    iso/                   an ISO domain's files (getFileList)

Every file operation goes through the repository's IOProcess, so a hung
mount blocks only that helper. The records are loaded once, at connect, into
an in-memory index; after that a lookup costs the same with 10 or 10,000
images, and the index changes only after the record is durable on storage.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import errno
import heapq
import json
import logging
import os
import pwd
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from hsm.errors import (
    HsmError,
    ImageDoesNotExistInSD,
    NoSpaceLeftOnDomain,
    StorageDomainAccessError,
    StorageDomainAlreadyExists,
    StorageDomainCreationError,
    StorageDomainDoesNotExist,
    StorageDomainNotEmpty,
    StorageDomainTypeError,
    StorageServerAccessPermissionError,
    StorageTimeout,
    VolumeMetadataReadError,
    VolumeMetadataWriteError,
)
from hsm.ids import is_id
from hsm.leases.lockspace import Lockspace, Paths
from hsm.leases.volume import VolumeLeases
from hsm.leases.writer import CommitLock, GenerationFile, GenerationPlace, Writer
from hsm.storage.image import Image, Volume
from hsm.storage.intents import CopyIntent, SnapshotIntent
from hsm.storage.ioprocess import IOProcess
from hsm.storage.offload import ARRAY, FILE_CLONE, ArrayPlace, Offload, discover
from hsm.storage.snapshot import IndexSnapshot, Loaded, chunks, release_memory, to_row
from hsm.watch import OwnChanges

log = logging.getLogger("hsm.storage.repository")

FILE_FORMATS = ("localfs-1", "nfs-1", "posixfs-1")
VERSION = 1
RECORD = "repository.json"
IMAGES = "images"
VOLUMES = "volumes"
META_SUFFIX = ".json"
RESERVE = "reserve"         # real blocks kept free so that removeImage works on a full filesystem
RESERVE_BYTES = 1 << 20     # some hundreds of record writes
# What VDSM kept in a storage domain's metadata: its name (DESCRIPTION), class and version. Optional in the record,
# so records written before them, and repositories made by createStorageRepository, read as they did.
LABELS = ("name", "domainClass", "domainVersion")
ISO_FOLDER = "iso"          # an ISO domain's files (VDSM's images/<ISO_IMAGE_UUID>); never an image's
VMS_FOLDER = "vms"          # a pool's OVF store on its master or an export domain (VDSM's master/vms)
LEASES_FOLDER = "leases"     # a shared repository's sanlock areas: ids (its lockspace) and leases
EXTRA_FOLDERS = (ISO_FOLDER, VMS_FOLDER, LEASES_FOLDER)
MAX_LABEL = 256             # characters of a label read back from storage
SCAN_WAIT = 600.0           # seconds a file deletion waits for the scan after a start from a snapshot


def _layout_folder(io: IOProcess, path: str, folder: str) -> bool:
    """Whether the layout folder exists; one that is a symbolic link (to anywhere) is refused."""
    try:
        return io.is_folder(os.path.join(path, folder))
    except OSError as e:
        raise StorageDomainAccessError(f"{os.path.join(path, folder)} is not a plain directory "
                                       f"(a symbolic link?): {e.strerror or e}") from None


def creation_error(path: str, e: OSError) -> HsmError:
    """What a failed write while making a repository answers: 469 when hsmd's user may not write there."""
    if e.errno in (errno.EACCES, errno.EPERM):
        user = pwd.getpwuid(os.geteuid()).pw_name
        return StorageServerAccessPermissionError(f"{path}: hsmd runs as user {user}, who may not write there "
                                                  f"({e.strerror}); give the folder to {user}")
    return StorageDomainCreationError(f"{path}: {e}")


def create(path: str, repo_format: str, io: IOProcess, force: bool = False, repo_uuid: str | None = None,
           labels: dict | None = None, array: dict | None = None) -> str:
    """Format `path` as an empty repository; returns its uuid.

    `repo_uuid`: the caller's uuid (a storage domain's sdUUID) instead of a new one; a repository already
    there with that uuid, format and `labels` is the same one made again, and answers its uuid. `array`:
    the record's fields saying the folder lives on an array's file system (array_fields).
    """
    if repo_format not in FILE_FORMATS:
        raise StorageDomainTypeError(repo_format)
    labels = {name: value for name, value in (labels or {}).items() if name in LABELS}
    try:
        if not io.stat(path)["mode"] & 0o040000:
            raise StorageDomainCreationError(f"{path} is not a directory")
        entries = io.listdir(path)
    except FileNotFoundError:
        raise StorageDomainDoesNotExist(f"{path}: no such directory") from None
    except OSError as e:
        raise StorageDomainAccessError(f"{path}: {e}") from None
    if repo_uuid and RECORD in entries and not force:
        known = read_record(path, io)
        if known.get("uuid") == repo_uuid and known.get("format") == repo_format \
                and all(known.get(name) == value for name, value in labels.items()):
            return repo_uuid
        raise StorageDomainAlreadyExists(f"{path} holds repository {known.get('uuid')} made with other arguments")
    if entries and not force:
        if RECORD in entries:
            raise StorageDomainAlreadyExists(f"{path} holds a repository; options.force replaces it")
        raise StorageDomainNotEmpty(f"{path} is not empty; options.force formats it anyway")
    repo_uuid = repo_uuid or str(uuid.uuid4())
    try:
        folders = (IMAGES, VOLUMES, ISO_FOLDER) if labels.get("domainClass") == "Iso" else (IMAGES, VOLUMES)
        for folder in folders:
            if not _layout_folder(io, path, folder):
                io.makedirs(os.path.join(path, folder))
        if force:
            for folder in (IMAGES, VOLUMES):
                io.empty_folder(os.path.join(path, folder))
        record = {"format": repo_format, "uuid": repo_uuid, "version": VERSION, "created": time.time(), **labels,
                  **(array or {})}
        io.write(os.path.join(path, RECORD), json.dumps(record).encode())
    except OSError as e:
        raise creation_error(path, e) from None
    log.info("Created %s repository %s at %s", repo_format, repo_uuid, path)
    return repo_uuid


def _labels(record: dict) -> dict:
    """The labels a repository record carries, each checked (it comes from shared storage): others are left out."""
    found = {}
    for name in LABELS:
        value = record.get(name)
        number = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000
        if (isinstance(value, str) and len(value) <= MAX_LABEL) or number:
            found[name] = value
        elif value is not None:
            log.warning("Repository record at %s: %s=%r is not valid, left out", record.get("uuid"), name,
                        str(value)[:80])
    return found


def array_fields(place: ArrayPlace, capabilities: dict[str, bool], read_at: str) -> dict:
    """A record's fields for a repository on an array: where (`array`), and the array's capabilities that
    offload uses as last read (`arrayCapabilities`, with `readAt`)."""
    return {"array": place.wire(), "arrayCapabilities": {FILE_CLONE: bool(capabilities.get(FILE_CLONE)),
                                                         "readAt": read_at}}


def _array_of(record: dict) -> tuple[ArrayPlace | None, dict[str, bool], str]:
    """(where on an array, the capabilities stored, when read) from a record; a damaged field: not on an array."""
    if "array" not in record:
        return None, {}, ""
    try:
        place = ArrayPlace.parse(record["array"])
    except HsmError as e:
        log.warning("Repository record at %s: %s; no array offload", record.get("uuid"), e)
        return None, {}, ""
    stored = record.get("arrayCapabilities")
    stored = stored if isinstance(stored, dict) else {}
    read_at = stored.get("readAt")
    return place, {FILE_CLONE: stored.get(FILE_CLONE) is True}, read_at if isinstance(read_at, str) and \
        read_at.replace(".", "", 1).isdigit() else ""


def read_record(path: str, io: IOProcess) -> dict:
    """The repository record at `path`: 358 when there is none, 379 when it cannot be read."""
    try:
        record = json.loads(io.read(os.path.join(path, RECORD)))
    except FileNotFoundError:
        raise StorageDomainDoesNotExist(f"{path} holds no repository") from None
    except (OSError, ValueError) as e:
        raise StorageDomainAccessError(f"{path}: {e}") from None
    if not isinstance(record, dict):
        raise StorageDomainAccessError(f"{path}: {RECORD} is not a JSON object")
    return record


_V = TypeVar("_V")


class IdIndex(dict[str, _V], Generic[_V]):
    """A dict by image id that also keeps its ids in order, sorted on first use, for paged answers.

    Item assignment, `del` and `pop` keep the order; the index uses no other mutation.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self._order: list[str] | None = None
        self._order_lock = threading.Lock()
        # Told of every change, set or gone (the index snapshot's journal, hsm.storage.snapshot)
        self.on_set: Callable[[str, _V], None] | None = None
        self.on_gone: Callable[[str], None] | None = None

    def __setitem__(self, key: str, value: _V) -> None:
        with self._order_lock:
            if self._order is not None and key not in self:
                bisect.insort(self._order, key)
            super().__setitem__(key, value)
            if self.on_set is not None:
                self.on_set(key, value)

    def __delitem__(self, key: str) -> None:
        with self._order_lock:
            super().__delitem__(key)
            self._unorder(key)
            if self.on_gone is not None:
                self.on_gone(key)

    def pop(self, key: str, *default: Any) -> Any:
        with self._order_lock:
            if key not in self:
                return super().pop(key, *default)
            value = super().pop(key)
            self._unorder(key)
            if self.on_gone is not None:
                self.on_gone(key)
            return value

    def _unorder(self, key: str) -> None:
        if self._order is not None:
            i = bisect.bisect_left(self._order, key)
            if self._order[i:i + 1] == [key]:
                del self._order[i]

    def ids_after(self, marker: str, chunk: int = 256) -> Iterator[str]:
        """The ids above `marker`, in order; ids added or removed meanwhile may or may not appear."""
        last = marker
        while True:
            with self._order_lock:
                if self._order is None:
                    self._order = sorted(self)
                i = bisect.bisect_right(self._order, last)
                found = self._order[i:i + chunk]
            if not found:
                return
            last = found[-1]
            yield from found


@dataclass
class Health:
    """What the monitor saw last."""
    valid: bool = False
    last_check: float = 0.0
    read_delay: float = 0.0
    free: int = 0
    total: int = 0
    error: str = ""


class FileRepository:
    def __init__(self, repo_id: str, path: str, repo_format: str, io: IOProcess) -> None:
        self.id = repo_id
        self.path = path
        self.format = repo_format
        self.io = io
        self.connection_id = ""  # the managed connection it sits on (nfs-1, posixfs-1)
        self.uuid = ""
        self.labels: dict = {}  # LABELS found in the record
        self.images: IdIndex[Image] = IdIndex()
        self.unreadable: IdIndex[str] = IdIndex()  # image id -> why its record cannot be read; never cleaned
        self.rewriting: collections.Counter[str] = collections.Counter()  # images a merge or optimize changes now
        self._snapshotting: dict[str, str] = {}  # disk id -> the snapshot of it not yet complete
        self._copying: dict[tuple[str, str], set[str]] = {}  # (repo uuid, image) -> pending copies of it here
        self.index_lock = threading.RLock()  # the index and what hsmd notes beside it, changed as one step
        self.lock = CommitLock(self.index_lock)  # the commit lock: a check and the record write it allows
        self.health = Health()
        self.offload = Offload()  # what its file system does for a copy inside it, found at connect
        self.offloading = True  # [offload] enabled: copies may use the array or the file system
        self.array: ArrayPlace | None = None  # the array file system its folder lives on, from its record
        self.array_capabilities: dict[str, bool] = {}  # the array's, as its record stores them
        self.array_read_at = ""  # when those were read from the array
        self._monitor_stop = threading.Event()
        self.own = OwnChanges()  # what hsmd itself writes and removes, while a watch looks (hsm.storage.watching)
        self.lease_paths: Paths | None = None  # where a shared repository's lockspace and leases are
        self.lockspace: Lockspace | None = None  # a shared repository's, joined while connected
        self.on_check: Callable[[], object] | None = None  # run by the monitor of a shared repository
        self.volume_leases: VolumeLeases | None = None  # a shared repository's images' leases
        self.snapshot_root = ""  # where hsmd keeps index snapshots (localfs-1 only; hsm.storage.snapshot)
        self.snapshot: IndexSnapshot | None = None
        self.scanned = threading.Event()  # every record read since the connect (at once unless from a snapshot)
        self.scanned.set()
        self._scan_cursor = ""  # during the scan: ids up to this one were compared with storage
        self._verified: set[str] = set()  # and these, read on demand (verify)
        self._compacting = threading.Lock()  # one compaction started at a time
        self._snapshot_writing = threading.Lock()  # one snapshot written at a time (close, compaction, connect)
        self._indexed = False  # load() completed: the index is the repository's, a snapshot of it may be written

    # -- connect ----------------------------------------------------------

    def open(self) -> None:
        """Make the repository's storage usable here before its records are read (files: nothing to do)."""

    def generation_place(self) -> GenerationPlace:
        """Where a shared repository's generation record is (hsm.leases.writer)."""
        return GenerationFile(self.io, os.path.join(self.path, LEASES_FOLDER))

    def make_volume_leases(self, lockspace: Lockspace) -> VolumeLeases:
        """The leases of this shared repository's images (hsm.leases.volume)."""
        return VolumeLeases(lockspace, self.io, os.path.join(self.path, LEASES_FOLDER))

    def share(self, writer: Writer) -> None:
        """From now on records change under the metadata-writer lease `writer` takes."""
        self.lock.writer = writer

    def load(self) -> None:
        """Read the repository record and every image record into the index."""
        record = read_record(self.path, self.io)
        if record.get("format") != self.format:
            raise StorageDomainTypeError(f"{self.path} is a {record.get('format')} repository, not {self.format}")
        for folder in (IMAGES, VOLUMES):
            if not _layout_folder(self.io, self.path, folder):
                raise StorageDomainAccessError(f"{self.path}: no {folder} folder")
        if not is_id(record.get("uuid")):
            raise StorageDomainAccessError(f"{self.path}: {RECORD} holds no valid uuid")
        self.uuid = record["uuid"]
        self.labels = _labels(record)
        self.array, self.array_capabilities, self.array_read_at = _array_of(record)
        loaded = self._load_snapshot()
        if loaded is None:
            images, unreadable = self._read_records()
        else:
            images, unreadable = loaded.images, loaded.unreadable
            self._install(images, unreadable)
            self.scanned.clear()
            self.reread()  # the few unreadable records at once: an admin may have repaired or deleted them
        self._indexed = True
        log.info("Repository %s (%s) loaded%s: %d images, %d unreadable records", self.id, self.uuid,
                 " from its index snapshot" if loaded is not None else "", len(images), len(unreadable))

    # -- the index snapshot (hsm.storage.snapshot) ----------------------------

    def _load_snapshot(self) -> Loaded | None:
        if not self.snapshot_root:
            return None
        self.snapshot = IndexSnapshot(os.path.join(self.snapshot_root, self.uuid), self.uuid)
        return self.snapshot.load()

    def _follow_index(self) -> None:
        """From now on every change of the index is appended to the snapshot's journal."""
        journal = self.snapshot
        if journal is None:
            return
        self.images.on_set = lambda image_id, image: self._journaled(journal.put, image)
        self.images.on_gone = lambda image_id: self._journaled(journal.gone, image_id)
        self.unreadable.on_set = lambda image_id, reason: self._journaled(journal.bad, image_id, reason)
        self.unreadable.on_gone = lambda image_id: self._journaled(journal.fine, image_id)

    def _journaled(self, append: Callable[..., None], *change: Any) -> None:
        """One change into the journal; a journal that cannot be written stops being used (the next start
        reads every record), never the change."""
        journal = self.snapshot
        if journal is None:
            return
        try:
            append(*change)
        except OSError as e:
            self._give_up_snapshot("journal", e)
            return
        if journal.due(len(self.images)) and self._compacting.acquire(blocking=False):
            threading.Thread(target=self._compact, name=f"snapshot-{self.id}", daemon=True).start()

    def _compact(self) -> None:
        try:
            self.write_snapshot()
        finally:
            self._compacting.release()

    def write_snapshot(self) -> None:
        """A new snapshot of the index (the rows taken under the index lock), its journals then removed."""
        journal = self.snapshot
        if journal is None:
            return
        with self._snapshot_writing:  # else an older snapshot could replace a newer, whose journals are gone
            with self.index_lock:
                first = journal.begin()
                rows = [to_row(image) for image in self.images.values()]
                unreadable = dict(self.unreadable)
            try:
                journal.write(rows, unreadable, first)
            except OSError as e:
                self._give_up_snapshot("snapshot", e)

    def _give_up_snapshot(self, what: str, e: OSError) -> None:
        """The snapshot or its journal cannot be written: neither is used any more (the next start reads every
        record), never the change itself."""
        log.error("The index %s of %s cannot be written (%s): the next start reads every record", what, self.id, e)
        journal, self.snapshot = self.snapshot, None
        if journal is not None:
            journal.discard()

    def start_index_work(self, pause: float = 0.02, batch: int = 256) -> None:
        """Once connected, in the background: after a start from a snapshot, compare every record on storage
        with the index; after a start that read every record, write the snapshot the next start reads."""
        if self.snapshot is None:
            return
        if self.scanned.is_set():
            threading.Thread(target=self.write_snapshot, name=f"snapshot-{self.id}", daemon=True).start()
        else:
            threading.Thread(target=self._scan, args=(pause, batch), name=f"scan-{self.id}", daemon=True).start()

    def _scan(self, pause: float, batch: int) -> None:
        """Read every record, `batch` at a time through the I/O helper, a pause between batches so verbs
        keep the CPU; a record that differs from the index is read again into it (refresh)."""
        folder = os.path.join(self.path, IMAGES)
        while not self._monitor_stop.is_set():
            try:
                begun = time.monotonic()
                ids = sorted(name[:-len(META_SUFFIX)] for name in self.io.listdir(folder)
                             if name.endswith(META_SUFFIX))
                listed = set(ids)
                for chunk in chunks(ids, batch):
                    found = self.io.read_many(folder, [image_id + META_SUFFIX for image_id in chunk])
                    for image_id in chunk:
                        self._compare(image_id, found.get(image_id + META_SUFFIX))
                    self._scan_cursor = chunk[-1]
                    if self._monitor_stop.wait(pause):
                        return
                for image_id in set(self.images) | set(self.unreadable):
                    if image_id > self._scan_cursor or image_id not in listed:
                        self.refresh(image_id)  # no record was listed: removed while hsmd was away?
                self.scanned.set()
                self._verified.clear()
                release_memory()  # what reading every record used
                log.info("Repository %s: every record read after the start from its snapshot (%.1f s)", self.id,
                         time.monotonic() - begun)
                return
            except (OSError, HsmError) as e:
                log.warning("Repository %s: the scan of its records failed (%s); again in 10 s", self.id, e)
                if self._monitor_stop.wait(10.0):
                    return

    def _compare(self, image_id: str, data: bytes | None) -> None:
        if not is_id(image_id) or image_id in self._verified:
            return
        known = self.images.get(image_id)
        if data is not None and known is not None and image_id not in self.unreadable:
            try:
                if known.to_json() == data or same_record(known, Image.from_json(data)):
                    return
            except ValueError:
                pass
        self.refresh(image_id)

    def verify(self, image_id: str) -> None:
        """While the scan after a start from a snapshot runs: the image's record read from storage into the
        index first, if the scan has not come to it (a verb names it; the snapshot may be older)."""
        if self.scanned.is_set() or image_id <= self._scan_cursor or image_id in self._verified:
            return
        self.refresh(image_id)
        self._verified.add(image_id)

    def wait_scanned(self, timeout: float = SCAN_WAIT) -> None:
        """Before a file is deleted: every record read (one the snapshot misses may read through it)."""
        if not self.scanned.wait(timeout):
            raise StorageTimeout(f"{self.id}: its records are still being read after the start ({timeout:g} s); "
                                 "files are deleted once they all are")

    def find_offload(self) -> None:
        """Find what its file system does for a copy inside it: two probe files in its folder."""
        self.offload = discover(self.io, self.path)
        log.info("Repository %s: offload by %s", self.id, ", ".join(self.offload_mechanisms()) or "none")

    def offload_mechanisms(self) -> list[str]:
        """What copies inside it may use, fastest first: the wire's capabilities.offload."""
        if not self.offloading:
            return []
        on_array = [ARRAY] if self.array is not None and self.array_capabilities.get(FILE_CLONE) else []
        return on_array + self.offload.mechanisms()

    def _read_records(self) -> tuple[dict[str, Image], dict[str, str]]:
        try:
            found = self.io.read_all(os.path.join(self.path, IMAGES), META_SUFFIX)
        except OSError as e:
            raise StorageDomainAccessError(f"{self.path}: {e}") from None
        return self._index({name[:-len(META_SUFFIX)]: data for name, data in found.items()})

    def _index(self, found: dict[str, bytes]) -> tuple[dict[str, Image], dict[str, str]]:
        """Make the index hold the records `found` ({image id: its bytes}): (images, unreadable records)."""
        images, unreadable = {}, {}
        for image_id, data in found.items():
            try:
                images[image_id] = self._parse(image_id, data)
            except ValueError as e:
                log.error("Image record %s in %s is unreadable: %s", image_id, self.id, e)
                unreadable[image_id] = str(e)
        for image_id, reason in _conflicts(images).items():
            log.error("Image record %s in %s conflicts with another: %s", image_id, self.id, reason)
            unreadable[image_id] = reason
            del images[image_id]
        self._install(images, unreadable)
        return images, unreadable

    def _install(self, images: dict[str, Image], unreadable: dict[str, str]) -> None:
        """Make the index these images and unreadable records."""
        with self.index_lock:
            self.images = IdIndex(images)
            self.unreadable = IdIndex(unreadable)
            self._snapshotting, self._copying = {}, {}
            for image in images.values():
                self._note_intent(image)
            self._follow_index()

    @staticmethod
    def _parse(image_id: str, data: bytes) -> Image:
        """The record stored as images/<image_id>.json; ValueError when damaged or naming another image."""
        if not is_id(image_id):
            raise ValueError("the file name is not an image id")
        image = Image.from_json(data)
        if image.id != image_id:
            raise ValueError(f"the record names image {image.id}, not the {image_id} its file name says")
        return image

    def reread(self) -> None:
        """Read the unreadable records again (an admin may have repaired them), as a change behind hsmd's back."""
        for image_id in list(self.unreadable):
            self.refresh(image_id)

    def refresh(self, image_id: str, by_host: bool = False) -> None:
        """Read one record again after a change made behind hsmd's back (`by_host`: another host's commit,
        seen when this host took the metadata-writer lease), and make the index say what it says.

        Under the index lock, so no commit of hsmd's interleaves; storage is never
        older than the index (a record is durable before the index shows it).
        """
        cause, level = ("by another host", logging.INFO) if by_host else ("behind hsmd's back", logging.WARNING)
        with self.index_lock:
            known = self.images.get(image_id)
            try:
                data = self._read_stored(image_id)
            except FileNotFoundError:
                if known is not None or image_id in self.unreadable:
                    log.log(level, "Image record %s was removed from %s %s", image_id, self.id, cause)
                self.unreadable.pop(image_id, None)
                if known is not None:
                    self._drop(known)
                return
            except OSError as e:
                log.warning("Cannot read record %s of %s again: %s", image_id, self.id, e)
                return
            try:
                image = self._parse(image_id, data)
                if known is not None and same_record(known, image) and image_id not in self.unreadable:
                    return
                conflict = self._claims(image)
                if conflict:
                    raise ValueError(conflict)
            except ValueError as e:
                if known is None and self.unreadable.get(image_id) == str(e):
                    return  # unreadable as it was: nothing to say again
                log.error("Image record %s in %s was changed %s and is unreadable: %s", image_id, self.id, cause, e)
                self.unreadable[image_id] = str(e)
                if known is not None:
                    self._drop(known)
                return
            changed = [f.name for f in fields(Image)
                       if known is not None and getattr(known, f.name) != getattr(image, f.name)]
            log.log(level, "Image record %s in %s was %s %s (%s)", image_id, self.id,
                    "repaired" if image_id in self.unreadable else "changed", cause,
                    "new" if known is None else ", ".join(changed))
            self.unreadable.pop(image_id, None)
            self.images[image_id] = image
            self._note_intent(image)

    def _claims(self, image: Image) -> str:
        """Why `image`, read again, conflicts with the records of the index ("" when it does not): only the
        images that claim one of its volumes are weighed (_conflicts)."""
        own = {vol.id for vol in image.own}
        claimants = {other.id: other for other in list(self.images.values())
                     if other.id != image.id and any(vol.id in own for vol in other.own)}
        return _conflicts({**claimants, image.id: image}).get(image.id, "") if claimants else ""

    def refresh_many(self, image_ids: set[str], slots: AbstractSet[int] = frozenset()) -> None:
        """The records another host changed (hsm.leases.writer); `slots` are a block repository's."""
        for image_id in sorted(image_ids):
            self.refresh(image_id, by_host=True)

    def rescan(self) -> None:
        """Read every record again: another host changed records this host cannot name (hsm.leases.writer)."""
        images, unreadable = self._read_records()
        log.info("Repository %s read again: %d images, %d unreadable records", self.id, len(images), len(unreadable))

    def _drop(self, image: Image) -> None:
        """Take an image out of the index and of the pending-intent indexes (the object is left as it was)."""
        del self.images[image.id]
        gone = image.copy()
        gone.removed = True
        self._note_intent(gone)

    def relabel(self, **labels: object) -> None:
        """Change labels of the record (a domain's description), durably, under the commit lock."""
        with self.lock:
            record = self._rewrite_record({name: value for name, value in labels.items() if name in LABELS})
            self.labels = _labels(record)

    def _rewrite_record(self, changes: dict) -> dict:
        """The repository record as storage holds it, with `changes`, written back durably (under the
        commit lock); the record written."""
        record = read_record(self.path, self.io)
        record.update(changes)
        try:
            self.io.write(os.path.join(self.path, RECORD), json.dumps(record).encode())
        except OSError as e:
            raise StorageDomainAccessError(f"{self.path}: {e}") from None
        return record

    def store_array_capabilities(self, capabilities: dict[str, bool], read_at: str) -> bool:
        """Keep the array's capabilities offload uses in the record, when they changed; whether they did."""
        if self.array is None or self.array_capabilities == {FILE_CLONE: bool(capabilities.get(FILE_CLONE))}:
            return False
        with self.lock:
            record = self._rewrite_record(array_fields(self.array, capabilities, read_at))
            self.array, self.array_capabilities, self.array_read_at = _array_of(record)
        log.info("Repository %s: the array's FILE_CLONE is now %s (stored)", self.id,
                 self.array_capabilities.get(FILE_CLONE))
        return True

    # -- paths ------------------------------------------------------------

    def meta_path(self, image_id: str) -> str:
        return os.path.join(self.path, IMAGES, image_id + META_SUFFIX)

    def volume_path(self, volume: Volume) -> str:
        return os.path.join(self.path, VOLUMES, volume.filename)

    # -- volumes: what differs between files and LVs ------------------------

    allocates_on_write = True  # a volume takes space as it is written (files); else it is sized up front (LVs)

    def make_volume(self, volume: Volume, size: int, below: list[Volume], preallocated: bool = False,
                    needed: int | None = None) -> None:
        """Make room for a new volume of virtual `size` over `below`, which qemu-img then formats; `needed`:
        the bytes a copy into it takes, when known. A file is made by qemu-img itself: nothing to do."""

    def grow_volume(self, volume: Volume, virtual_size: int, needed: int | None = None) -> None:
        """Make a volume able to take `needed` more bytes (None: all of its `virtual_size`). A file grows by
        itself."""

    def activated(self, volumes: list[Volume]) -> contextlib.AbstractContextManager[None]:
        """Make the volumes usable at volume_path while the block runs (files always are)."""
        return contextlib.nullcontext()

    def volume_exists(self, volume: Volume) -> bool:
        return self.io.exists(self.volume_path(volume))

    def allocated(self, volume: Volume) -> int:
        """Bytes of storage the volume takes (0 when it is gone)."""
        try:
            return self.io.stat(self.volume_path(volume))["blocks"] * 512
        except FileNotFoundError:
            return 0

    def listing(self) -> set[str]:
        """What storage holds now, as names relative to the repository (images/<id>.json, volumes/<file>)."""
        return {f"{folder}/{name}" for folder in (IMAGES, VOLUMES)
                for name in self.io.listdir(os.path.join(self.path, folder))}

    # -- the index --------------------------------------------------------

    def get(self, image_id: str, removed: bool = False) -> Image:
        self.verify(image_id)
        if image_id in self.unreadable:
            raise VolumeMetadataReadError(f"{image_id}: {self.unreadable[image_id]}")
        image = self.images.get(image_id)
        if image is None or (image.removed and not removed):
            raise ImageDoesNotExistInSD(f"{image_id} in repository {self.id}")
        return image

    def live_ids(self, kind: str | None = None) -> list[str]:
        """Live images; with no kind asked, unreadable records too (they may hold a live image)."""
        ids = [image.id for image in list(self.images.values())
               if not image.removed and (kind is None or image.kind == kind)]
        return ids + (sorted(self.unreadable) if kind is None else [])

    def ids_after(self, marker: str = "") -> Iterator[str]:
        """Ids of the index (removed images too) and of unreadable records above `marker`, in order: pages
        by id stay stable while images come and go."""
        return heapq.merge(self.images.ids_after(marker), self.unreadable.ids_after(marker))

    def _note_intent(self, image: Image) -> None:
        """Keep the indexes of pending intents (snapshots of a disk, copies of a source) up to date."""
        for disk, snapshot in list(self._snapshotting.items()):
            if snapshot == image.id:
                del self._snapshotting[disk]
        for source, copies in list(self._copying.items()):
            copies.discard(image.id)
            if not copies:
                del self._copying[source]
        if image.removed:
            return
        if isinstance(image.intent, SnapshotIntent):
            self._snapshotting[image.intent.disk] = image.id
        elif isinstance(image.intent, CopyIntent):
            self._copying.setdefault((image.intent.sourceRepo, image.intent.source), set()).add(image.id)

    def copies_pending(self, repo_uuid: str, image_id: str) -> list[str]:
        """Images here whose pending copy reads image `image_id` of repository `repo_uuid`."""
        return sorted(self._copying.get((repo_uuid, image_id), ()))

    def snapshot_pending(self, disk_id: str) -> str:
        """The snapshot of `disk_id` committed but not complete, or ''."""
        return self._snapshotting.get(disk_id, "")

    def dependents(self, image: Image) -> list[Image]:
        """Images that read through one of `image`'s volumes.

        Removed ones count too: until their own clean or merge, their volumes
        may still be read by others, through `image`'s.
        """
        own = {vol.id for vol in image.own}
        if not own:
            return []
        return [other for other in list(self.images.values())
                if other.id != image.id and any(vol.id in own for vol in other.volumes)]

    def volume_owner(self, volume_id: str) -> str | None:
        """The image that owns volume `volume_id` or will make it (a pending snapshot's new top), or None.

        A scan: only VDSM's verbs, where callers name volumes, ask it.
        """
        for image in list(self.images.values()):
            if any(vol.id == volume_id for vol in image.own):
                return image.id
            if isinstance(image.intent, SnapshotIntent) and image.intent.top == volume_id:
                return image.intent.disk
        return None

    def unowned(self, names: set[str]) -> set[str]:
        """Those of `names` (relative to the repository) that no image owns or may own.

        While any record is unreadable, every volume file counts as owned: the
        damaged record may own any of them.
        """
        left = names - self.referenced_files()
        return {name for name in left if not name.startswith(VOLUMES + "/")} if self.unreadable else left

    def damaged_places(self) -> dict[str, str]:
        """Places holding a record that cannot be read, not even whose it is: {place: why}. None here: a damaged
        record file is still named by its image id (`unreadable`)."""
        return {}

    def referenced_files(self) -> set[str]:
        """Every file a record owns or a committed operation will make, relative to the repository."""
        keep = {RECORD} | {f"{IMAGES}/{image_id}{META_SUFFIX}" for image_id in list(self.unreadable)}
        for image in list(self.images.values()):
            keep.add(f"{IMAGES}/{image.id}{META_SUFFIX}")
            keep.update(f"{VOLUMES}/{vol.filename}" for vol in image.own)
            if isinstance(image.intent, SnapshotIntent):
                keep.add(f"{VOLUMES}/{image.intent.top}.qcow2")
        return keep

    def save(self, image: Image, freeing: bool = False) -> None:
        """Write the record durably, then show it in the index; under the commit lock (on a shared
        repository: the metadata-writer lease).

        `freeing`: the write leads to space given back (a removal), so on a full
        filesystem the reserve is let go to make room for it.
        """
        with self.lock:
            image.generation += 1
            try:
                self._store(image, freeing)
            except BaseException:
                image.generation -= 1
                raise
            self.images[image.id] = image
            self._note_intent(image)

    def _store(self, image: Image, freeing: bool) -> None:
        """Write the record durably (save's storage half)."""
        name = f"{IMAGES}/{image.id}{META_SUFFIX}"
        writer = self.lock.writer

        def write() -> None:
            if writer is None:
                self.io.write(self.meta_path(image.id), image.to_json())
            else:
                writer.changing(image.id)  # the generation record opened first (once a hold)
                writer.write(self.meta_path(image.id), image.to_json())
        self.own.expect(name)
        try:
            try:
                write()
            except OSError as e:
                if e.errno != errno.ENOSPC or not freeing:
                    raise
                log.warning("Repository %s is full: releasing its reserve to record the removal of %s",
                            self.id, image.id)
                self.io.remove(os.path.join(self.path, RESERVE))
                write()
        except BaseException as e:
            self.own.consume(name)  # nothing was written: no event comes
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise NoSpaceLeftOnDomain(f"{self.id}: no room for the record of {image.id}") from None
            if isinstance(e, OSError):
                raise VolumeMetadataWriteError(f"{image.id}: {e}") from None
            raise

    def _read_stored(self, image_id: str) -> bytes:
        """The record's bytes as storage holds them now; FileNotFoundError when there is none."""
        return self.io.read(self.meta_path(image_id), 1 << 20)

    def keep_reserve(self) -> None:
        """Make the reserve whole again once there is room (after a clean gave space back)."""
        try:
            if self.io.reserve(os.path.join(self.path, RESERVE), RESERVE_BYTES):
                log.info("Repository %s: reserve of %d bytes in place", self.id, RESERVE_BYTES)
        except OSError as e:
            log.warning("Repository %s: no room for its reserve yet: %s", self.id, e)

    def remove_file(self, relative: str) -> None:
        """Remove `images/...` or `volumes/...`: hsmd's own removal, whose event a watch lets pass."""
        self.own.expect(relative)
        try:
            self.io.remove(os.path.join(self.path, relative))
        except OSError:
            self.own.consume(relative)  # nothing was removed: no event comes
            raise

    def forget(self, image_id: str) -> None:
        """Remove the record from storage, then from the index; under the commit lock."""
        with self.lock:
            self._unstore(image_id)
            image = self.images.pop(image_id, None)
            if image is not None:
                image.removed = True
                self._note_intent(image)

    def _unstore(self, image_id: str) -> None:
        name = f"{IMAGES}/{image_id}{META_SUFFIX}"
        writer = self.lock.writer
        try:
            if writer is None:
                self.remove_file(name)
                return
            writer.changing(image_id)
            self.own.expect(name)
            try:
                writer.remove(os.path.join(self.path, name))
            except BaseException:
                self.own.consume(name)
                raise
        except OSError as e:
            raise VolumeMetadataWriteError(f"{image_id}: {e}") from None

    def read_record(self, image_id: str) -> Image:
        """The record as it is on storage now (the index may be older after an outside change)."""
        try:
            return Image.from_json(self._read_stored(image_id))
        except FileNotFoundError:
            raise ImageDoesNotExistInSD(image_id) from None
        except (OSError, ValueError) as e:
            raise VolumeMetadataReadError(f"{image_id}: {e}") from None

    # -- the monitor --------------------------------------------------------

    def follow_others(self) -> None:
        """On a shared repository, what the monitor does besides the health check: its lockspace state, other
        hosts' changes read, and on_check (what dead hosts left)."""
        if self.lockspace is None:
            return
        self.lockspace.refresh_state()
        try:
            self.lock.idle()
            if self.on_check is not None:
                self.on_check()
        except Exception as e:  # storage or sanlock trouble: the health check says what it sees
            log.warning("Repository %s: cannot follow other hosts' changes: %s", self.id, e)

    def check_health(self) -> Health:
        self.follow_others()
        started = time.monotonic()
        try:
            self.io.read(os.path.join(self.path, RECORD))
            delay = time.monotonic() - started
            space = self.io.statvfs(self.path)
            self.health = Health(True, time.time(), delay, space["free"], space["total"])
        except (OSError, HsmError) as e:
            self.health = Health(False, time.time(), time.monotonic() - started, self.health.free,
                                 self.health.total, str(e))
            log.warning("Repository %s is not valid: %s", self.id, e)
        return self.health

    def start_monitor(self, interval: float) -> None:
        def watch() -> None:
            while not self._monitor_stop.wait(interval):
                self.check_health()
        self.check_health()
        threading.Thread(target=watch, name=f"monitor-{self.id}", daemon=True).start()

    def close(self) -> None:
        """Stop its threads and write its index snapshot (once connected whole)."""
        self._monitor_stop.set()
        if self.snapshot is not None and self._indexed:
            self.write_snapshot()
            if self.snapshot is not None:
                self.snapshot.close()
        self.io.close()

    def wire(self) -> dict:
        health = self.health
        return {"format": self.format, "uuid": self.uuid, "connected": True, "valid": health.valid,
                "lastCheck": f"{time.time() - health.last_check:.1f}" if health.last_check else "",
                "readDelay": f"{health.read_delay:.6f}", "freeBytes": str(health.free),
                "totalBytes": str(health.total), "path": self.path, "lastError": health.error,
                "capabilities": {"offload": self.offload_mechanisms(), "leases": self.lockspace is not None,
                                 **({"array": {**self.array.wire(), "capabilities": dict(self.array_capabilities),
                                               "readAt": self.array_read_at}} if self.array is not None else {})},
                **({"leases": self.lockspace.state()} if self.lockspace is not None else {})}


def same_record(known: Image, stored: Image) -> bool:
    """Whether the index's image is the record stored, but for its `stage`: a fix moves the stage on in
    memory as its steps run, and writes it with its next change."""
    return known == dataclasses.replace(stored, stage=known.stage)


def _conflicts(images: dict[str, Image]) -> dict[str, str]:
    """Records that claim to own a volume another record owns: {image id: why}.

    A volume has one owner; the only double claim that is right is a snapshot
    not yet complete and the disk it snapshots. Of other claimants, the removed
    ones are set aside (a clean would delete what a live image reads), or all
    of them when none or several are live: none is changed.
    """
    owners: dict[str, list[Image]] = {}
    for image in images.values():
        for vol in image.own:
            owners.setdefault(vol.id, []).append(image)
    found = {}
    for vol_id, claims in owners.items():
        if len(claims) < 2:
            continue
        snapshots = {c.intent.disk for c in claims if isinstance(c.intent, SnapshotIntent) and not c.removed}
        if len(claims) == 2 and any(c.id in snapshots for c in claims):
            continue
        live = [c for c in claims if not c.removed]
        suspects = [c for c in claims if c.removed] if len(live) == 1 else claims
        for image in suspects:
            others = ", ".join(c.id for c in claims if c is not image)
            found[image.id] = f"it claims volume {vol_id}, which {others} owns as well"
    return found
