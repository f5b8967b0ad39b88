"""A file repository (`localfs-1`; `nfs-1` and `posixfs-1` reuse it on a mount).

Layout under the repository's path:

    repository.json        {format, uuid, version, created}
    images/<id>.json       one record per image (hsm.storage.image.Image)
    volumes/<vol>.qcow2    the volume files

Every file operation goes through the repository's IOProcess, so a hung
mount blocks only that helper. The records are loaded once, at connect, into
an in-memory index; after that a lookup costs the same with 10 or 10,000
images, and the index changes only after the record is durable on storage.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass

from hsm.errors import (
    HsmError,
    ImageDoesNotExistInSD,
    StorageDomainAccessError,
    StorageDomainAlreadyExists,
    StorageDomainCreationError,
    StorageDomainDoesNotExist,
    StorageDomainNotEmpty,
    StorageDomainTypeError,
    VolumeMetadataReadError,
    VolumeMetadataWriteError,
)
from hsm.storage.image import Image, Volume
from hsm.storage.ioprocess import IOProcess

log = logging.getLogger("hsm.storage.repository")

FILE_FORMATS = ("localfs-1", "nfs-1", "posixfs-1")
VERSION = 1
RECORD = "repository.json"
IMAGES = "images"
VOLUMES = "volumes"
META_SUFFIX = ".json"


def create(path: str, repo_format: str, io: IOProcess, force: bool = False) -> str:
    """Format `path` as an empty repository; returns its uuid."""
    if repo_format not in FILE_FORMATS:
        raise StorageDomainTypeError(repo_format)
    try:
        if not io.stat(path)["mode"] & 0o040000:
            raise StorageDomainCreationError(f"{path} is not a directory")
        entries = io.listdir(path)
    except FileNotFoundError:
        raise StorageDomainDoesNotExist(f"{path}: no such directory") from None
    except OSError as e:
        raise StorageDomainAccessError(f"{path}: {e}") from None
    if entries and not force:
        if RECORD in entries:
            raise StorageDomainAlreadyExists(f"{path} holds a repository; options.force replaces it")
        raise StorageDomainNotEmpty(f"{path} is not empty; options.force formats it anyway")
    repo_uuid = str(uuid.uuid4())
    try:
        for folder in (IMAGES, VOLUMES):
            io.makedirs(os.path.join(path, folder))
        if force:
            for folder in (IMAGES, VOLUMES):
                for name in io.listdir(os.path.join(path, folder)):
                    io.remove(os.path.join(path, folder, name))
        record = {"format": repo_format, "uuid": repo_uuid, "version": VERSION, "created": time.time()}
        io.write(os.path.join(path, RECORD), json.dumps(record).encode())
    except OSError as e:
        raise StorageDomainCreationError(f"{path}: {e}") from None
    log.info("Created %s repository %s at %s", repo_format, repo_uuid, path)
    return repo_uuid


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
        self.images: dict[str, Image] = {}
        self._snapshotting: dict[str, str] = {}  # disk id -> the snapshot of it not yet complete
        self.lock = threading.RLock()  # the commit lock: a check and the record write it allows, as one step
        self.health = Health()
        self._monitor_stop = threading.Event()

    # -- connect ----------------------------------------------------------

    def load(self) -> None:
        """Read the repository record and every image record into the index."""
        try:
            record = json.loads(self.io.read(os.path.join(self.path, RECORD)))
        except FileNotFoundError:
            raise StorageDomainDoesNotExist(f"{self.path} holds no repository") from None
        except (OSError, ValueError) as e:
            raise StorageDomainAccessError(f"{self.path}: {e}") from None
        if record.get("format") != self.format:
            raise StorageDomainTypeError(f"{self.path} is a {record.get('format')} repository, not {self.format}")
        self.uuid = record["uuid"]
        try:
            found = self.io.read_all(os.path.join(self.path, IMAGES), META_SUFFIX)
        except OSError as e:
            raise StorageDomainAccessError(f"{self.path}: {e}") from None
        images = {}
        for name, data in found.items():
            try:
                image = Image.from_json(data)
            except (ValueError, TypeError, KeyError) as e:
                log.error("Skipping unreadable image record %s: %s", name, e)
                continue
            images[image.id] = image
        with self.lock:
            self.images = images
            self._snapshotting = {}
            for image in images.values():
                self._note_intent(image)
        log.info("Repository %s (%s) loaded: %d images", self.id, self.uuid, len(images))

    # -- paths ------------------------------------------------------------

    def meta_path(self, image_id: str) -> str:
        return os.path.join(self.path, IMAGES, image_id + META_SUFFIX)

    def volume_path(self, volume: Volume) -> str:
        return os.path.join(self.path, VOLUMES, volume.filename)

    # -- the index --------------------------------------------------------

    def get(self, image_id: str, removed: bool = False) -> Image:
        image = self.images.get(image_id)
        if image is None or (image.removed and not removed):
            raise ImageDoesNotExistInSD(f"{image_id} in repository {self.id}")
        return image

    def live_ids(self, kind: str | None = None) -> list[str]:
        return [image.id for image in list(self.images.values())
                if not image.removed and (kind is None or image.kind == kind)]

    def _note_intent(self, image: Image) -> None:
        if image.intent.get("op") == "snapshot" and not image.removed:
            self._snapshotting[image.intent["disk"]] = image.id
        else:
            for disk, snapshot in list(self._snapshotting.items()):
                if snapshot == image.id:
                    del self._snapshotting[disk]

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

    def referenced_files(self) -> set[str]:
        """Every file a record owns or a committed operation will make, relative to the repository."""
        keep = {RECORD}
        for image in list(self.images.values()):
            keep.add(f"{IMAGES}/{image.id}{META_SUFFIX}")
            keep.update(f"{VOLUMES}/{vol.filename}" for vol in image.own)
            if image.intent.get("op") == "snapshot":
                keep.add(f"{VOLUMES}/{image.intent['top']}.qcow2")
        return keep

    def save(self, image: Image) -> None:
        """Write the record durably, then show it in the index."""
        image.generation += 1
        try:
            self.io.write(self.meta_path(image.id), image.to_json())
        except OSError as e:
            image.generation -= 1
            raise VolumeMetadataWriteError(f"{image.id}: {e}") from None
        with self.lock:
            self.images[image.id] = image
            self._note_intent(image)

    def forget(self, image_id: str) -> None:
        try:
            self.io.remove(self.meta_path(image_id))
        except OSError as e:
            raise VolumeMetadataWriteError(f"{image_id}: {e}") from None
        with self.lock:
            image = self.images.pop(image_id, None)
            if image is not None and image.intent.get("op") == "snapshot":
                self._snapshotting.pop(image.intent["disk"], None)

    def read_record(self, image_id: str) -> Image:
        """The record as it is on storage now (the index may be older after an outside change)."""
        try:
            return Image.from_json(self.io.read(self.meta_path(image_id)))
        except FileNotFoundError:
            raise ImageDoesNotExistInSD(image_id) from None
        except (OSError, ValueError) as e:
            raise VolumeMetadataReadError(f"{image_id}: {e}") from None

    # -- the monitor --------------------------------------------------------

    def check_health(self) -> Health:
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
        self._monitor_stop.set()
        self.io.close()

    def wire(self) -> dict:
        health = self.health
        return {"format": self.format, "uuid": self.uuid, "connected": True, "valid": health.valid,
                "lastCheck": f"{time.time() - health.last_check:.1f}" if health.last_check else "",
                "readDelay": f"{health.read_delay:.6f}", "freeBytes": str(health.free),
                "totalBytes": str(health.total), "path": self.path, "lastError": health.error,
                "capabilities": {"offload": [], "leases": False}}
