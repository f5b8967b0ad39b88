"""Changes made behind hsmd's back to a repository on a local file system, seen as they happen.

An admin who edits, damages, repairs or deletes an image record, or deletes
a volume file, is seen at once through inotify (hsm.watch): the record is
read again into the index (unreadable ones answer 207 from then on), and an
image whose volume vanished turns broken (201). hsmd's own writes and
removals make events too; it counts each before making it (hsm.watch.OwnChanges)
and lets its event pass. inotify cannot see what other hosts do on shared
storage, so only localfs-1 repositories on a local file system are watched;
the others are read again by checkStorageRepository.
"""

from __future__ import annotations

import logging
import os

from hsm.connections.backends import filesystem_of
from hsm.errors import VolumeDoesNotExist
from hsm.ids import is_id
from hsm.storage.image import BROKEN
from hsm.storage.repository import IMAGES, META_SUFFIX, VOLUMES, FileRepository
from hsm.watch import CHANGED, GONE, Watcher

log = logging.getLogger("hsm.storage.watching")

LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})


class RepositoryWatch:
    def __init__(self, repo: FileRepository, watcher: Watcher, fixes) -> None:  # fixes: hsm.storage.fixes.Fixes
        self.repo = repo
        self.fixes = fixes
        self._watcher = watcher
        self._wds: list[int] = []

    @classmethod
    def start(cls, repo: FileRepository, watcher: Watcher | None, fixes) -> RepositoryWatch | None:
        """Watch `repo` if inotify can see every change to it; None where only polling can."""
        if watcher is None or repo.format != "localfs-1":
            return None
        filesystem = filesystem_of(repo.path)
        if filesystem not in LOCAL_FILESYSTEMS:
            log.info("Repository %s is on %s: changes behind hsmd's back are seen by checks only", repo.id,
                     filesystem or "an unknown file system")
            return None
        watch = cls(repo, watcher, fixes)
        try:
            watch._wds.append(watcher.watch(os.path.join(repo.path, IMAGES), CHANGED | GONE, watch._record))
            watch._wds.append(watcher.watch(os.path.join(repo.path, VOLUMES), GONE, watch._volume_gone))
        except OSError as e:
            log.warning("Cannot watch repository %s (%s): changes behind hsmd's back are seen by checks only",
                        repo.id, e.strerror)
            watch.stop()
            return None
        repo.own.active = True
        return watch

    def stop(self) -> None:
        self.repo.own.active = False
        for wd in self._wds:
            self._watcher.unwatch(wd)

    def _record(self, name: str, mask: int) -> None:
        image_id = name[:-len(META_SUFFIX)] if name.endswith(META_SUFFIX) else ""
        if not is_id(image_id) or self.repo.own.consume(f"{IMAGES}/{name}"):
            return  # an atomic write's temporary file, or hsmd's own write
        self.repo.refresh(image_id)

    def _volume_gone(self, name: str, mask: int) -> None:
        if self.repo.own.consume(f"{VOLUMES}/{name}"):
            return
        for image in list(self.repo.images.values()):
            if image.removed or image.intent or image.state == BROKEN:
                continue  # nothing to mark: a pending intent's fix or the clean says what it needs
            lost = next((vol for vol in image.volumes if vol.filename == name), None)
            if lost is not None:
                error = VolumeDoesNotExist(f"{image.id}: volume {lost.id} is missing from storage (removed "
                                           "behind hsmd's back)")
                log.error("%s", error)
                self.fixes.update(self.repo, image, state=BROKEN, lastError=error.last_error())
