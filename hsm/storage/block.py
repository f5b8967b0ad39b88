"""A block repository (`block-1`): an LVM volume group on shared LUNs, one LV per volume.

Layout of the VG:

    tags            HSM_FORMAT=block-1, HSM_UUID=<uuid>: what makes the VG a repository, read by one vgs
    LV metadata     1 GiB (8 extents of VDSM's 128 MiB), one linear segment: the records in slots
                    (hsm.storage.slots), slot 0 the repository record, then one slot per image
    LV ids          one extent: the sanlock lockspace of the hosts using the repository (named by its uuid)
    LV leases       2 GiB (VDSM's): the generation record in two copies of 256 KiB from offset 0
                    (hsm.leases.writer), the metadata-writer lease at 1 MiB, as VDSM's SDM lease sat, then
                    the volume lease of the image in record slot N at N + 1 MiB (hsm.leases.volume.SlotLeases)
    LV <volume id>  one per volume; tags IU_<image id> and PU_<the volume below, or VDSM's blank uuid>,
                    as VDSM tagged them, so `lvs -o+tags` tells an admin what each LV is

Volumes are used through links: <state dir>/block/<repository uuid>/<volume file name> points at the
LV's device while it is active (`[irs] lv_activation`: /dev/<vg>/<lv>, or a loop device over its
extents). A qcow2 chain names its backing volumes by those file names, so chains resolve within the
links folder whatever device each LV got. Links are made by the activation that needs them and
removed with it; every link is removed at connect, so none survives a reboot that reassigned loop
devices.

A raw volume takes its whole virtual size, zeroed when made (an LV may hold an earlier volume's
bytes). A qcow2 volume starts at the smaller of its fully allocated size and VDSM's 1 GiB chunk, and
grows by lvextend (extendVolume, a merge, an optimize). Where LVs are mapped by loop devices
(`lv_activation = loop`) an LV must stay one linear segment, and an LV followed by another cannot grow
in place: there every LV is made at the full size its volume can take (thin qcow2 in a thick LV), so
no fix ever needs to grow one.

Many hosts use one VG: each changes records, and LVM's metadata (lvcreate, lvextend, lvremove), only
while it holds the repository's metadata-writer lease, and its slot writes are fenced by it (made by the
I/O helper that holds the lease, hsm.leases.writer). The generation record names the slots each change
wrote, so a host that takes the lease reads those slots again and knows where every record is. A VG made
before the ids and leases LVs existed has no lockspace: one host at a time uses it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

from hsm.errors import (
    ClusterLockInitError,
    HsmError,
    InvalidParameterException,
    LogicalVolumeAlreadyExists,
    NoSpaceLeftOnDomain,
    StorageDomainAccessError,
    StorageDomainTypeError,
    VolumeMetadataWriteError,
)
from hsm.ids import is_uuid
from hsm.leases.lockspace import IDS_SIZE, Lockspace, Paths
from hsm.leases.volume import SlotLeases
from hsm.leases.writer import Writer
from hsm.storage import qemuimg
from hsm.storage.activation import LVActivation
from hsm.storage.image import Image, Volume
from hsm.storage.intents import SnapshotIntent
from hsm.storage.ioprocess import IOProcess
from hsm.storage.lvm import LVM
from hsm.storage.repository import LABELS, VERSION, VOLUMES, FileRepository, Health, _labels
from hsm.storage.slots import RECORD, RecordTooLarge, Slot, SlotsFull, SlotStore, read_slot, write_next
from hsm.storage.udev_monitor import BlockDeviceEvent, BlockDeviceMonitor

log = logging.getLogger("hsm.storage.block")

FORMAT = "block-1"
FORMAT_TAG = f"HSM_FORMAT={FORMAT}"
UUID_TAG = "HSM_UUID="
METADATA_LV = "metadata"
IDS_LV, LEASES_LV = "ids", "leases"  # VDSM's names for the same areas
AREAS = (METADATA_LV, IDS_LV, LEASES_LV)  # the LVs that hold no volume
GENERATION_COPY = 256 << 10  # bytes of one copy of the generation record, at the start of the leases LV
GiB = 1 << 30
LEASES_LV_SIZE = 2 * GiB     # VDSM's: volume leases of the images in the first 2,046 record slots
METADATA_SIZE = GiB
QCOW2_CHUNK = GiB               # VDSM's volume_utilization_chunk_mb: a new thin qcow2 LV's first size
BLANK_UUID = "00000000-0000-0000-0000-000000000000"
IMAGE_TAG, PARENT_TAG = "IU_", "PU_"
# VDSM's blockSD tags: a VG createVG made, and one createStorageDomain made a domain of.
STORAGE_UNREADY_DOMAIN_TAG = "RHAT_storage_domain_UNREADY"
STORAGE_DOMAIN_TAG = "RHAT_storage_domain"


def refusal(disk: dict) -> str:
    """Why a disk of supervdsmd's listing may not become a PV of a repository's VG, or "" (a free disk, or
    a PV in no VG)."""
    name = disk.get("name") or disk.get("devnode")
    if disk.get("vgName"):
        return f"{name} belongs to volume group {disk['vgName']}"
    if disk.get("inUse") and disk.get("usedBy") != "pv":
        return f"{name} is in use ({disk.get('usedBy') or 'a signature'})"
    if disk.get("readOnly"):
        return f"{name} is read-only"
    return ""


def repository_uuid(tags: tuple[str, ...]) -> str:
    """The repository uuid a VG's tags carry, or '' when the VG is no block-1 repository."""
    if FORMAT_TAG not in tags:
        return ""
    found = [tag[len(UUID_TAG):] for tag in tags if tag.startswith(UUID_TAG)]
    return found[0] if len(found) == 1 and is_uuid(found[0]) else ""


def full_size(volume: Volume, size: int) -> int:
    """The most bytes a volume of virtual `size` can take (a qcow2's metadata included)."""
    return size if volume.format == "raw" else int(qemuimg.measure(size)["fully-allocated"])


class GenerationCopies:
    """The generation record of a block repository (hsm.leases.writer.GenerationPlace): two copies at the start
    of its leases LV, written in turn as a record slot's are (a torn write damages only the copy it wrote)."""

    def __init__(self, io: IOProcess, device: str, repo_uuid: str) -> None:
        self.io, self.device, self.uuid = io, device, repo_uuid
        self.path = f"{device} (the generation record)"
        self._known: Slot | None = None  # as read or written last

    def read(self) -> bytes:
        slot = read_slot(self.uuid, 0, self.io.read_at(self.device, 0, 2 * GENERATION_COPY), GENERATION_COPY)
        self._known = slot
        if slot.newest is None:
            if slot.damage:
                raise ValueError(slot.damage)
            raise FileNotFoundError(self.path)
        return slot.newest.payload

    def write(self, writer: Writer, data: bytes) -> None:
        """The write goes to the copy not holding the newest version (the holder read it when it took the
        lease; no other host writes while it holds it)."""
        known = self._known
        if known is None:
            try:
                self.read()
            except (FileNotFoundError, ValueError):
                pass
            known = self._known or Slot(0, None, 0)
        self._known = write_next(writer.write_at, self.device, 0, GENERATION_COPY, self.uuid, known, "", RECORD,
                                 data)


class BlockRepository(FileRepository):
    """The index and verbs of FileRepository over a VG: what differs is where records and volumes live.

    `path` is the links folder (where volume_path points); the VG's name is `vg_name`.
    """

    def __init__(self, repo_id: str, lvm: LVM, activation: LVActivation, io: IOProcess, links_dir: str) -> None:
        super().__init__(repo_id, links_dir, FORMAT, io)
        self.lvm = lvm
        self.vg_name = lvm.vg_name
        self.activation = activation
        self.slots: SlotStore | None = None
        self._active: collections.Counter[str] = collections.Counter()  # LV -> users here (fixes, prepared)
        self._active_lock = threading.Lock()
        self._damaged: dict[int, str] = {}
        self._metadata_active = False  # only an LV this repository activated is ever deactivated by it
        self._monitor: BlockDeviceMonitor | None = None

    # -- connect ----------------------------------------------------------

    def watch_devices(self, monitor: BlockDeviceMonitor | None) -> None:
        """Invalidate LVM's cache of the VG when one of its PVs changes (resized, gone, back)."""
        if monitor is not None:
            self._monitor = monitor
            monitor.add_callback(self._device_event)

    def _device_event(self, event: BlockDeviceEvent) -> None:
        if event.devnode in self.lvm.devices:
            log.info("%s: %s %s: LVM's view of %s is read again", self.id, event.action, event.devnode,
                     self.vg_name)
            self.lvm.invalidate()

    def open(self) -> None:
        """Read the VG's tags and make its metadata LV usable here, and its ids and leases LVs where it has them
        (then `lease_paths` says where its lockspace is)."""
        vg = self.lvm.vg()
        repo_uuid = repository_uuid(vg.tags)
        if not repo_uuid:
            raise StorageDomainTypeError(f"volume group {self.vg_name} is not a {FORMAT} repository (no "
                                         f"{FORMAT_TAG} and {UUID_TAG}<uuid> tags)")
        self.uuid = repo_uuid
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        for name in os.listdir(self.path):  # links of an earlier run: their devices may be others' now
            os.unlink(os.path.join(self.path, name))
        self._metadata_active = True
        device = self._activate(METADATA_LV)
        self.slots = SlotStore(self.io, device, repo_uuid, self.lvm.volume(METADATA_LV).size)
        if {IDS_LV, LEASES_LV} <= set(self.lvm.volumes()):
            self.lease_paths = Paths(self._activate(IDS_LV), self._activate(LEASES_LV))
        else:
            log.warning("Repository %s (VG %s) has no %s and %s LVs (made by an earlier hsm): no lockspace, one "
                        "host at a time may use it", self.id, self.vg_name, IDS_LV, LEASES_LV)

    def generation_place(self) -> GenerationCopies:
        assert self.lease_paths is not None
        return GenerationCopies(self.io, self.lease_paths.leases, self.uuid)

    def make_volume_leases(self, lockspace: Lockspace) -> SlotLeases:
        assert self.lease_paths is not None and self.slots is not None
        return SlotLeases(lockspace, self.io, self.lease_paths.leases, self.lvm.volume(LEASES_LV).size,
                          self.slots.slot_of)

    def share(self, writer: Writer) -> None:
        super().share(writer)
        assert self.slots is not None
        self.slots.write_at = writer.write_at  # every slot write fenced by the lease

    def load(self) -> None:
        """Read every record from the metadata LV into the index (after open())."""
        assert self.slots is not None
        try:
            record = self.slots.repository()
        except OSError as e:
            raise StorageDomainAccessError(f"{self.vg_name}/{METADATA_LV}: {e}") from None
        if record is None:
            raise StorageDomainAccessError(f"{self.vg_name}: the metadata LV holds no repository record")
        try:
            self.labels = _labels(json.loads(record))
        except ValueError as e:
            raise StorageDomainAccessError(f"{self.vg_name}: the repository record is damaged: {e}") from None
        images, unreadable = self._read_records()
        log.info("Repository %s (%s, VG %s) loaded: %d images, %d unreadable records", self.id, self.uuid,
                 self.vg_name, len(images), len(unreadable))

    def _read_records(self) -> tuple[dict[str, Image], dict[str, str]]:
        assert self.slots is not None
        try:
            found, self._damaged = self.slots.load()
        except OSError as e:
            raise StorageDomainAccessError(f"{self.vg_name}/{METADATA_LV}: {e}") from None
        for number, reason in self._damaged.items():
            log.error("Slot %d of %s/%s is damaged (%s): every LV counts as owned until it is repaired",
                      number, self.vg_name, METADATA_LV, reason)
        self.lvm.invalidate()  # another host may have changed LVs with them
        return self._index(found)

    def refresh_many(self, image_ids: set[str], slots: AbstractSet[int] = frozenset()) -> None:
        """Another host's changes: the slots it wrote are read again first (where each record is now), and
        LVM's view (it made or removed LVs with them)."""
        assert self.slots is not None
        self.slots.reread(slots)
        self.lvm.invalidate()
        super().refresh_many(image_ids, slots)

    @staticmethod
    def _parse(image_id: str, data: bytes) -> Image:
        image = Image.from_json(data)
        if image.id != image_id:
            raise ValueError(f"the record names image {image.id}, not the {image_id} its slot says")
        # hsm names every volume's LV by a uuid: any other name (the metadata LV, an admin's LV) is never a
        # volume, so a record naming one can neither hand it to a VM nor have a clean remove it
        names = [vol.id for vol in image.volumes]
        if isinstance(image.intent, SnapshotIntent):
            names.append(image.intent.top)
        wrong = [name for name in names if not is_uuid(name)]
        if wrong:
            raise ValueError(f"volume {wrong[0]!r} is not a volume name of a block repository")
        return image

    def relabel(self, **labels: object) -> None:
        with self.lock:
            assert self.slots is not None
            record = json.loads(self.slots.repository() or b"{}")
            record.update({name: value for name, value in labels.items() if name in LABELS})
            try:
                self.slots.write_repository(json.dumps(record).encode())
            except OSError as e:
                raise StorageDomainAccessError(f"{self.vg_name}: {e}") from None
            self.labels = _labels(record)

    # -- records ------------------------------------------------------------

    def _store(self, image: Image, freeing: bool) -> None:
        assert self.slots is not None
        writer = self.lock.writer
        try:
            if writer is not None:
                writer.changing(image.id)
            number = self.slots.write(image.id, image.to_json())
            if writer is not None:
                writer.changing(image.id, number)
        except RecordTooLarge as e:
            raise VolumeMetadataWriteError(f"{image.id}: its record is too large: {e}") from None
        except SlotsFull as e:
            raise NoSpaceLeftOnDomain(f"{self.id}: {e}") from None
        except OSError as e:
            raise VolumeMetadataWriteError(f"{image.id}: {e}") from None

    def _read_stored(self, image_id: str) -> bytes:
        assert self.slots is not None
        data = self.slots.read(image_id)
        if data is None:
            raise FileNotFoundError(image_id)
        return data

    def _unstore(self, image_id: str) -> None:
        assert self.slots is not None
        writer = self.lock.writer
        try:
            if writer is not None:
                writer.changing(image_id)
            number = self.slots.free(image_id)
            if writer is not None and number is not None:
                writer.changing(image_id, number)
        except OSError as e:
            raise VolumeMetadataWriteError(f"{image_id}: {e}") from None

    def keep_reserve(self) -> None:
        """Nothing to keep: a removal frees its slot in place and gives extents back."""

    # -- volumes --------------------------------------------------------------

    allocates_on_write = False

    def make_volume(self, volume: Volume, size: int, below: list[Volume], preallocated: bool = False,
                    needed: int | None = None) -> None:
        """The LV of a new volume (again after a crash: then only grown if it is too small); a raw one zeroed."""
        full = full_size(volume, size)
        thin = volume.format == "qcow2" and not preallocated and not self._contiguous
        bytes_ = full if not thin else min(full, needed if needed is not None else QCOW2_CHUNK)
        parent = below[0].id if below else BLANK_UUID
        with self._changing_lvm():
            try:  # one lvcreate, no lvs: the LV is new but after a crash
                self.lvm.create_lv(volume.id, bytes_, tags=[IMAGE_TAG + volume.image, PARENT_TAG + parent],
                                   contiguous=self._contiguous)
            except LogicalVolumeAlreadyExists:
                known = self.lvm.volume(volume.id)
                if known.size < bytes_:
                    self.grow_volume(volume, size, bytes_ - known.size)
        if volume.format == "raw":
            with self.activated([volume]):
                self.io.zero_range(self.volume_path(volume), 0, self.lvm.volume(volume.id).size)

    def grow_volume(self, volume: Volume, virtual_size: int, needed: int | None = None) -> None:
        """Extend the volume's LV to hold `needed` more bytes than it holds now (None: all of its
        `virtual_size`), never past what that size can take; where it is active here, its link then leads
        to a device of the new size."""
        full = full_size(volume, virtual_size)
        known = self.lvm.volume(volume.id)
        wanted = full if needed is None else min(full, known.size + needed)
        if known.size < wanted:
            self.extend(volume, wanted)

    def extend(self, volume: Volume, size: int) -> None:
        """Extend the volume's LV to at least `size` bytes (VDSM's extendVolume); where it is active here, its
        link then leads to a device of the new size. Under `loop` activation only the extents right after
        it can be taken (560 when they are not free)."""
        with self._changing_lvm():
            self.lvm.extend_lv(volume.id, size, contiguous=self._contiguous)
        self.refresh_volume(volume)

    def _changing_lvm(self) -> contextlib.AbstractContextManager:
        """Where many hosts use the VG, LVM's metadata is changed under the commit lock (the metadata-writer
        lease): two hosts writing it at once would damage it."""
        return self.lock if self.lock.writer is not None else contextlib.nullcontext()

    def refresh_volume(self, volume: Volume) -> None:
        """Where the volume is active here, make its link lead to a device of the LV's size now."""
        self.lvm.invalidate()
        with self._active_lock:
            if self._active.get(volume.id):
                self._link(volume, self._activate(volume.id))

    @property
    def _contiguous(self) -> bool:
        return self.activation.way == "loop"  # a loop device maps one linear segment

    @contextlib.contextmanager
    def activated(self, volumes: list[Volume]) -> Iterator[None]:
        taken: list[Volume] = []
        try:
            for volume in volumes:
                self.hold(volume)
                taken.append(volume)
            yield
        finally:
            for volume in reversed(taken):
                self.release(volume)

    def hold(self, volume: Volume) -> str:
        """Activate the volume's LV for one more user here, and link it; its link path."""
        with self._active_lock:
            self._active[volume.id] += 1
            try:
                device = self._activate(volume.id)
            except BaseException:
                self._drop_user(volume.id)
                raise
            return self._link(volume, device)

    def _link(self, volume: Volume, device: str) -> str:
        """Point the volume's link at `device` (replaced in one rename when it pointed elsewhere)."""
        link = self.volume_path(volume)
        if os.path.islink(link) and os.readlink(link) == device:
            return link
        tmp = f"{link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(device, tmp)
        os.replace(tmp, link)
        return link

    def release(self, volume: Volume) -> None:
        """One user less; the last one deactivates the LV and removes its link."""
        with self._active_lock:
            if self._drop_user(volume.id):
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.volume_path(volume))
            try:
                self.activation.deactivate(self.vg_name, volume.id)
            except HsmError as e:
                log.warning("Could not deactivate %s/%s: %s", self.vg_name, volume.id, e)

    def _drop_user(self, lv: str) -> int:
        self._active[lv] -= 1
        left = self._active[lv]
        if left <= 0:
            del self._active[lv]
        return max(left, 0)

    def _activate(self, lv: str) -> str:
        return self.activation.activate(self.vg_name, lv)

    def volume_path(self, volume: Volume) -> str:
        return os.path.join(self.path, volume.filename)

    def volume_exists(self, volume: Volume) -> bool:
        return volume.id in self.lvm.volumes()

    def allocated(self, volume: Volume) -> int:
        found = self.lvm.volumes().get(volume.id)
        return found.size if found is not None else 0

    def listing(self) -> set[str]:
        """The LVs named by a volume id, as the file names of the volumes they hold (one no record names: its
        bare name)."""
        known: dict[str, str] = {}
        for image in list(self.images.values()):
            for vol in image.volumes:
                known[vol.id] = vol.filename
            if isinstance(image.intent, SnapshotIntent):
                known.setdefault(image.intent.top, f"{image.intent.top}.qcow2")
        # Only LVs named as hsm names volumes: others (an admin's, VDSM's ids or leases) are never hsm's to remove.
        return {f"{VOLUMES}/{known.get(name, name)}" for name in self.lvm.refresh() if is_uuid(name)}

    def unowned(self, names: set[str]) -> set[str]:
        """As for files; while a slot is damaged every LV counts as owned (it may hold any record)."""
        return set() if self._damaged else super().unowned(names)

    def damaged_places(self) -> dict[str, str]:
        """The slots whose two copies are both damaged: no image id can be read from them."""
        return {f"slot {number} of {self.vg_name}/{METADATA_LV}": why for number, why in sorted(self._damaged.items())}

    def remove_file(self, relative: str) -> None:
        """Remove the LV of `volumes/<file name>` (deactivated first); one already gone is no error."""
        folder, _, name = relative.partition("/")
        lv = name.rsplit(".", 1)[0] if name.endswith((".qcow2", ".raw")) else name
        if folder != VOLUMES or not is_uuid(lv):  # never the metadata LV, nor an LV hsm did not name
            raise InvalidParameterException(f"{relative}: not a volume of a block repository")
        with self._active_lock:
            if self._active.get(lv):
                raise OSError(16, f"{self.vg_name}/{lv} is in use on this host")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))
        with self._changing_lvm():
            if lv not in self.lvm.refresh():
                return
            self.activation.deactivate(self.vg_name, lv)
            self.lvm.remove_lvs(lv)

    # -- the monitor ----------------------------------------------------------

    def check_health(self) -> Health:
        self.follow_others()
        started = time.monotonic()
        try:
            assert self.slots is not None
            if self.slots.repository() is None:
                raise StorageDomainAccessError(f"{self.vg_name}: the repository record is gone")
            delay = time.monotonic() - started
            vg = self.lvm.vg()
            self.health = Health(True, time.time(), delay, vg.free, vg.size)
        except (OSError, HsmError, AssertionError) as e:
            self.health = Health(False, time.time(), time.monotonic() - started, self.health.free,
                                 self.health.total, str(e))
            log.warning("Repository %s is not valid: %s", self.id, e)
        return self.health

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.remove_callback(self._device_event)
        super().close()

    def deactivate_all(self) -> None:
        """Deactivate every LV this repository activated (at disconnect, once nothing here uses them)."""
        with self._active_lock:
            held, self._active = list(self._active), collections.Counter()
            metadata, self._metadata_active = self._metadata_active, False
        areas = [METADATA_LV, *([IDS_LV, LEASES_LV] if self.lease_paths is not None else [])] if metadata else []
        for lv in [*held, *areas]:
            try:
                self.activation.deactivate(self.vg_name, lv)
            except HsmError as e:
                log.warning("Could not deactivate %s/%s: %s", self.vg_name, lv, e)
        if os.path.isdir(self.path):
            for name in os.listdir(self.path):
                os.unlink(os.path.join(self.path, name))

    def wire(self) -> dict:
        answer = super().wire()
        answer.update(path=self.vg_name, vgName=self.vg_name)
        return answer


def create(lvm: LVM, activation: LVActivation, io: IOProcess, repo_uuid: str, labels: dict,
           existing: tuple[str, ...] = (), io_timeout: int = 10) -> str:
    """Make a new repository of the VG on lvm's devices, with its lockspace (sanlock's `io_timeout`); nothing
    is left half-made when it fails (ClusterLockInitError when sanlock cannot initialize the lockspace).

    A new VG: a device in any VG is refused (601). `existing`: the VG is there already (VDSM's createVG
    made it) with these tags to take off; hsm's tags go on last, so a failure leaves it as it was.
    """
    labels = {name: value for name, value in labels.items() if name in LABELS}
    tags = [FORMAT_TAG, UUID_TAG + repo_uuid, *([STORAGE_DOMAIN_TAG] if existing else [])]
    if not existing:
        lvm.create_vg(tags=tags)
    try:
        lvm.create_lv(METADATA_LV, METADATA_SIZE, contiguous=True)
        device = activation.activate(lvm.vg_name, METADATA_LV)
        try:
            io.zero_range(device, 0, lvm.volume(METADATA_LV).size)
            slots = SlotStore(io, device, repo_uuid, lvm.volume(METADATA_LV).size)
            record = {"format": FORMAT, "uuid": repo_uuid, "version": VERSION, "created": time.time(), **labels}
            slots.write_repository(json.dumps(record).encode())
        finally:
            activation.deactivate(lvm.vg_name, METADATA_LV)
        _make_lockspace(lvm, activation, io, repo_uuid, io_timeout)
        if existing:
            lvm.change_vg_tags(add=tags, remove=existing)
    except BaseException:
        try:
            if existing:
                made = [lv for lv in (METADATA_LV, IDS_LV, LEASES_LV) if lv in lvm.refresh()]
                if made:
                    lvm.remove_lvs(*made)
            else:
                lvm.remove_vg()
        except HsmError as e:
            log.warning("Could not undo the failed create on VG %s: %s", lvm.vg_name, e)
        raise
    log.info("Created %s repository %s on VG %s (%s)", FORMAT, repo_uuid, lvm.vg_name, ", ".join(lvm.devices))
    return repo_uuid


def _make_lockspace(lvm: LVM, activation: LVActivation, io: IOProcess, repo_uuid: str, io_timeout: int) -> None:
    """The ids and leases LVs of a new repository: an empty lockspace, a free metadata-writer lease, and no
    generation record yet (zeros)."""
    lvm.create_lv(IDS_LV, IDS_SIZE, contiguous=True)
    lvm.create_lv(LEASES_LV, LEASES_LV_SIZE, contiguous=True)
    try:
        paths = Paths(activation.activate(lvm.vg_name, IDS_LV), activation.activate(lvm.vg_name, LEASES_LV))
        io.zero_range(paths.ids, 0, IDS_SIZE)
        io.zero_range(paths.leases, 0, LEASES_LV_SIZE)
        try:
            Lockspace(repo_uuid, paths, 0).initialize(io_timeout)
        except Exception as e:  # sanlock.SanlockException: no daemon, or it cannot reach the LVs
            raise ClusterLockInitError(f"{lvm.vg_name}: {e}") from None
    finally:
        for lv in (IDS_LV, LEASES_LV):
            try:
                activation.deactivate(lvm.vg_name, lv)
            except HsmError as e:
                log.warning("Could not deactivate %s/%s: %s", lvm.vg_name, lv, e)
