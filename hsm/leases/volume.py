"""Volume leases: one sanlock resource per image of a shared repository, so that one host at a time runs a
VM on the image (VDSM's volume leases; libvirt's <lease> element names the same path and offset).

On a file repository an image's lease is the file leases/<image id>.lease (1 MiB, the lease at offset 0)
in the repository's lockspace; on a block repository, the MiB of its leases LV that belongs to the
image's record slot (SlotLeases). It is made at the image's first prepareImage on any host, under the
metadata-writer lease (so two hosts never make it at once), and removed with the image (a block slot's
is written over by the next image of the slot). getImageInfo shows its path and offset for a
VM to hold. With `[irs] use_volume_leases`, prepareImage takes it for this host (held by the repository's
I/O helper until teardownImage) and refuses an image another host holds; removal of an image whose lease
another host holds is refused wherever [irs] use_volume_leases stands.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Callable

from hsm.errors import AcquireLockFailure, StorageTimeout, VolumeIsBusy
from hsm.leases.lockspace import HELD_ELSEWHERE, NO_LEASE, Lockspace, host_dead_seconds
from hsm.storage.ioprocess import IOProcess

log = logging.getLogger("hsm.leases")

LEASE_SIZE = 1 << 20
SUFFIX = ".lease"


def resource(image_id: str) -> bytes:
    """sanlock's name for the image's lease (at most 48 bytes: longer ids are hashed)."""
    name = image_id.encode()
    return name if len(name) <= 48 else hashlib.sha256(name).hexdigest()[:48].encode()


class VolumeLeases:
    """The volume leases of a file repository: one file each in its leases folder."""

    def __init__(self, lockspace: Lockspace, io: IOProcess, folder: str) -> None:
        self.lockspace = lockspace
        self.io = io
        self.folder = folder
        self.held: set[str] = set()  # images whose lease this host holds

    def place(self, image_id: str) -> tuple[str, int] | None:
        """(path, offset) of the image's lease; None when it can have none."""
        return self._file(image_id), 0

    def _file(self, image_id: str) -> str:
        return os.path.join(self.folder, image_id + SUFFIX)

    def wire(self, image_id: str) -> dict:
        """getImageInfo's `lease`: where a VM's lease of the image is ({} when it has none)."""
        place = self.place(image_id)
        return {} if place is None else {"path": place[0], "offset": str(place[1])}

    def ensure(self, image_id: str) -> None:
        """Make the image's lease if it has none yet (the caller holds the metadata-writer lease)."""
        path, _ = self._place(image_id)
        if self.io.lease_init(self.lockspace.name, resource(image_id), path, LEASE_SIZE):
            log.info("Made the volume lease of %s", image_id)

    def _place(self, image_id: str) -> tuple[str, int]:
        place = self.place(image_id)
        if place is None:
            raise AcquireLockFailure(f"{image_id}: the image has no volume lease (its record slot is past the "
                                     f"repository's leases LV)")
        return place

    def acquire(self, image_id: str) -> None:
        """Hold the image's lease for this host; AcquireLockFailure naming the host that holds it."""
        path, offset = self._place(image_id)
        try:  # sanlock waits out a failing holder (up to its host-dead time) before it answers
            self.io.lease_acquire(self.lockspace.name, resource(image_id), path, offset,
                                  timeout=host_dead_seconds(self.lockspace.io_timeout) + 30)
            self.held.add(image_id)
        except OSError as e:
            if abs(e.errno or 0) in HELD_ELSEWHERE:
                holders = ", ".join(str(host) for host in self.holders(image_id)) or "another host"
                raise AcquireLockFailure(f"{image_id}: its volume lease is held by host {holders}") from None
            raise AcquireLockFailure(f"{image_id}: sanlock refused its volume lease (error {e.errno})") from None

    def release(self, image_id: str) -> None:
        self.held.discard(image_id)
        place = self.place(image_id)
        if place is None:
            return
        try:
            self.io.lease_release(self.lockspace.name, resource(image_id), *place)
        except (OSError, StorageTimeout) as e:  # a helper that died took the lease with it
            log.warning("Cannot release the volume lease of %s: %s", image_id, e)

    def holders(self, image_id: str) -> list[int]:
        """Host ids holding the image's lease ([] when it has none)."""
        place = self.place(image_id)
        if place is None:
            return []
        try:
            return self.io.lease_owners(self.lockspace.name, resource(image_id), *place)
        except OSError as e:
            if abs(e.errno or 0) in {errno.ENOENT, *NO_LEASE}:  # no lease file, or not this image's lease yet
                return []
            raise

    def check_unused(self, image_id: str) -> None:
        """Refuse (203) to remove an image a VM on another host holds."""
        holders = [host for host in self.holders(image_id) if host != self.lockspace.host_id]
        if holders:
            raise VolumeIsBusy(f"{image_id} is in use on host {', '.join(map(str, holders))} (its volume lease)")

    def forget(self, image_id: str) -> None:
        """Remove the lease file of a removed image."""
        try:
            self.io.remove(self._file(image_id))
        except FileNotFoundError:
            pass


class SlotLeases(VolumeLeases):
    """The volume leases of a block repository: in its leases LV, the MiB after the metadata-writer lease's for
    each record slot (slot N's at N + 1 MiB), as many as the LV holds. An image's lease moves with nothing:
    its slot is its own while its record lives."""

    def __init__(self, lockspace: Lockspace, io: IOProcess, device: str, size: int,
                 slot_of: Callable[[str], int | None]) -> None:
        super().__init__(lockspace, io, "")
        self.device, self.size = device, size
        self._slot_of = slot_of

    def place(self, image_id: str) -> tuple[str, int] | None:
        slot = self._slot_of(image_id)
        if slot is None or (slot + 2) * LEASE_SIZE > self.size:
            return None
        return self.device, (slot + 1) * LEASE_SIZE

    def ensure(self, image_id: str) -> None:
        """Write the image's lease in its slot's place unless it is there (an earlier image of the slot left its
        own: no host holds that one, or the image could not have been removed)."""
        place = self.place(image_id)
        if place is None:
            log.warning("Image %s has no volume lease: its record slot is past the leases LV", image_id)
            return
        if not self._written(image_id, place):
            self.io.lease_format(self.lockspace.name, resource(image_id), *place)
            log.info("Made the volume lease of %s at %s:%d", image_id, *place)

    def holders(self, image_id: str) -> list[int]:
        place = self.place(image_id)
        return super().holders(image_id) if place is not None and self._written(image_id, place) else []

    def _written(self, image_id: str, place: tuple[str, int]) -> bool:
        """Whether the image's own lease is in its place (not zeros, nor an earlier image's of the slot)."""
        try:
            found = self.io.lease_read(*place)
        except OSError as e:
            if abs(e.errno or 0) in {errno.EINVAL, *NO_LEASE}:  # zeros read as EINVAL
                return False
            raise
        return found.get("lockspace") == self.lockspace.name and found.get("resource") == resource(image_id)

    def forget(self, image_id: str) -> None:
        """Nothing to remove: the slot's next image writes its own lease over this one."""
