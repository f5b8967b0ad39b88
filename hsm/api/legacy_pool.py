"""VDSM's storage pool and SPM verbs, on this host's pool records (hsm.storage.pools).

SPM, when the pool's master domain is shared (nfs-1, posixfs-1): the host
that pinned the master's metadata-writer lease, so that other hosts' commits
on it wait. spmStart answers `uuid`, a task tagged "hsm" that pins the lease
(its result {lver}: the lease's version); it fails with 651 when another
host keeps the lease (another SPM), 661 when this host cannot join the
lockspace, and spmStart on the SPM answers 656 at once, as VDSM's
validateNotSPM did. spmStop lets the lease go (nothing to do when not SPM);
it does not wait for tasks: hsm's tasks commit with or without the role.
getSpmStatus answers {spmStatus SPM/Contend/Free, spmLver (the lease's
version), spmId (the host holding the lease, -1 for none)}.
connectStoragePool's hostID must be this host's `[sanlock] host_id` (700).
fenceSpmStorage answers the status and changes nothing: VDSM's reset of the
SPM id in its pool metadata has no counterpart, since sanlock alone says who
holds the lease, and frees a dead holder's lease by itself.

With a local master (localfs-1) the pool is a single-host view: the host that
connects it holds its SPM role with the hostID given at connect, spmStart
bumps the lease version kept in the pool record, spmStop changes nothing.

The OVF store verbs (updateVM, removeVM, getVmsList, getVmsInfo) work on the
master domain or an export domain (hsm.storage.ovf); reconstructMaster and
upgradeStoragePool rewrite this host's view of the pool and its domains'
version labels.
"""

from __future__ import annotations

import uuid

from hsm.api.dispatch import options_of
from hsm.api.legacy_domains import parse_bool
from hsm.api.verbs import verb
from hsm.errors import InvalidParameterException, UnsupportedDomainVersion
from hsm.ids import is_uuid
from hsm.storage import ovf
from hsm.storage.domains import VERSIONS, check_uuid, number
from hsm.storage.options import check_id
from hsm.storage.pools import Pools
from hsm.tasks import Step, StepContext, TaskKind, TaskManager

SPM_START = "legacy-spmStart"


def _vm_list(value: object) -> list[str] | None:
    """getVmsInfo's vmList: VM UUIDs, or None for every VM when left out (None, '' or empty), as in VDSM."""
    if value in (None, "") or value == []:
        return None
    if not isinstance(value, list):
        raise InvalidParameterException(f"vmList={value!r}: expected a list of VM UUIDs")
    return [ovf.check_vm(vm, "vmList") for vm in value]


def _extension(value: object) -> str:
    """getIsoList's extension: a file name ending without '/', 'iso' when left out."""
    if value in (None, ""):
        return "iso"
    if not isinstance(value, str) or "/" in value or "\0" in value:
        raise InvalidParameterException(f"extension={value!r}: expected a file name extension")
    return value


def _domain_list(value: object) -> list:
    """domList as a list of sdUUIDs, or as vdsClient sent it: one comma-separated string."""
    if isinstance(value, str):
        return [sd for sd in value.split(",") if sd]
    if not isinstance(value, list):
        raise InvalidParameterException(f"domList={value!r}: expected a list of sdUUIDs")
    return value


class LegacyPoolAPI:
    def __init__(self, pools: Pools, tasks: TaskManager) -> None:
        self._pools = pools
        self._tasks = tasks
        tasks.register(TaskKind(SPM_START, lambda args: [Step("spmStart", self._spm_start, idempotent=True)]))

    def _spm_start(self, ctx: StepContext) -> dict:
        return {"lver": self._pools.spm_start(ctx.args["spUUID"], ctx.check_stop)}

    @verb(mutating=True)
    def createStoragePool(self, poolType: int, spUUID: str, poolName: str, masterDom: str, domList: list,
                          masterVersion: int, lockPolicy: object = None, lockRenewalIntervalSec: object = None,
                          leaseTimeSec: object = None, ioOpTimeoutSec: object = None, leaseRetries: object = None,
                          options: dict | None = None) -> dict:
        options_of(options)
        self._pools.create(spUUID, poolName, masterDom, _domain_list(domList), number("masterVersion", masterVersion))
        return {}

    @verb(mutating=True)
    def connectStoragePool(self, spUUID: str, hostID: int, scsiKey: str, msdUUID: str, masterVersion: int,
                           options: dict | None = None) -> dict:
        options_of(options)
        host_id = number("hostID", hostID)
        if host_id < 0:
            raise InvalidParameterException(f"hostID={hostID!r}: expected a host id")
        if msdUUID:
            check_uuid("msdUUID", msdUUID)
        self._pools.connect(spUUID, host_id, str(scsiKey), msdUUID, number("masterVersion", masterVersion, 0))
        return {}

    @verb(mutating=True)
    def disconnectStoragePool(self, spUUID: str, hostID: int, scsiKey: str, remove: bool = False,
                              options: dict | None = None) -> dict:
        options_of(options)
        number("hostID", hostID)
        self._pools.disconnect(spUUID)
        return {}

    @verb(mutating=True)
    def destroyStoragePool(self, spUUID: str, hostID: int, scsiKey: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.destroy(spUUID, number("hostID", hostID))
        return {}

    @verb()
    def getStoragePoolInfo(self, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        return self._pools.info(spUUID)

    @verb()
    def getConnectedStoragePoolsList(self, options: dict | None = None) -> dict:
        options_of(options)
        return {"poollist": self._pools.connected_list()}

    @verb(mutating=True)
    def attachStorageDomain(self, sdUUID: str, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.attach(sdUUID, spUUID)
        return {}

    @verb(mutating=True)
    def detachStorageDomain(self, sdUUID: str, spUUID: str, msdUUID: str | None = None,
                            masterVersion: int | None = None, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.detach(sdUUID, spUUID)
        return {}

    @verb(mutating=True)
    def forcedDetachStorageDomain(self, sdUUID: str, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.detach(sdUUID, spUUID, forced=True)
        return {}

    @verb(mutating=True)
    def activateStorageDomain(self, sdUUID: str, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.activate(sdUUID, spUUID)
        return {}

    @verb(mutating=True)
    def deactivateStorageDomain(self, sdUUID: str, spUUID: str, msdUUID: str, masterVersion: int,
                                options: dict | None = None) -> dict:
        options_of(options)
        self._pools.deactivate(sdUUID, spUUID, msdUUID or "", number("masterVersion", masterVersion, 0))
        return {}

    @verb(mutating=True)
    def setStoragePoolDescription(self, spUUID: str, description: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.set_description(spUUID, description)
        return {}

    @verb(mutating=True)
    def refreshStoragePool(self, spUUID: str, msdUUID: str, masterVersion: int, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.refresh(spUUID, msdUUID, number("masterVersion", masterVersion))
        return {}

    @verb()
    def prepareForShutdown(self, options: dict | None = None) -> dict:
        """Nothing to let go on this host: tasks and pools are durable, and hsmd's own stop ends the rest."""
        options_of(options)
        return {}

    # -- SPM: the master's metadata-writer lease, or this host ----------

    @verb(mutating=True)
    def spmStart(self, spUUID: str, prevID: int, prevLVER: int, recoveryMode: object, scsiFencing: object,
                 maxHostID: int | str = "", domVersion: int | str = "", options: dict | None = None) -> dict:
        opts = options_of(options)
        pool = self._pools.check_not_spm(spUUID)
        if domVersion not in ("", None) and number("domVersion", domVersion) not in VERSIONS:
            raise UnsupportedDomainVersion(f"domVersion={domVersion}: expected one of {VERSIONS}")
        task_id = check_id("options.taskId", opts["taskId"]) if "taskId" in opts else str(uuid.uuid4())
        # VDSM tagged this task "hsm": the pool task listings leave it out.
        task = self._tasks.start(SPM_START, "spmStart", {"spUUID": pool.uuid}, tags=["hsm"], task_id=task_id)
        return {"uuid": task.id}

    @verb(mutating=True)
    def spmStop(self, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.spm_stop(spUUID)
        return {}

    @verb()
    def getSpmStatus(self, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        return {"spm_st": self._pools.spm_status(spUUID)}

    @verb(mutating=True)
    def fenceSpmStorage(self, spUUID: str, lastOwner: object, lastLver: object, options: dict | None = None) -> dict:
        """Only the status: see the module's text."""
        options_of(options)
        return {"spm_st": self._pools.spm_status(spUUID)}

    # -- the OVF store --------------------------------------------------

    @verb(mutating=True)
    def updateVM(self, spUUID: str, vmList: list, sdUUID: str | None = None, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.store_ovfs(spUUID, sdUUID, ovf.parse_vm_list(vmList))
        return {}

    @verb(mutating=True)
    def removeVM(self, spUUID: str, vmUUID: str, sdUUID: str | None = None, options: dict | None = None) -> dict:
        options_of(options)
        self._pools.remove_ovf(spUUID, sdUUID, ovf.check_vm(vmUUID))
        return {}

    @verb()
    def getVmsList(self, spUUID: str, sdUUID: str | None = None, options: dict | None = None) -> dict:
        options_of(options)
        return {"vmlist": ovf.vm_ids(self._pools.ovf_domain(spUUID, sdUUID))}

    @verb()
    def getVmsInfo(self, spUUID: str, sdUUID: str, vmList: list | None = None, options: dict | None = None) -> dict:
        options_of(options)
        repo = self._pools.ovf_domain(spUUID, sdUUID)
        return {"vmlist": ovf.read(repo, _vm_list(vmList))}

    # -- what the pool holds --------------------------------------------

    @verb()
    def getIsoList(self, spUUID: str, extension: str = "iso", options: dict | None = None) -> dict:
        options_of(options)
        return {"isolist": self._pools.iso_list(spUUID, _extension(extension))}

    @verb()
    def getFloppyList(self, spUUID: str, options: dict | None = None) -> dict:
        options_of(options)
        return {"isolist": self._pools.iso_list(spUUID, "vfd")}

    @verb()
    def getImageDomainsList(self, spUUID: str, imgUUID: str, datadomains: bool | str = True,
                            options: dict | None = None) -> dict:
        options_of(options)
        # vdsClient sends a domain's UUID here (its third word); VDSM only asked whether it was set.
        named = is_uuid(datadomains)
        data_only = True if datadomains == "" or named else parse_bool("datadomains", datadomains)
        image = check_uuid("imgUUID", imgUUID)
        return {"domainslist": self._pools.image_domains(spUUID, image, data_only)}

    # -- upgrade and rescue ---------------------------------------------

    @verb(mutating=True)
    def upgradeStoragePool(self, spUUID: str, targetDomVersion: int | str) -> dict:
        """VDSM started the upgrade in threads and answered "started"; here it is done when the answer comes."""
        target = number("targetDomVersion", targetDomVersion)
        self._pools.upgrade(spUUID, target)
        return {"upgradeStatus": "started"}

    @verb(mutating=True)
    def reconstructMaster(self, spUUID: str, poolName: str, masterDom: str, domDict: dict, masterVersion: int,
                          lockPolicy: object = None, lockRenewalIntervalSec: object = None,
                          leaseTimeSec: object = None, ioOpTimeoutSec: object = None, leaseRetries: object = None,
                          hostId: int | str | None = None, options: dict | None = None) -> dict:
        """The lease arguments are taken and not used: this host's view needs no lease to be made again."""
        options_of(options)
        version = number("masterVersion", masterVersion)
        if hostId not in (None, ""):
            number("hostId", hostId)
        self._pools.reconstruct(spUUID, poolName, masterDom, domDict, version)
        return {}
