"""Volume leases: one sanlock resource per image of a shared repository, so that one host at a time runs a
VM on the image (VDSM's volume leases; libvirt's <lease> element names the same path and offset).

An image's lease is the file leases/<image id>.lease (1 MiB, the lease at offset 0) in the repository's
lockspace, made at the image's first prepareImage on any host, under the metadata-writer lease (so two
hosts never make it at once), and removed with the image. getImageInfo shows its path and offset for a
VM to hold. With `[irs] use_volume_leases`, prepareImage takes it for this host (held by the repository's
I/O helper until teardownImage) and refuses an image another host holds; removal of an image whose lease
another host holds is refused wherever [irs] use_volume_leases stands.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os

from hsm.errors import AcquireLockFailure, StorageTimeout, VolumeIsBusy
from hsm.leases.lockspace import HELD_ELSEWHERE, Lockspace, host_dead_seconds
from hsm.storage.ioprocess import IOProcess

log = logging.getLogger("hsm.leases")

LEASE_SIZE = 1 << 20
SUFFIX = ".lease"


def resource(image_id: str) -> bytes:
    """sanlock's name for the image's lease (at most 48 bytes: longer ids are hashed)."""
    name = image_id.encode()
    return name if len(name) <= 48 else hashlib.sha256(name).hexdigest()[:48].encode()


class VolumeLeases:
    def __init__(self, lockspace: Lockspace, io: IOProcess, folder: str) -> None:
        self.lockspace = lockspace
        self.io = io
        self.folder = folder
        self.held: set[str] = set()  # images whose lease this host holds

    def path(self, image_id: str) -> str:
        return os.path.join(self.folder, image_id + SUFFIX)

    def wire(self, image_id: str) -> dict:
        """getImageInfo's `lease`: where a VM's lease of the image is."""
        return {"path": self.path(image_id), "offset": "0"}

    def ensure(self, image_id: str) -> None:
        """Make the image's lease if it has none yet (the caller holds the metadata-writer lease)."""
        if self.io.lease_init(self.lockspace.name, resource(image_id), self.path(image_id), LEASE_SIZE):
            log.info("Made the volume lease of %s", image_id)

    def acquire(self, image_id: str) -> None:
        """Hold the image's lease for this host; AcquireLockFailure naming the host that holds it."""
        try:  # sanlock waits out a failing holder (up to its host-dead time) before it answers
            self.io.lease_acquire(self.lockspace.name, resource(image_id), self.path(image_id), 0,
                                  timeout=host_dead_seconds(self.lockspace.io_timeout) + 30)
            self.held.add(image_id)
        except OSError as e:
            if abs(e.errno or 0) in HELD_ELSEWHERE:
                holders = ", ".join(str(host) for host in self.holders(image_id)) or "another host"
                raise AcquireLockFailure(f"{image_id}: its volume lease is held by host {holders}") from None
            raise AcquireLockFailure(f"{image_id}: sanlock refused its volume lease (error {e.errno})") from None

    def release(self, image_id: str) -> None:
        self.held.discard(image_id)
        try:
            self.io.lease_release(self.lockspace.name, resource(image_id), self.path(image_id), 0)
        except (OSError, StorageTimeout) as e:  # a helper that died took the lease with it
            log.warning("Cannot release the volume lease of %s: %s", image_id, e)

    def holders(self, image_id: str) -> list[int]:
        """Host ids holding the image's lease ([] when it has none)."""
        try:
            return self.io.lease_owners(self.lockspace.name, resource(image_id), self.path(image_id))
        except OSError as e:
            if abs(e.errno or 0) in (errno.ENOENT, 223):  # no lease file, or no lease in it yet
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
            self.io.remove(self.path(image_id))
        except FileNotFoundError:
            pass
