"""The image engine: connected repositories, lookups, and the commit half of each operation.

Each operation validates, writes its intent durably into the repository (the
image record), and returns; the data work is a fix (hsm.storage.fixes) run as
a task. Nothing here knows the transport it is called over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from hsm.errors import (
    ClusterLockInitError,
    HsmError,
    ImageDoesNotExistInSD,
    ImageExists,
    ImageIsNotLegalChain,
    ImageIsSnapshot,
    InvalidParameterException,
    InvalidPhysDev,
    MiscFileWriteException,
    PhysDevInitializationError,
    PrepareIllegalVolumeError,
    RepositoryIdInUse,
    ResourceTimeout,
    StorageDomainAccessError,
    StorageDomainAlreadyExists,
    StorageDomainDoesNotExist,
    StorageDomainFSNotMounted,
    StorageDomainTypeError,
    VolumeAlreadyExists,
    VolumeDoesNotExist,
    VolumeGroupAlreadyExistsError,
    VolumeGroupDoesNotExist,
    VolumeIsBusy,
    VolumeWasNotPreparedBeforeTeardown,
)
from hsm.leases.lockspace import IDS_SIZE, LEASES_SIZE, Lockspace, host_dead_seconds, lease_paths
from hsm.leases.writer import Writer
from hsm.storage import block, check, offload
from hsm.storage import repository as repositories
from hsm.storage.activation import LVActivation
from hsm.storage.fixes import Fixes
from hsm.storage.image import DISK, SNAPSHOT, Image, Volume
from hsm.storage.intents import CopyIntent, CreateIntent, SnapshotIntent
from hsm.storage.ioprocess import IOProcess
from hsm.storage.lvm import LVM, check_device
from hsm.storage.options import ImageOptions, check_id, parse_image_size
from hsm.storage.prepared import PreparedImages
from hsm.storage.repository import IMAGES, VOLUMES, FileRepository, Health
from hsm.storage.udev_monitor import BlockDeviceMonitor
from hsm.storage.watching import RepositoryWatch
from hsm.tasks import TaskManager
from hsm.watch import Watcher
from supervdsm.client import SupervdsmClient
from supervdsm.lvm import check_name

if TYPE_CHECKING:
    from hsm.arrays import Arrays
    from hsm.connections.manager import ConnectionManager

log = logging.getLogger("hsm.storage")

T = TypeVar("T")
SHARED_FILE_FORMATS = ("nfs-1", "posixfs-1")  # file repositories many hosts use: each has a sanlock lockspace


def _serialized(method: Callable[..., T]) -> Callable[..., T]:
    """Run a commit under the lock of the repository it names first; other repositories go on."""
    @functools.wraps(method)
    def locked(self: Engine, repo_id: str, *args: object, **kwargs: object) -> T:
        with self.repository(repo_id).lock:
            return method(self, repo_id, *args, **kwargs)
    return locked


class Engine:
    def __init__(self, tasks: TaskManager, host_id: int = 1, io_timeout: float = 60.0, io_slots: int = 10,
                 monitor_interval: float = 10.0, qcow2_compat: str = "1.1", state_dir: str | None = None,
                 prepare_timeout: float = 600.0, progress_interval: float = 30.0,
                 watcher: Watcher | None = None, connections: ConnectionManager | None = None,
                 supervdsm: SupervdsmClient | None = None, lv_activation: str = "lvm",
                 lease_io_timeout: int = 10, use_volume_leases: bool = False, offload_enabled: bool = True,
                 arrays: Arrays | None = None) -> None:
        self.tasks = tasks
        self.watcher = watcher  # inotify, for changes made behind hsmd's back (hsm.storage.watching)
        self.prepare_timeout = prepare_timeout  # seconds prepare waits for the repository's commit lock
        self.progress_interval = progress_interval  # seconds between progress lines of a long fix in the log
        self.host_id = host_id
        self.io_timeout = io_timeout
        self.io_slots = io_slots
        self.monitor_interval = monitor_interval
        self.qcow2_compat = qcow2_compat
        self.repositories: dict[str, FileRepository] = {}
        self.connections = connections  # where nfs-1 and posixfs-1 repositories are mounted
        self.supervdsm = supervdsm  # LVM and activation of block-1 repositories
        self.lv_activation = lv_activation
        self.lease_io_timeout = lease_io_timeout  # sanlock's io timeout for the lockspaces of new repositories
        self.use_volume_leases = use_volume_leases  # prepareImage takes the image's volume lease
        self.offload_enabled = offload_enabled  # [offload] enabled: copies may use an array or the file system
        self.arrays = arrays  # [offload] arrays: file repositories on one of them clone by the array
        if arrays is not None:
            arrays.on_read(self._array_read)
        # seconds a commit on a shared repository waits for the metadata-writer lease: as long as sanlock may
        # take to call its holder dead, and a margin
        self.writer_timeout = host_dead_seconds(lease_io_timeout) + 20.0
        self._links_root = os.path.join(state_dir or tempfile.gettempdir(), "block")  # volume links of block-1
        self._snapshots = os.path.join(state_dir, "index") if state_dir else ""  # of localfs-1 indexes
        self._udev: BlockDeviceMonitor | None = None
        self._udev_failed = False  # uevents cannot be read here
        self.reconnect: Callable[[str], FileRepository] | None = None  # by_uuid's way to a known repository
        self.prepared = PreparedImages(os.path.join(state_dir, "prepared.json") if state_dir else None)
        self._lock = threading.Lock()  # the table of connected repositories
        self._watches: dict[str, RepositoryWatch | None] = {}
        self.fixes = Fixes(self)
        self.fixes.register(tasks)

    # -- repositories -----------------------------------------------------

    def _io(self, name: str) -> IOProcess:
        return IOProcess(name, timeout=self.io_timeout, slots=self.io_slots)

    def create_repository(self, repo_format: str, params: dict, force: bool = False, repo_uuid: str | None = None,
                          labels: dict | None = None, array: object = None) -> str:
        """Format storage as a repository; `repo_uuid` and `labels` as repository.create takes them; `array`
        (createStorageRepository's options.array): the array file system the repository's folder lives on."""
        if repo_format == block.FORMAT:
            if array is not None:
                raise InvalidParameterException("options.array: only file repositories live on an array's "
                                                "file system")
            return self._create_block(params, repo_uuid, labels or {})
        on_array = self._array_fields(array) if array is not None else None
        path = self._local_path(repo_format, params)
        io = self._io("create")
        try:
            if params.get("subdir"):  # a folder of the connection's storage, made on first use
                try:
                    io.makedirs(path)
                except OSError as e:
                    raise repositories.creation_error(path, e) from None
            made = repositories.create(path, repo_format, io, force, repo_uuid, labels, on_array)
            if repo_format in SHARED_FILE_FORMATS:
                self._make_lockspace(io, path, made)
            if force:
                self._forget_snapshot(made)  # the records it held are gone
            return made
        finally:
            io.close()

    def _forget_snapshot(self, repo_uuid: str) -> None:
        """Remove the index snapshot kept for a repository whose records are all gone (removed, formatted)."""
        if self._snapshots:
            shutil.rmtree(os.path.join(self._snapshots, check_id("repository uuid", repo_uuid)), ignore_errors=True)

    def _array_fields(self, array: object) -> dict:
        """The record's fields of a repository on `array` ({arrayId, fsId, path}): the array is asked that
        the file system exists (5016-5018, 5025 before anything is written) and for its capabilities."""
        place = offload.ArrayPlace.parse(array)
        if self.arrays is None:
            raise InvalidParameterException("options.array: no arrays here")
        self.arrays.filesystem(place.array_id, place.fs_id)
        known = self.arrays.capabilities(place.array_id)
        return repositories.array_fields(place, known["capabilities"], known["readAt"])

    def _array_read(self, array_id: str, capabilities: dict[str, bool], read_at: float) -> None:
        """The array's capabilities were read: stored in the records of connected repositories on it that
        hold others (each in a thread of its own: a record write may wait for a slow repository)."""
        for repo in list(self.repositories.values()):
            if repo.array is not None and repo.array.array_id == array_id:
                threading.Thread(target=self._store_capabilities, args=(repo, capabilities, f"{read_at:.3f}"),
                                 name=f"array-{repo.id}", daemon=True).start()

    @staticmethod
    def _store_capabilities(repo: FileRepository, capabilities: dict[str, bool], read_at: str) -> None:
        try:
            repo.store_array_capabilities(capabilities, read_at)
        except HsmError as e:
            log.warning("Repository %s: the array's capabilities not stored: %s", repo.id, e)

    # -- block-1 -------------------------------------------------------------

    def _devices(self) -> list[dict]:
        """supervdsmd's listing of this host's block devices."""
        if self.supervdsm is None:
            raise InvalidParameterException("block-1 repositories need supervdsmd")
        return [disk for disk in self.supervdsm.call("listBlockDevices") if disk.get("devnode")]

    def _lvm_of(self, params: dict, creating: bool = False, listing: list[dict] | None = None) -> LVM:
        """An LVM over the VG `params` names: its PVs as this host sees them (supervdsmd's device listing,
        `listing` when the caller has it), or, making one, the `devices` given (each seen here, in no VG)."""
        listing = self._devices() if listing is None else listing
        assert self.supervdsm is not None  # _devices refused otherwise
        if not isinstance(params, dict):
            raise InvalidParameterException("connectionParameters: expected a struct")
        vg_name = check_name("vgName", params.get("vgName"))
        members = [disk["devnode"] for disk in listing if disk.get("vgName") == vg_name]
        if not creating:
            if not members:
                raise StorageDomainDoesNotExist(f"no physical volume of volume group {vg_name} on this host")
            return LVM(self.supervdsm, vg_name, members)
        devices = params.get("devices")
        if not isinstance(devices, list) or not devices or len(set(map(str, devices))) < len(devices):
            raise InvalidParameterException("connectionParameters: block-1 needs {vgName, devices: [device paths]}, "
                                            "each named once")
        devices = [check_device(device) for device in devices]
        self._check_free_devices(listing, devices)
        return LVM(self.supervdsm, vg_name, devices)

    @staticmethod
    def _check_free_devices(listing: list[dict], devices: list[str]) -> None:
        """Devices this host sees and nothing uses: 466 for one not seen, 601 for one in a VG or in use."""
        known = {disk["devnode"]: disk for disk in listing}
        missing = [device for device in devices if device not in known]
        if missing:
            raise InvalidPhysDev(f"no such device on this host: {', '.join(missing)}")
        taken = [why for why in (block.refusal(known[device]) for device in devices) if why]
        if taken:
            raise PhysDevInitializationError("; ".join(taken))

    def vg_name_of(self, vg_uuid: str) -> str:
        """The name of the VG with this LVM UUID on this host's devices; 506 when there is none."""
        assert self.supervdsm is not None
        names = {disk.get("vgName") for disk in self.supervdsm.call("listBlockDevices")
                 if disk.get("vgUUID") == vg_uuid and disk.get("vgName")}
        if len(names) != 1:
            raise VolumeGroupDoesNotExist(f"vg_uuid: {vg_uuid}")
        return names.pop()

    def _create_block(self, params: dict, repo_uuid: str | None, labels: dict) -> str:
        if params.get("vgUUID") is not None:
            return self._format_vg(params, repo_uuid, labels)
        listing = self._devices()  # one listing for every check below
        lvm = self._lvm_of(params, listing=listing) if repo_uuid and self._vg_seen(params, listing) else None
        if lvm is not None:  # the same repository made again (createStorageDomain called twice) answers its uuid
            known = block.repository_uuid(lvm.vg().tags)
            if known == repo_uuid:
                return known
            held = f"repository {known}" if known else "no repository"
            raise VolumeGroupAlreadyExistsError(f"{lvm.vg_name} is on this host already and holds {held}")
        lvm = self._lvm_of(params, creating=True, listing=listing)
        if self._vg_seen(params, listing):
            raise VolumeGroupAlreadyExistsError(f"a volume group {lvm.vg_name} is on this host already")
        assert self.supervdsm is not None  # _lvm_of refused otherwise
        io = self._io("create")
        try:
            return block.create(lvm, LVActivation(self.supervdsm, self.lv_activation), io,
                                repo_uuid or str(uuid.uuid4()), labels, io_timeout=self.lease_io_timeout)
        finally:
            io.close()

    def _format_vg(self, params: dict, repo_uuid: str | None, labels: dict) -> str:
        """A repository on a VG that VDSM's createVG made ({vgName, vgUUID}): the same one made again answers
        its uuid; a VG that holds another repository, or that createVG did not make, is refused."""
        lvm = self._lvm_of(params)
        vg = lvm.vg()
        if vg.uuid != params["vgUUID"]:
            raise VolumeGroupDoesNotExist(f"vg_uuid: {params['vgUUID']} (volume group {vg.name} is {vg.uuid})")
        known = block.repository_uuid(vg.tags)
        if known:
            if known == repo_uuid:
                return known
            raise StorageDomainAlreadyExists(f"volume group {vg.name} holds repository {known}")
        if block.STORAGE_UNREADY_DOMAIN_TAG not in vg.tags or vg.lv_count:
            raise StorageDomainTypeError(f"volume group {vg.name} was not made by createVG for a new domain "
                                         f"(no {block.STORAGE_UNREADY_DOMAIN_TAG} tag, or it holds LVs)")
        assert self.supervdsm is not None  # _lvm_of refused otherwise
        io = self._io("create")
        try:
            return block.create(lvm, LVActivation(self.supervdsm, self.lv_activation), io,
                                repo_uuid or str(uuid.uuid4()), labels, existing=(block.STORAGE_UNREADY_DOMAIN_TAG,),
                                io_timeout=self.lease_io_timeout)
        finally:
            io.close()

    @staticmethod
    def _vg_seen(params: dict, listing: list[dict]) -> bool:
        vg_name = check_name("vgName", params.get("vgName"))
        return any(disk.get("vgName") == vg_name for disk in listing)

    def extend_repository(self, repo_id: str, devices: object) -> dict:
        """Add devices (each seen here, in no VG) to a block-1 repository's VG: {freeBytes, totalBytes}."""
        repo = self.repository(repo_id)
        if not isinstance(repo, block.BlockRepository):
            raise StorageDomainTypeError(f"{repo_id} is a {repo.format} repository: only block-1 is extended")
        if not isinstance(devices, list) or not devices or len(set(map(str, devices))) < len(devices):
            raise InvalidParameterException("devices: a list of device paths, each named once")
        assert self.supervdsm is not None
        devices = [check_device(device) for device in devices]
        with repo.lock:
            self._check_free_devices(self.supervdsm.call("listBlockDevices"), devices)
            vg = repo.lvm.extend_vg(devices)
        repo.check_health()
        log.info("Extended repository %s (VG %s) with %s", repo_id, repo.vg_name, ", ".join(devices))
        return {"freeBytes": str(vg.free), "totalBytes": str(vg.size)}

    def _connect_block(self, repo_id: str, params: dict) -> FileRepository:
        lvm = self._lvm_of(params)
        assert self.supervdsm is not None
        repo = block.BlockRepository(repo_id, lvm, LVActivation(self.supervdsm, self.lv_activation),
                                     self._io(repo_id), os.path.join(self._links_root, repo_id))
        repo.watch_devices(self._device_events())
        return repo

    def _device_events(self) -> BlockDeviceMonitor | None:
        """The one monitor of block device uevents, started for the first block repository (connect holds
        the table's lock); None where uevents cannot be read: then LVM's cache is refreshed after hsm's own
        changes only."""
        if self._udev is None and not self._udev_failed:
            try:
                self._udev = BlockDeviceMonitor().start()
            except Exception as e:  # pyudev missing, or no netlink here
                log.warning("Block device events cannot be watched (%s): LVM's view is refreshed after hsm's "
                            "own changes only", e)
                self._udev_failed = True
        return self._udev

    def _make_lockspace(self, io: IOProcess, path: str, repo_uuid: str) -> None:
        """The sanlock areas of a new shared repository; a failure leaves no repository (its record goes)."""
        folder = os.path.join(path, repositories.LEASES_FOLDER)
        try:
            io.makedirs(folder)
            io.write(os.path.join(folder, "ids"), bytes(IDS_SIZE))
            io.write(os.path.join(folder, "leases"), bytes(LEASES_SIZE))
            Lockspace(repo_uuid, lease_paths(path), self.host_id).initialize(self.lease_io_timeout)
        except Exception as e:
            with contextlib.suppress(OSError):
                io.remove(os.path.join(path, repositories.RECORD))
            raise ClusterLockInitError(f"{path}: {e}") from None
        log.info("Initialized the lockspace of repository %s (io timeout %d s)", repo_uuid, self.lease_io_timeout)

    def remove_repository(self, repo_id: str) -> None:
        """Disconnect a repository and delete it with everything in it (VDSM's formatStorageDomain).

        The record goes last, so a removal cut short leaves a repository that can be removed again.
        """
        repo = self.repository(repo_id)
        self.disconnect(repo_id)
        if isinstance(repo, block.BlockRepository):
            repo.lvm.remove_vg()
            log.info("Removed repository %s (%s) and its VG %s", repo_id, repo.uuid, repo.vg_name)
            return
        io = self._io("remove")
        try:
            for folder in (VOLUMES, IMAGES, *repositories.EXTRA_FOLDERS):
                if io.is_folder(os.path.join(repo.path, folder)):
                    io.empty_folder(os.path.join(repo.path, folder))
                    io.rmdir(os.path.join(repo.path, folder))
            io.remove(os.path.join(repo.path, repositories.RESERVE))
            io.remove(os.path.join(repo.path, repositories.RECORD))
            io.rmdir(repo.path)
        except OSError as e:
            raise StorageDomainAccessError(f"{repo.path}: {e}") from None
        finally:
            io.close()
        self._forget_snapshot(repo.uuid)
        log.info("Removed repository %s (%s) at %s", repo_id, repo.uuid, repo.path)

    def connect(self, repo_id: str, repo_format: str, params: dict) -> FileRepository:
        check_id("repoId", repo_id)
        is_block = repo_format == block.FORMAT
        path = check_name("vgName", params.get("vgName")) if is_block else self._local_path(repo_format, params)
        with self._lock:
            known = self.repositories.get(repo_id)
            if known is not None:
                where = known.vg_name if isinstance(known, block.BlockRepository) else known.path
                if where == path and known.format == repo_format:
                    return known
                raise RepositoryIdInUse(f"{repo_id} is {known.format} at {where}")
            if is_block:
                repo = self._connect_block(repo_id, params)
            else:
                repo = FileRepository(repo_id, path, repo_format, self._io(repo_id))
                repo.connection_id = params.get("connectionId", "") if repo_format != "localfs-1" else ""
                if repo_format == "localfs-1":  # others' records change while this host is away
                    repo.snapshot_root = self._snapshots
                if repo_format in SHARED_FILE_FORMATS:
                    repo.lease_paths = lease_paths(path)
            try:
                repo.open()
                if repo.lease_paths is not None:
                    self._share(repo)
                repo.load()
                repo.offloading = self.offload_enabled
                if self.offload_enabled and not is_block:
                    repo.find_offload()
                if repo.lock.writer is not None:
                    self._join(repo)
            except BaseException:
                self._close(repo)
                raise
            twin = next((r for r in self.repositories.values() if r.uuid == repo.uuid), None)
            if twin is not None:
                self._close(repo)
                raise RepositoryIdInUse(f"repository {repo.uuid} is already connected as {twin.id}")
            self.repositories[repo_id] = repo
        if isinstance(repo, block.BlockRepository):  # what VMs here use stays usable across a restart (their
            for image_id in self.prepared.of_repository(repo.uuid):  # volume leases: once joined, _on_check)
                image = repo.images.get(image_id)
                if image is not None:
                    self._activate_chain(repo, image)
        repo.keep_reserve()
        repo.start_monitor(self.monitor_interval)
        repo.start_index_work()
        self._watches[repo_id] = RepositoryWatch.start(repo, self.watcher, self.fixes)
        log.info("Connected repository %s (%s, %s)", repo_id, repo_format, path)
        return repo

    def disconnect(self, repo_id: str, force: bool = False) -> None:
        repo = self.repository(repo_id)
        busy = self.fixes.active_on_repository(repo)
        if busy and not force:
            raise VolumeIsBusy(f"{len(busy)} tasks work on {repo_id}: {', '.join(busy[:5])}; options.force disconnects")
        prepared = self.prepared.of_repository(repo.uuid)
        if prepared and not force:
            raise VolumeIsBusy(f"{len(prepared)} images of {repo_id} are prepared on this host "
                               f"({', '.join(prepared[:5])}); tear them down, or options.force disconnects")
        with self._lock:
            self.repositories.pop(repo_id, None)
        watch = self._watches.pop(repo_id, None)
        if watch is not None:
            watch.stop()
        self._close(repo)
        log.info("Disconnected repository %s", repo_id)

    def _share(self, repo: FileRepository) -> None:
        """Record changes of a repository many hosts use go under its metadata-writer lease (hsm.leases.writer);
        the generation its records are at is read before they are."""
        writer = Writer(repo.io, repo.generation_place(), repo.refresh_many, repo.rescan,
                        acquire_timeout=self.writer_timeout)
        writer.learn()
        repo.share(writer)

    def _join(self, repo: FileRepository) -> None:
        """Join the repository's lockspace without waiting (sanlock takes seconds); the monitor tells how it went.
        Commits wait for the join (AcquireHostIdFailure past the writer's timeout)."""
        assert repo.lock.writer is not None and repo.lease_paths is not None
        repo.lockspace = Lockspace(repo.uuid, repo.lease_paths, self.host_id)
        repo.lock.writer.lockspace = repo.lockspace
        repo.on_check = functools.partial(self._on_check, repo)
        repo.volume_leases = repo.make_volume_leases(repo.lockspace)
        try:
            repo.lockspace.join(self.lease_io_timeout)
        except Exception as e:
            log.warning("Repository %s cannot join its lockspace: %s", repo.id, e)

    def _on_check(self, repo: FileRepository) -> None:
        """The monitor of a shared repository: take over what dead hosts left, and hold again the volume
        leases of images prepared here (after a restart, or a lockspace lost and joined again)."""
        self.fixes.take_over(repo)
        leases = repo.volume_leases
        if leases is None or not self.use_volume_leases or not leases.lockspace.state()["joined"]:
            return
        for image_id in self.prepared.of_repository(repo.uuid):
            if image_id not in leases.held and image_id in repo.images:
                try:
                    leases.acquire(image_id)
                    log.info("Holding the volume lease of %s again", image_id)
                except HsmError as e:
                    log.error("Image %s is prepared here, but its volume lease cannot be held: %s", image_id, e)

    @staticmethod
    def _close(repo: FileRepository) -> None:
        if repo.lockspace is not None:
            try:  # a block repository's ids LV is deactivated next: sanlock must be done with it
                repo.lockspace.leave(wait=isinstance(repo, block.BlockRepository))
            except Exception as e:
                log.warning("Repository %s cannot leave its lockspace: %s", repo.id, e)
        if isinstance(repo, block.BlockRepository):
            repo.deactivate_all()
        repo.close()

    def users_of(self, connection_ids: set[str]) -> list[str]:
        """Connected repositories that sit on any of these managed connections."""
        return sorted(repo.id for repo in list(self.repositories.values()) if repo.connection_id in connection_ids)

    def close(self) -> None:
        for repo in list(self.repositories.values()):
            repo.close()
        if self._udev is not None:
            self._udev.stop()

    def _local_path(self, repo_format: str, params: dict) -> str:
        """Where a file repository's files are on this host, from its connectionParameters."""
        if repo_format not in repositories.FILE_FORMATS:
            raise InvalidParameterException(f"repoFormat={repo_format!r}: expected one of "
                                            f"{', '.join(repositories.FILE_FORMATS)}")
        if not isinstance(params, dict):
            raise InvalidParameterException("connectionParameters: expected a struct")
        if repo_format == "localfs-1":
            if not isinstance(params.get("path"), str) or not os.path.isabs(params["path"]):
                raise InvalidParameterException("connectionParameters: localfs-1 needs {path: an absolute path}")
            root = params["path"]
        else:
            if self.connections is None or not isinstance(params.get("connectionId"), str):
                raise InvalidParameterException(f"connectionParameters: {repo_format} needs {{connectionId, subdir}}, "
                                                "a connection managed with manageStorageServer")
            root, connected = self.connections.path_of(params["connectionId"])
            if not connected or not root:
                raise StorageDomainFSNotMounted(f"connection {params['connectionId']} is not connected (yet)")
        subdir = params.get("subdir", "")
        if not isinstance(subdir, str) or subdir.startswith("/") or ".." in subdir.split("/"):
            raise InvalidParameterException(f"subdir={subdir!r}: a relative path without '..'")
        return os.path.normpath(os.path.join(root, subdir))

    def recover_intents(self, repo: FileRepository) -> int:
        """The fixes of pending intents after a start or a connect, as the task mode says."""
        return self.fixes.recover_intents(repo)

    def check(self, repo_id: str) -> list[dict]:
        return check.check(self.repository(repo_id), self.fixes)

    def fix(self, repo_id: str, fix: object, opts: ImageOptions) -> str:
        """Start a fix check gave (fixStorageRepository); its task id."""
        repo = self.repository(repo_id)
        opts.autoFix = True
        self.fixes.check_can_start(opts)
        return check.run(repo, self.fixes, fix, opts.taskId)

    def offload_backends(self) -> list[str]:
        """The offload mechanisms some connected repository's storage does (getCapabilities), fastest first."""
        found = {name for repo in list(self.repositories.values()) for name in repo.offload_mechanisms()}
        return [name for name in (offload.ARRAY, offload.REFLINK, offload.COPY_FILE_RANGE) if name in found]

    def health(self) -> dict[str, Health]:
        """What each connected repository's monitor saw last: the one source for getStats and /metrics."""
        return {repo.id: repo.health for repo in list(self.repositories.values())}

    def repository(self, repo_id: str) -> FileRepository:
        check_id("repoId", repo_id)
        repo = self.repositories.get(repo_id)
        if repo is None:
            raise StorageDomainDoesNotExist(f"no repository connected as {repo_id}")
        return repo

    def by_uuid(self, repo_uuid: str, reconnect: bool = True) -> FileRepository:
        """The connected repository with that uuid; else, with `reconnect`, the one `self.reconnect` connects
        again (VDSM's storage domains, known across restarts: a task resumed after a restart needs it)."""
        for repo in list(self.repositories.values()):
            if repo.uuid == repo_uuid:
                return repo
        if reconnect and self.reconnect is not None:
            return self.reconnect(repo_uuid)
        raise StorageDomainDoesNotExist(f"repository {repo_uuid} is not connected")

    # -- lookups ----------------------------------------------------------

    def locate(self, image_id: str, opts: ImageOptions) -> tuple[FileRepository, Image]:
        """Find a live image: pinned by imageHints, else in the participating (or every) repository."""
        check_id("imageId", image_id)
        if image_id in opts.imageHints:
            repo = self.repository(opts.imageHints[image_id])
            return repo, repo.get(image_id)
        names = opts.participatingRepositories or list(self.repositories)
        for name in names:
            repo = self.repository(name)
            image = repo.images.get(image_id)
            if image is not None and not image.removed:
                return repo, image
        raise ImageDoesNotExistInSD(f"{image_id} in {', '.join(names) or 'no connected repository'}")

    def find(self, repo_id: str, image_id: str) -> tuple[FileRepository, Image]:
        repo = self.repository(repo_id)
        return repo, repo.get(check_id("imageId", image_id))

    def image_tasks(self, repo: FileRepository, image: Image) -> list[str]:
        return self.fixes.active_on_image(repo, image.id)

    def is_snapshot_of(self, disk_id: str, snapshot_id: str) -> bool:
        check_id("baseSnapshotId", snapshot_id)
        repo, image = self.locate(disk_id, ImageOptions())
        seen = set()
        base = image.base
        while base and base not in seen:
            if base == snapshot_id:
                return True
            seen.add(base)
            parent = repo.images.get(base)
            base = parent.base if parent is not None else ""
        return False

    # -- commits ----------------------------------------------------------

    def _new_id(self, opts: ImageOptions) -> str:
        return opts.imageId or str(uuid.uuid4())

    @staticmethod
    def _check_alone(top: Volume | None, base_id: str | None) -> None:
        """Only a qcow2 volume can read through a base; a raw one stands alone."""
        if top is not None and top.format != "qcow2" and base_id:
            raise InvalidParameterException(f"a {top.format} volume cannot read through snapshot {base_id}")

    @staticmethod
    def _volume_free(repo: FileRepository, volume_id: str) -> None:
        """A volume id the caller chose names no volume of the repository yet."""
        if repo.volume_owner(volume_id) is not None:
            raise VolumeAlreadyExists(f"{volume_id} in repository {repo.id}")

    @staticmethod
    def _ensure_free(repo: FileRepository, image_id: str) -> None:
        """Ids are unique within a repository; copies of a snapshot share its id across repositories."""
        repo.verify(image_id)
        if image_id in repo.images:
            raise ImageExists(f"{image_id} in repository {repo.id}")

    def _commit(self, repo: FileRepository, image: Image, fix: str, verb: str, opts: ImageOptions) -> str:
        """Write the new record (the commit point), then start its fix unless autoFix is off.

        Called under the repository's commit lock, with the checks that led here: a concurrent
        commit cannot slip in between a check and the record it allows, nor
        between the record and the start of its fix (which marks the images busy).
        """
        self._ensure_free(repo, image.id)
        with self.fixes.task_for(opts) as task_id:
            image.hostId, image.task, image.verb = self.host_id, task_id, verb
            repo.save(image)
            log.info("%s committed %s %s in %s", verb, image.kind, image.id, repo.id)
            if task_id:
                self.fixes.start_after_commit(repo, fix, image.id, verb, task_id)
        return image.id

    @_serialized
    def create_disk(self, repo_id: str, size: object, base_id: str | None, user_data: dict,
                    opts: ImageOptions, top: Volume | None = None, preallocate: bool = False) -> str:
        """A new disk (on snapshot `base_id`, if given). `top` names its volume and format (VDSM's
        callers choose both; a raw volume stands alone), `preallocate` allocates all of it now."""
        repo = self.repository(repo_id)
        size = parse_image_size(size)
        volumes: list[Volume] = []
        self._check_alone(top, base_id)
        if base_id:
            base = repo.get(check_id("baseSnapshotId", base_id))
            if base.kind != SNAPSHOT:
                raise InvalidParameterException(f"baseSnapshotId={base_id}: a virtual disk; snapshot it first")
            if not base.usable():
                raise PrepareIllegalVolumeError(f"snapshot {base_id} is {base.state}")
            if size < base.size:
                raise InvalidParameterException(f"size={size}: smaller than snapshot {base_id} ({base.size})")
            volumes = list(base.volumes)
        image_id = self._new_id(opts)
        if opts.imageId and image_id in repo.images:
            known = repo.images[image_id]
            if not known.removed and known.kind == DISK and known.size == size and known.base == (base_id or "") \
                    and known.userData == user_data and (top is None or known.own[-1] == top):
                return image_id  # the same disk asked for again: idempotent on the caller's id
        optimize = bool(base_id) and opts.strategy == "performance"
        if top is not None:
            self._volume_free(repo, top.id)  # a caller's id (a scan: only VDSM's verbs name volumes)
        top = Volume(top.id, image_id, top.format) if top else Volume(str(uuid.uuid4()), image_id)
        image = Image(id=image_id, kind=DISK, size=size, volumes=[top, *volumes],
                      base=base_id or "", userData=user_data, intent=CreateIntent(optimize, preallocate, opts.offload),
                      stage="0/1")
        return self._commit(repo, image, "create", "createVirtualDisk", opts)

    @_serialized
    def create_snapshot(self, repo_id: str, disk_id: str, user_data: dict, opts: ImageOptions,
                        new_top: str | None = None) -> str:
        """A snapshot of the disk: it takes the disk's volumes, and the disk a new top (`new_top` names it)."""
        repo, disk = self.find(repo_id, disk_id)
        if disk.kind == SNAPSHOT:
            raise ImageIsSnapshot(f"{disk_id} is a snapshot: make a disk on it and snapshot that")
        if not disk.usable():
            raise PrepareIllegalVolumeError(f"disk {disk_id} is {disk.state}")
        self._check_quiet(repo, disk)
        merging = [vol.image for vol in disk.volumes if repo.images.get(vol.image, disk).removed]
        if merging:
            raise VolumeIsBusy(f"{disk_id}: removed snapshot {merging[0]} below it is still being merged")
        image_id = self._new_id(opts)
        if new_top is not None:
            self._volume_free(repo, new_top)
        volumes = [Volume(vol.id, image_id if vol.image == disk.id else vol.image, vol.format)
                   for vol in disk.volumes]
        image = Image(id=image_id, kind=SNAPSHOT, size=disk.size, volumes=volumes, base=disk.base,
                      userData=user_data, intent=SnapshotIntent(disk.id, new_top or str(uuid.uuid4())),
                      stage="0/3", origin=str(uuid.uuid4()))
        return self._commit(repo, image, "snapshot", "createSnapshot", opts)

    @_serialized
    def set_user_data(self, repo_id: str, image_id: str, user_data: dict) -> None:
        """Replace a live image's userData (VDSM's volume descriptions and legality live there)."""
        repo, image = self.find(repo_id, image_id)
        if image.userData != user_data:
            self.fixes.update(repo, image, userData=user_data)

    def copy(self, target_id: str, image_id: str, base_id: str | None, user_data: dict,
             opts: ImageOptions, top: Volume | None = None, kind: str | None = None) -> str:
        """A copy of the image in repository `target_id`; `top` names the new volume and its format
        and `kind` makes the copy a disk or a snapshot whatever the source was (VDSM's templates)."""
        target = self.repository(target_id)
        source_repo, _ = self.locate(image_id, opts)
        with contextlib.ExitStack() as held:
            for _, repo in sorted({target.uuid: target, source_repo.uuid: source_repo}.items()):
                held.enter_context(repo.lock)  # in uuid order: copies both ways cannot deadlock
            return self._copy(target, source_repo, image_id, base_id, user_data, opts, top, kind)

    def _copy(self, target: FileRepository, source_repo: FileRepository, image_id: str, base_id: str | None,
              user_data: dict, opts: ImageOptions, top: Volume | None, kind: str | None) -> str:
        target_id = target.id
        source = source_repo.get(image_id)
        if not source.usable():
            raise PrepareIllegalVolumeError(f"{image_id} is {source.state}")
        volumes: list[Volume] = []
        if not base_id and opts.strategy == "space" and kind is None:
            base_id = self._held_base(target, source_repo, source) or None
        if base_id:
            base = target.get(check_id("baseImageId", base_id))
            if base.kind != SNAPSHOT or not base.usable():
                raise InvalidParameterException(f"baseImageId={base_id}: must be a usable snapshot in {target_id}")
            if not any(vol.image == base_id for vol in source.volumes):
                raise ImageIsNotLegalChain(f"{image_id} was not made on snapshot {base_id}")
            volumes = list(base.volumes)
        self._check_alone(top, base_id)
        if kind is not None:  # a new image of that kind, whatever the source
            new_id = self._new_id(opts)
            known = target.images.get(new_id)
            if known is not None and not known.removed and known.kind == kind and known.own[-1] == top \
                    and isinstance(known.intent, CopyIntent | None) and known.base == (base_id or "") \
                    and known.userData == user_data:
                return new_id  # the same copy asked for again
            if top is not None:
                self._volume_free(target, top.id)
            top = Volume(top.id, new_id, top.format) if top else Volume(str(uuid.uuid4()), new_id)
            image = Image(id=new_id, kind=kind, size=source.size, volumes=[top, *volumes], base=base_id or "",
                          userData=user_data, stage="0/2",
                          intent=CopyIntent(source_repo.uuid, source.id, base_id or "", opts.offload),
                          origin=str(uuid.uuid4()) if kind == SNAPSHOT else "")
            return self._commit(target, image, "copy", "copyImage", opts)
        new_id = image_id if source.kind == SNAPSHOT else self._new_id(opts)
        if source.kind == SNAPSHOT and opts.imageId not in (None, image_id):
            raise InvalidParameterException("a copied snapshot keeps its id: options.imageId must be left out")
        known = target.images.get(new_id)
        if source.kind == SNAPSHOT and known is not None and not known.removed and known.kind == SNAPSHOT:
            return new_id  # the target holds this snapshot already (its copy, or itself): nothing to do
        image = Image(id=new_id, kind=source.kind, size=source.size, volumes=[Volume(str(uuid.uuid4()), new_id),
                      *volumes], base=base_id or "", userData=user_data or dict(source.userData),
                      intent=CopyIntent(source_repo.uuid, source.id, base_id or "", opts.offload), stage="0/2",
                      origin=source.origin if source.kind == SNAPSHOT else "")
        return self._commit(target, image, "copy", "copyImage", opts)

    @staticmethod
    def _held_base(target: FileRepository, source_repo: FileRepository, source: Image) -> str:
        """strategy=space: the snapshot below the source, nearest first, that the target holds usable (a copy of
        the same snapshot: the same origin), so that the copy holds only what differs from it; or ""."""
        for below in dict.fromkeys(vol.image for vol in source.volumes if vol.image != source.id):
            theirs, held = source_repo.images.get(below), target.images.get(below)
            if theirs is not None and held is not None and held.kind == SNAPSHOT and held.usable() \
                    and theirs.origin and held.origin == theirs.origin:
                return below
        return ""

    @_serialized
    def remove(self, repo_id: str, image_id: str, opts: ImageOptions) -> None:
        repo, image = self.find(repo_id, image_id)
        self._check_quiet(repo, image)
        if isinstance(image.intent, SnapshotIntent):  # it still shares the disk's top volume
            raise VolumeIsBusy(f"{image_id}: the snapshot is not complete; its fix must run first")
        waiting = self.needed_by(repo, image)
        if waiting:
            raise VolumeIsBusy(f"{image_id}: the unfinished {waiting[0]} needs it; run that image's fix first")
        with self.fixes.task_for(opts) as task_id:
            record = image.copy()
            record.removed, record.hostId, record.task, record.verb = True, self.host_id, task_id, "removeImage"
            repo.save(record, freeing=True)
            log.info("removeImage committed: %s %s in %s", image.kind, image_id, repo.id)
            if task_id:
                self.fixes.start_after_commit(repo, self.fixes.needed(repo, record), image_id, "removeImage",
                                              task_id)

    def needed_by(self, repo: FileRepository, image: Image) -> list[str]:
        """Unfinished operations that will read `image`: any intent of an image on its volumes, copies of it.

        Removing it first could lose data they need, so its removal waits for them.
        """
        waiting = [f"{other.intent.op} of {other.id}" for other in repo.dependents(image)
                   if not other.removed and other.intent]
        for target in list(self.repositories.values()):
            waiting += [f"copy {copy} in {target.id}" for copy in target.copies_pending(repo.uuid, image.id)]
        return waiting

    def _check_quiet(self, repo: FileRepository, image: Image) -> None:
        """Refuse to change an image a task, a VM, or a pending snapshot is using."""
        tasks = self.fixes.active_on_image(repo, image.id)
        if tasks:
            raise VolumeIsBusy(f"{image.id}: task {tasks[0]} is working on it")
        if self.is_prepared(repo, image.id):
            raise VolumeIsBusy(f"{image.id} is prepared for use on this host; tear it down first")
        self._check_not_rewritten_elsewhere(repo, image)
        if repo.volume_leases is not None:
            repo.volume_leases.check_unused(image.id)
        if repo.snapshot_pending(image.id):
            raise VolumeIsBusy(f"{image.id}: a snapshot of it is not complete yet")

    def _check_not_rewritten_elsewhere(self, repo: FileRepository, image: Image) -> None:
        other = self.fixes.rewritten_elsewhere(repo, image)
        if other:
            raise VolumeIsBusy(f"{image.id}: host {other} changes its chain now (a merge or optimize)")

    # -- use on this host --------------------------------------------------

    def prepare(self, repo_id: str, image_id: str, readonly: bool | None = None) -> tuple[str, bool]:
        """Make the chain usable here; returns the top volume's path and whether it is read-only.

        Under the repository's commit lock, as removeImage: an image is never
        removed between its checks here and the durable mark that it is prepared.
        A VM start waits for that lock at most prepare_timeout (851 past it).
        """
        lock = self.repository(repo_id).lock
        if not lock.acquire(timeout=self.prepare_timeout):
            raise ResourceTimeout(f"{image_id}: repository {repo_id} stayed busy for {self.prepare_timeout:g} s "
                                  "([irs] prepare_image_timeout)")
        try:
            return self._prepare(repo_id, image_id, readonly)
        finally:
            lock.release()

    def _prepare(self, repo_id: str, image_id: str, readonly: bool | None) -> tuple[str, bool]:
        repo, image = self.find(repo_id, image_id)
        if image.kind == SNAPSHOT and readonly is False:
            raise ImageIsSnapshot(f"{image_id} is a snapshot: prepare it read-only, or make a disk on it")
        if not image.usable():
            raise PrepareIllegalVolumeError(f"{image_id} is {image.state}: {image.lastError.get('message', '')}")
        if repo.snapshot_pending(image_id):
            raise VolumeIsBusy(f"{image_id}: a snapshot of it is not complete yet")
        if image_id in repo.rewriting:
            raise VolumeIsBusy(f"{image_id}: a merge or optimize is changing its chain now")
        self._check_not_rewritten_elsewhere(repo, image)
        for vol in image.volumes:
            if not repo.volume_exists(vol):
                raise VolumeDoesNotExist(f"{image_id}: volume {vol.id} is missing")
        key = (repo.uuid, image_id)
        if repo.volume_leases is not None:  # a VM on any host may hold it: made at the first prepare
            repo.volume_leases.ensure(image_id)
        if key not in self.prepared:
            self._hold(repo, image)
            try:
                self.prepared.add(key)
            except OSError as e:
                self._release(repo, image)
                raise MiscFileWriteException(f"the prepared state of {image_id}: {e}") from None
        return repo.volume_path(image.top), image.kind == SNAPSHOT or bool(readonly)

    def _hold(self, repo: FileRepository, image: Image) -> None:
        """Make the image usable by a VM here: a block image's chain activated, and with [irs]
        use_volume_leases its volume lease taken for this host (files need nothing else)."""
        if repo.volume_leases is not None and self.use_volume_leases:
            repo.volume_leases.acquire(image.id)
        try:
            self._activate_chain(repo, image)
        except BaseException:
            if repo.volume_leases is not None and self.use_volume_leases:
                repo.volume_leases.release(image.id)
            raise

    @staticmethod
    def _activate_chain(repo: FileRepository, image: Image) -> None:
        if isinstance(repo, block.BlockRepository):
            held: list[Volume] = []
            try:
                for vol in image.volumes:
                    repo.hold(vol)
                    held.append(vol)
            except BaseException:
                for vol in held:
                    repo.release(vol)
                raise

    def _release(self, repo: FileRepository, image: Image) -> None:
        if isinstance(repo, block.BlockRepository):
            for vol in image.volumes:
                repo.release(vol)
        if repo.volume_leases is not None and self.use_volume_leases:
            repo.volume_leases.release(image.id)

    @_serialized
    def teardown(self, repo_id: str, image_id: str) -> None:
        repo = self.repository(repo_id)
        key = (repo.uuid, check_id("imageId", image_id))
        if key not in self.prepared:
            repo.get(image_id)  # an unknown image says so first
            raise VolumeWasNotPreparedBeforeTeardown(image_id)
        try:
            self.prepared.discard(key)
        except OSError as e:
            raise MiscFileWriteException(f"the prepared state of {image_id}: {e}") from None
        image = repo.images.get(image_id)
        if image is not None:
            self._release(repo, image)

    def is_prepared(self, repo: FileRepository, image_id: str) -> bool:
        return (repo.uuid, image_id) in self.prepared
