"""VDSM's storage pool, seen from one host: a named set of domains with one master domain.

VDSM kept a pool's metadata on its master domain and its SPM lease on
shared storage. Here each host keeps its own pool records in
`<state_dir>/pools.json` (written through the atomic-write helper), which
survive a restart, connected or not. One pool is connected at a time, as in
VDSM. The pool's OVF store is on its master domain (hsm.storage.ovf) and
moves with the master role.

The SPM role depends on the master domain:

- A shared master (nfs-1, posixfs-1: it has a sanlock lockspace): the SPM is
  the host that pinned the master's metadata-writer lease
  (hsm.leases.writer.CommitLock.pin), VDSM's SDM lease at the same place.
  spmStart pins it (651 when another host keeps it past SPM_START_WAIT,
  661 when this host cannot join the lockspace), spmStop unpins it; until
  then other hosts' commits on that repository wait for it. getSpmStatus
  answers "SPM" on that host, "Contend" while this host's spmStart tries,
  "Free" elsewhere. spmId is the host holding the lease: this host's id when
  it pinned it, else another host as the repository's monitor last saw it
  (-1 for none; a host committing holds it for moments too). spmLver is the
  lease's version on storage (sanlock's leader record, read through the
  repository's I/O helper; sanlock raises it at each acquisition), -1 when
  it cannot be read. connectStoragePool's hostID must be this host's
  `[sanlock] host_id` (700), and a pool whose lease this host pinned is not
  disconnected (656). The role moves with the master (deactivate), and
  hsmd's restart lets the lease go: the host is Free.
- A local master (localfs-1): the single-host view. The host that connects
  the pool holds its SPM role, spmId is the hostID given at connect, spmStart
  bumps spmLver (kept in the pool record), spmStop changes nothing.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from hsm.errors import (
    AcquireHostIdFailure,
    AcquireLockFailure,
    CannotConnectMultiplePools,
    CannotDetachMasterStorageDomain,
    CannotFormatAttachedStorageDomain,
    CannotFormatStorageDomainInConnectedPool,
    CurrentVersionTooAdvancedError,
    GetIsoListError,
    HostIdMismatch,
    HsmError,
    InvalidParameterException,
    IsSpm,
    StorageDomainAlreadyAttached,
    StorageDomainNotActive,
    StorageDomainNotInPool,
    StorageDomainNotMemberOfPool,
    StorageDomainStatusError,
    StorageDomainTypeNotBackup,
    StoragePoolAlreadyExists,
    StoragePoolConnected,
    StoragePoolDescriptionTooLongError,
    StoragePoolMasterNotFound,
    StoragePoolUnknown,
    StoragePoolWrongMaster,
    UnsupportedDomainVersion,
)
from hsm.leases.lockspace import LEASE_OFFSET, WRITER
from hsm.storage import ovf
from hsm.storage.domains import (
    BLANK_UUID,
    VERSIONS,
    Domains,
    check_description,
    check_uuid,
    load_table,
    save_table,
)
from hsm.storage.repository import ISO_FOLDER, FileRepository

log = logging.getLogger("hsm.storage.pools")

ACTIVE, ATTACHED = "Active", "Attached"  # a domain's status in its pool, VDSM's words
# reconstructMaster's domDict statuses, as VDSM took them (any case), in this view's two; Unattached: not a member.
RECONSTRUCT_STATUSES = {"Active": ACTIVE, "Attached": ATTACHED, "Inactive": ATTACHED, "Unknown": ATTACHED,
                        "Unattached": None}
SPM, FREE, CONTEND = "SPM", "Free", "Contend"  # getSpmStatus's spmStatus, VDSM's words
# How long spmStart waits for the metadata-writer lease once this host is in the lockspace: past other
# hosts' commits (each host keeps it for at most hsm.leases.writer.MAX_HOLD s of back-to-back commits,
# then lets it go), not for another SPM (it keeps it until spmStop): then 651, as VDSM's sanlock
# acquire answered at once for a lease held by a live host, and the engine asks again.
SPM_START_WAIT = 10.0
JOIN_POLL = 0.1  # seconds between two looks at whether this host has joined the lockspace (spmStart)

@dataclass
class Pool:
    uuid: str
    name: str
    master: str
    masterVersion: int
    domains: dict[str, str] = field(default_factory=dict)  # sdUUID -> ACTIVE or ATTACHED
    connected: bool = False
    hostId: int = -1
    scsiKey: str = ""
    lver: int = -1  # bumped by each spmStart: VDSM's lease version


def is_shared(repo: FileRepository) -> bool:
    """A repository many hosts use: it has a lockspace and a metadata-writer lease (nfs-1, posixfs-1)."""
    return repo.lockspace is not None and repo.lock.writer is not None


def lease_version(repo: FileRepository) -> int:
    """The version (lver) of the repository's metadata-writer lease as storage holds it (sanlock's
    read_resource, run by the repository's I/O helper so that no verb waits on storage that hangs); -1
    when it cannot be read or is not the lease."""
    assert repo.lockspace is not None
    try:
        found = repo.io.lease_read(repo.lockspace.paths.leases, LEASE_OFFSET)
    except (OSError, HsmError) as e:
        log.warning("Repository %s: the metadata-writer lease cannot be read: %s", repo.uuid, e)
        return -1
    if found.get("lockspace") != repo.lockspace.name or found.get("resource") != WRITER:
        log.warning("Repository %s: no metadata-writer lease at %s:%d", repo.uuid, repo.lockspace.paths.leases,
                    LEASE_OFFSET)
        return -1
    return int(found.get("version", -1))


def check_name(value: object) -> str:
    return check_description(value, "poolName", StoragePoolDescriptionTooLongError)


def domain_version(repo: FileRepository) -> int:
    """A domain's VDSM version label; a domain made without one reads as VDSM's first, 0."""
    try:
        return int(repo.labels.get("domainVersion", VERSIONS[0]))
    except ValueError:
        return VERSIONS[0]


def domain_class(repo: FileRepository) -> str:
    return str(repo.labels.get("domainClass", "Data"))


def holds_image(repo: FileRepository, img_uuid: str) -> bool:
    """Whether the domain holds a live image (or an unreadable record that may be one): the index, no scan."""
    image = repo.images.get(img_uuid)
    return (image is not None and not image.removed) or img_uuid in repo.unreadable


def reconstruct_domains(value: object) -> dict[str, str]:
    """reconstructMaster's domDict {sdUUID: status} in this view's statuses (376 for a status VDSM did not know)."""
    if not isinstance(value, dict):
        raise InvalidParameterException(f"domDict={value!r}: expected a struct {{sdUUID: status}}")
    found = {}
    for sd_uuid, status in value.items():
        sd_uuid = check_uuid("domDict", sd_uuid)
        if not isinstance(status, str) or status.capitalize() not in RECONSTRUCT_STATUSES:
            raise StorageDomainStatusError(f"{sd_uuid}: {status!r}")
        mapped = RECONSTRUCT_STATUSES[status.capitalize()]
        if mapped is not None:
            found[sd_uuid] = mapped
    return found


class Pools:
    def __init__(self, domains: Domains, state_dir: str) -> None:
        self._domains = domains
        self._path = os.path.join(state_dir, "pools.json")
        self._lock = threading.RLock()
        self._pools: dict[str, Pool] = load_table(self._path, Pool)
        # The SPM role on shared masters, in memory (hsmd's restart lets the lease go). Taken before _lock.
        self._spm_lock = threading.Lock()
        self._pinned: dict[str, FileRepository] = {}  # pool -> the master whose lease this host pinned for it
        self._contending: collections.Counter[str] = collections.Counter()  # pools whose spmStart runs here

    def _change(self, pool: Pool | None, uuid: str, **changes: object) -> None:
        """Apply changes to a pool (or add or drop one) in memory only once pools.json says so."""
        before = dict(self._pools)
        if pool is None:
            self._pools.pop(uuid, None)
        else:
            self._pools[uuid] = Pool(**{**asdict(pool), **changes})
        try:
            save_table(self._path, self._pools)
        except OSError:
            self._pools = before
            raise

    # -- lookups --------------------------------------------------------

    def connected(self, sp_uuid: object) -> Pool:
        """A pool connected on this host: 309 otherwise (as VDSM's getPool)."""
        sp_uuid = check_uuid("spUUID", sp_uuid)
        pool = self._pools.get(sp_uuid)
        if pool is None or not pool.connected:
            raise StoragePoolUnknown(sp_uuid)
        return pool

    def connected_list(self) -> list[str]:
        return sorted(sp for sp, pool in self._pools.items() if pool.connected)

    def of_domain(self, sd_uuid: str) -> list[Pool]:
        return [pool for pool in self._pools.values() if sd_uuid in pool.domains]

    def _member(self, sp_uuid: object, sd_uuid: object,
                missing: type = StorageDomainNotMemberOfPool) -> tuple[Pool, str]:
        """The connected pool and the checked UUID of one of its domains."""
        pool = self.connected(sp_uuid)
        checked = check_uuid("sdUUID", sd_uuid)
        if checked not in pool.domains:
            raise missing(f"{checked} in pool {pool.uuid}")
        return pool, checked

    # -- the pool -------------------------------------------------------

    def create(self, sp_uuid: object, name: object, master: object, domains: list, version: int) -> None:
        sp_uuid = check_uuid("spUUID", sp_uuid)
        name = check_name(name)
        domains = [check_uuid("domList", sd) for sd in domains]
        if not isinstance(master, str) or master not in domains:
            raise InvalidParameterException(f"masterDom={master!r}: not in domList")
        for sd in domains:
            self._domains.validate(self._domains.get(sd))
        wanted = {sd: ACTIVE if sd == master else ATTACHED for sd in domains}
        with self._lock:
            known = self._pools.get(sp_uuid)
            if known is not None:
                if (known.name, known.master, known.masterVersion, set(known.domains)) == \
                        (name, master, version, set(domains)):
                    return  # the same pool asked for again
                raise StoragePoolAlreadyExists(sp_uuid)
            for sd in domains:
                taken = [pool.uuid for pool in self.of_domain(sd)]
                if taken:
                    raise StorageDomainAlreadyAttached(f"{sd} is in pool {taken[0]}")
            self._change(Pool(sp_uuid, name, master, version, wanted), sp_uuid)
        log.info("Created storage pool %s (%s), master %s, domains %s", sp_uuid, name, master, sorted(domains))

    def connect(self, sp_uuid: object, host_id: int, scsi_key: str, master: object, version: int) -> None:
        sp_uuid = check_uuid("spUUID", sp_uuid)
        with self._lock:
            others = [sp for sp in self.connected_list() if sp != sp_uuid]
            if others:
                raise CannotConnectMultiplePools(f"pool {others[0]} is connected")
            pool = self._pools.get(sp_uuid)
            if pool is None:
                raise StoragePoolMasterNotFound(f"pool {sp_uuid} is not known on this host")
            if master and version and (master, version) != (pool.master, pool.masterVersion):
                raise StoragePoolWrongMaster(f"pool {sp_uuid} has master {pool.master} version {pool.masterVersion}")
            repo = self._domains.get(pool.master)
            if is_shared(repo):
                assert repo.lockspace is not None
                if host_id != repo.lockspace.host_id:
                    raise HostIdMismatch(f"hostID {host_id}: this host is host {repo.lockspace.host_id} in the "
                                         f"lockspace of master domain {repo.uuid} ([sanlock] host_id)")
            for sd in pool.domains:  # the others come back when they can be reached
                try:
                    self._domains.get(sd)
                except HsmError as e:  # a lost domain does not keep its pool down, as in VDSM
                    log.warning("Pool %s: domain %s cannot be reached: %s", sp_uuid, sd, e)
            if not pool.connected or pool.hostId != host_id:
                self._change(pool, sp_uuid, connected=True, hostId=host_id, scsiKey=scsi_key)
        log.info("Connected storage pool %s as host %d", sp_uuid, host_id)

    def disconnect(self, sp_uuid: object) -> None:
        """Unknown or not connected: nothing to do, as in VDSM. The SPM of a shared master answers 656 (IsSpm),
        as VDSM did: spmStop first."""
        sp_uuid = check_uuid("spUUID", sp_uuid)
        with self._spm_lock, self._lock:
            pool = self._pools.get(sp_uuid)
            if pool is not None and pool.connected:
                if pool.uuid in self._pinned and self._is_spm(pool, self._domains.get(pool.master)):
                    raise IsSpm(f"pool {pool.uuid}: this host holds the metadata-writer lease of its master "
                                f"{pool.master}; spmStop first")
                self._change(pool, sp_uuid, connected=False)

    def destroy(self, sp_uuid: object, host_id: int) -> None:
        with self._spm_lock, self._lock:
            pool = self.connected(sp_uuid)
            if pool.hostId != host_id:
                raise HostIdMismatch(f"pool {pool.uuid} is connected as host {pool.hostId}, not {host_id}")
            self._change(None, pool.uuid)
            self._let_go(pool)
        log.info("Destroyed storage pool %s", pool.uuid)

    def refresh(self, sp_uuid: object, master: object, version: int) -> None:
        """A wrong master disconnects the pool, as VDSM did (and this host is no longer its SPM)."""
        with self._spm_lock, self._lock:
            pool = self.connected(sp_uuid)
            if (master, version) != (pool.master, pool.masterVersion):
                self._change(pool, pool.uuid, connected=False)
                self._let_go(pool)
                raise StoragePoolWrongMaster(f"pool {pool.uuid} has master {pool.master} "
                                             f"version {pool.masterVersion}; disconnected")

    def set_description(self, sp_uuid: object, description: object) -> None:
        with self._lock:
            pool = self.connected(sp_uuid)
            self._change(pool, pool.uuid, name=check_name(description))

    # -- the SPM role --------------------------------------------------

    def check_not_spm(self, sp_uuid: object) -> Pool:
        """spmStart's check before its task: the SPM of a shared master answers 656 (IsSpm), as VDSM's
        validateNotSPM did. The single-host view starts again (each start bumps spmLver)."""
        pool = self.connected(sp_uuid)
        if pool.uuid in self._pinned and self._is_spm(pool, self._domains.get(pool.master)):
            raise IsSpm(f"pool {pool.uuid}: this host is its SPM already")
        return pool

    def spm_start(self, sp_uuid: str, check_stop: Callable[[], None] = lambda: None) -> int:
        """spmStart's task: the lease version this host holds the SPM role with."""
        with self._lock:
            pool = self.connected(sp_uuid)
            repo = self._domains.get(pool.master)
            if not is_shared(repo):
                self._change(pool, pool.uuid, lver=pool.lver + 1)
                return pool.lver + 1
            self._contending[pool.uuid] += 1
        try:
            self._wait_joined(repo, check_stop)
            with self._spm_lock:
                with self._lock:
                    pool = self.connected(sp_uuid)
                    if pool.master != repo.uuid:
                        raise StoragePoolWrongMaster(f"pool {pool.uuid}: its master moved to {pool.master}")
                if not self._is_spm(pool, repo):
                    self._pin(pool, repo)
        finally:
            with self._lock:
                self._contending[pool.uuid] -= 1
                if self._contending[pool.uuid] <= 0:
                    del self._contending[pool.uuid]
        lver = lease_version(repo)
        log.info("Pool %s: this host (host %d) is its SPM: it holds the metadata-writer lease of master %s, "
                 "version %d", pool.uuid, self._host_id(repo), repo.uuid, lver)
        return lver

    def spm_stop(self, sp_uuid: object) -> None:
        """Let the lease go (after the commit running now, if any); not the SPM: nothing to do, as in VDSM."""
        with self._spm_lock, self._lock:
            self._let_go(self.connected(sp_uuid))

    @staticmethod
    def _host_id(repo: FileRepository) -> int:
        assert repo.lockspace is not None
        return repo.lockspace.host_id

    @staticmethod
    def _wait_joined(repo: FileRepository, check_stop: Callable[[], None]) -> None:
        """Until this host is in the repository's lockspace (connect asks sanlock and does not wait), as long
        as a commit would wait for it: VDSM's spmStart acquired its host id first, too."""
        space, writer = repo.lockspace, repo.lock.writer
        assert space is not None and writer is not None
        deadline = time.monotonic() + writer.acquire_timeout
        while True:
            try:
                if space.joined():
                    return
            except Exception as e:  # no daemon to ask (sanlock.SanlockException)
                raise AcquireHostIdFailure(f"repository {repo.uuid}: sanlock cannot say whether this host is in "
                                           f"its lockspace ({e})") from None
            if time.monotonic() >= deadline:
                raise AcquireHostIdFailure(f"repository {repo.uuid}: this host has not joined its lockspace "
                                           f"(host id {space.host_id}) in {writer.acquire_timeout:.0f} s")
            check_stop()
            time.sleep(JOIN_POLL)

    def _pin(self, pool: Pool, repo: FileRepository) -> None:
        """Take the master's lease and keep it (under _spm_lock): 651 when another host keeps it."""
        assert repo.lockspace is not None
        try:
            repo.lock.pin(SPM_START_WAIT)
        except AcquireLockFailure as e:
            log.info("Pool %s: spmStart: %s", pool.uuid, e)
            holder = repo.lockspace.state().get("writer") or "another host"
            raise AcquireLockFailure(f"pool {pool.uuid}: the metadata-writer lease of master {repo.uuid} stayed "
                                     f"with host {holder} for {SPM_START_WAIT:.0f} s") from None
        self._pinned[pool.uuid] = repo

    def _let_go(self, pool: Pool) -> None:
        """This host is no longer the pool's SPM: unpin the lease it pinned, if any (under _spm_lock)."""
        repo = self._pinned.pop(pool.uuid, None)
        if repo is not None:
            self._unpin(repo)
            log.info("Pool %s: this host is no longer its SPM; the metadata-writer lease of %s is let go",
                     pool.uuid, repo.uuid)

    @staticmethod
    def _unpin(repo: FileRepository) -> None:
        try:
            repo.lock.unpin()
        except Exception as e:  # a repository disconnected since: its helper took the lease with it
            log.warning("Repository %s: cannot let the metadata-writer lease go: %s", repo.uuid, e)

    def _is_spm(self, pool: Pool, repo: FileRepository) -> bool:
        """Whether this host holds the pool's SPM role on `repo`, its master now: the lease it pinned is
        still held. A role lost (the lease lost with the lockspace, the master disconnected and connected
        again) is forgotten, and its pin let go, so that no later commit takes the lease for good."""
        pinned = self._pinned.get(pool.uuid)
        if pinned is None:
            return False
        writer = pinned.lock.writer
        if pinned is repo and writer is not None and writer.pinned and writer.held:
            return True
        if self._pinned.pop(pool.uuid, None) is not None:
            self._unpin(pinned)
            log.warning("Pool %s: this host lost its SPM role (the metadata-writer lease of %s)", pool.uuid,
                        pinned.uuid)
        return False

    # -- its domains ----------------------------------------------------

    def attach(self, sd_uuid: object, sp_uuid: object) -> None:
        with self._lock:
            pool = self.connected(sp_uuid)
            repo = self._domains.get(sd_uuid)
            if repo.uuid in pool.domains:
                return
            taken = [other.uuid for other in self.of_domain(repo.uuid)]
            if taken:
                raise StorageDomainAlreadyAttached(f"{repo.uuid} is in pool {taken[0]}")
            self._change(pool, pool.uuid, domains={**pool.domains, repo.uuid: ATTACHED})

    def detach(self, sd_uuid: object, sp_uuid: object, forced: bool = False) -> None:
        with self._lock:
            pool = self.connected(sp_uuid)
            sd_uuid = check_uuid("sdUUID", sd_uuid)
            if sd_uuid == pool.master:
                raise CannotDetachMasterStorageDomain(sd_uuid)
            if sd_uuid not in pool.domains:
                if forced:
                    return
                raise StorageDomainNotMemberOfPool(f"{sd_uuid} in pool {pool.uuid}")
            self._change(pool, pool.uuid, domains={sd: st for sd, st in pool.domains.items() if sd != sd_uuid})

    def activate(self, sd_uuid: object, sp_uuid: object) -> None:
        with self._lock:
            pool, sd_uuid = self._member(sp_uuid, sd_uuid, missing=StorageDomainNotInPool)
            self._domains.validate(self._domains.get(sd_uuid))
            if pool.domains[sd_uuid] != ACTIVE:
                self._change(pool, pool.uuid, domains={**pool.domains, sd_uuid: ACTIVE})

    def deactivate(self, sd_uuid: object, sp_uuid: object, new_master: object, version: int) -> None:
        """Deactivating the master moves the role to `new_master`; with the blank UUID it is ignored, as in VDSM.
        The SPM of a shared master keeps the role: it pins the new master's lease (a shared one) first."""
        with self._spm_lock, self._lock:
            pool, sd_uuid = self._member(sp_uuid, sd_uuid)
            domains = {**pool.domains, sd_uuid: ATTACHED}
            if sd_uuid != pool.master:
                self._change(pool, pool.uuid, domains=domains)
                return
            if new_master in ("", BLANK_UUID):
                log.info("Pool %s: deactivating master %s without a new master is ignored", pool.uuid, sd_uuid)
                return
            new_master = check_uuid("msdUUID", new_master)
            if new_master not in pool.domains or new_master == sd_uuid:
                raise StorageDomainNotInPool(f"new master {new_master} in pool {pool.uuid}")
            target = self._domains.get(new_master)
            self._domains.validate(target)
            spm = pool.uuid in self._pinned and self._is_spm(pool, self._domains.get(pool.master))
            if spm and is_shared(target):
                target.lock.pin(SPM_START_WAIT)  # 651, nothing changed, when another host keeps it
            try:
                self._move_ovf_store(pool, target)
                domains[new_master] = ACTIVE
                self._change(pool, pool.uuid, domains=domains, master=new_master, masterVersion=version)
            except BaseException:
                if spm and is_shared(target):
                    self._unpin(target)
                raise
            if spm:
                self._let_go(pool)
                if is_shared(target):
                    self._pinned[pool.uuid] = target

    def _move_ovf_store(self, pool: Pool, target: FileRepository) -> None:
        """Copy the OVF store to the new master; an old master that cannot be read does not keep the role
        from moving (the engine writes the OVFs again with updateVM)."""
        try:
            ovf.copy(self._domains.get(pool.master), target)
        except HsmError as e:
            log.warning("Pool %s: the OVF store of %s was not copied to the new master %s: %s", pool.uuid,
                        pool.master, target.uuid, e)

    def release_for_format(self, sd_uuid: str, auto_detach: bool) -> None:
        """Before a domain is formatted: refused in a connected pool; in others only with autoDetach, which
        takes it out of them (a pool whose master it was goes with it, as its metadata did in VDSM)."""
        with self._lock:
            pools = self.of_domain(sd_uuid)
            if any(pool.connected for pool in pools):
                raise CannotFormatStorageDomainInConnectedPool(sd_uuid)
            if pools and not auto_detach:
                raise CannotFormatAttachedStorageDomain(f"{sd_uuid} is in pool {pools[0].uuid}")
            for pool in pools:
                self._take_out(pool, sd_uuid)

    def _take_out(self, pool: Pool, sd_uuid: str) -> None:
        """Drop a domain from a pool that is not connected; a pool whose master it was goes with it."""
        if pool.master == sd_uuid:
            self._change(None, pool.uuid)
            log.warning("Pool %s is gone with its master domain %s", pool.uuid, sd_uuid)
        else:
            self._change(pool, pool.uuid, domains={sd: st for sd, st in pool.domains.items() if sd != sd_uuid})

    # -- answers --------------------------------------------------------

    def info(self, sp_uuid: object) -> dict:
        """getStoragePoolInfo: {info, dominfo} with VDSM's keys."""
        pool = self.connected(sp_uuid)
        master = self._domains.get(pool.master)
        master_info = self._domains.info(master)
        iso = self.iso_domain(pool)
        isoprefix = os.path.join(iso.path, ISO_FOLDER) if iso is not None else ""
        dominfo = {}
        for sd, status in sorted(pool.domains.items()):
            entry: dict = {"status": status}
            if status == ACTIVE:
                try:
                    stats = self._domains.stats(self._domains.get(sd))
                    entry.update(disktotal=stats["disktotal"], diskfree=stats["diskfree"], alerts=[])
                except HsmError as e:  # an unreachable domain shows its status only, as in VDSM
                    log.warning("Pool %s: no stats for domain %s: %s", pool.uuid, sd, e)
            dominfo[sd] = entry
        spm = self._spm_status(pool)
        info = {"type": master_info["type"], "name": pool.name,
                "domains": ",".join(f"{sd}:{status}" for sd, status in sorted(pool.domains.items())),
                "master_uuid": pool.master, "master_ver": pool.masterVersion, "lver": spm["spmLver"],
                "spm_id": spm["spmId"], "isoprefix": isoprefix, "pool_status": "connected",
                "version": master_info["version"]}
        return {"info": info, "dominfo": dominfo}

    def spm_status(self, sp_uuid: object) -> dict:
        """getSpmStatus and fenceSpmStorage: {spmStatus, spmLver, spmId} (see the module's text)."""
        return self._spm_status(self.connected(sp_uuid))

    def _spm_status(self, pool: Pool) -> dict:
        repo = self._domains.get(pool.master)
        if not is_shared(repo):
            return {"spmStatus": SPM, "spmLver": pool.lver, "spmId": pool.hostId}
        assert repo.lockspace is not None
        own = repo.lockspace.host_id
        if self._is_spm(pool, repo):
            status, holder = SPM, own
        else:  # the holder as the monitor saw it last (no verb waits on sanlock); this host's own commits are no SPM
            status, holder = CONTEND if self._contending[pool.uuid] else FREE, repo.lockspace.state()["writer"]
            holder = -1 if holder == own else holder
        return {"spmStatus": status, "spmLver": lease_version(repo), "spmId": holder or -1}

    def domain_info(self, sd_uuid: str) -> dict:
        """The pool keys of getStorageDomainInfo: role, pool, and the master's lver, spm_id and master_ver."""
        pools = self.of_domain(sd_uuid)
        info = {"role": "Regular", "pool": [pool.uuid for pool in pools], "lver": -1, "spm_id": -1, "master_ver": 0}
        for pool in pools:
            if pool.master == sd_uuid:
                info["role"] = "Master"
                if pool.connected:
                    spm = self._spm_status(pool)
                    info.update(lver=spm["spmLver"], spm_id=spm["spmId"], master_ver=pool.masterVersion)
        return info

    # -- what the pool holds --------------------------------------------

    def active_domains(self, pool: Pool) -> list[FileRepository]:
        """The pool's active domains that can be reached now; the others are logged and passed over, as in VDSM."""
        found = []
        for sd, status in sorted(pool.domains.items()):
            if status != ACTIVE:
                continue
            try:
                found.append(self._domains.get(sd))
            except HsmError as e:
                log.warning("Pool %s: domain %s cannot be reached: %s", pool.uuid, sd, e)
        return found

    def iso_domain(self, pool: Pool) -> FileRepository | None:
        """The pool's active ISO domain, if it has one."""
        return next((repo for repo in self.active_domains(pool) if domain_class(repo) == "Iso"), None)

    def iso_list(self, sp_uuid: object, extension: str) -> list[str]:
        """getIsoList: the files `*.<extension>` (any case) of the pool's ISO domain that may be read; 314 without
        an active ISO domain (getFloppyList too: VDSM's floppy list was the ISO list's)."""
        pool = self.connected(sp_uuid)
        repo = self.iso_domain(pool)
        if repo is None:
            raise GetIsoListError(f"pool {pool.uuid} has no active ISO domain")
        files = self._domains.files(repo, f"*.{extension}", case_sensitive=False)
        return sorted(name for name, entry in files.items() if entry["status"] == 0)

    def image_domains(self, sp_uuid: object, img_uuid: str, data_only: bool) -> list[str]:
        """getImageDomainsList: the active domains of the pool (Data ones only, with data_only) holding the image."""
        pool = self.connected(sp_uuid)
        return [repo.uuid for repo in self.active_domains(pool)
                if (not data_only or domain_class(repo) == "Data") and holds_image(repo, img_uuid)]

    # -- the OVF store --------------------------------------------------

    def ovf_domain(self, sp_uuid: object, sd_uuid: object) -> FileRepository:
        """Where updateVM and its kin work: the master domain when sdUUID is left out ('' or blank), else an
        active domain of the pool that is its master or an export (Backup) domain, as VDSM's master trees were."""
        pool = self.connected(sp_uuid)
        if sd_uuid in (None, "", BLANK_UUID):
            return self._domains.get(pool.master)
        pool, sd = self._member(pool.uuid, sd_uuid)
        repo = self._domains.get(sd)
        if pool.domains[sd] != ACTIVE:
            raise StorageDomainNotActive(f"{sd} in pool {pool.uuid}")
        if sd != pool.master and domain_class(repo) != "Backup":
            raise StorageDomainTypeNotBackup(f"{sd} is a {domain_class(repo)} domain, not the master")
        return repo

    def store_ovfs(self, sp_uuid: object, sd_uuid: object, ovfs: dict[str, bytes]) -> None:
        """updateVM: under the pool lock, so that the master role does not move in between."""
        with self._lock:
            ovf.write(self.ovf_domain(sp_uuid, sd_uuid), ovfs)

    def remove_ovf(self, sp_uuid: object, sd_uuid: object, vm: str) -> None:
        with self._lock:
            ovf.remove(self.ovf_domain(sp_uuid, sd_uuid), vm)

    # -- upgrade and rescue ---------------------------------------------

    def upgrade(self, sp_uuid: object, target: int) -> None:
        """upgradeStoragePool: the master, then every active Data domain, labelled with the target version.

        hsm keeps one repository format whatever VDSM's version label says, so the label is all there is to
        convert. Refused as VDSM did: 394 for a version it did not know, 395 when the master is already past it.
        A domain past the target is left as it is (VDSM logged it); one out of reach keeps its old label.
        """
        with self._lock:
            pool = self.connected(sp_uuid)
            if target not in VERSIONS:
                raise UnsupportedDomainVersion(f"targetDomVersion={target}: expected one of {VERSIONS}")
            master = self._domains.get(pool.master)
            if domain_version(master) > target:
                raise CurrentVersionTooAdvancedError(f"master domain {master.uuid} is at version "
                                                     f"{domain_version(master)}, past {target}")
            others = [repo for repo in self.active_domains(pool)
                      if repo.uuid != master.uuid and domain_class(repo) == "Data"]
            for repo in [master, *others]:
                if domain_version(repo) < target:
                    repo.relabel(domainVersion=target)
                    log.info("Pool %s: domain %s upgraded to version %d", pool.uuid, repo.uuid, target)
                elif domain_version(repo) > target:
                    log.error("Pool %s: domain %s is at version %d, past its master's %d", pool.uuid, repo.uuid,
                              domain_version(repo), target)

    def reconstruct(self, sp_uuid: object, name: object, master: object, dom_dict: object, version: int) -> None:
        """reconstructMaster: the pool's record made again from the engine's view, with `master` as its master.

        Allowed only while the pool is not connected (325), as in VDSM; the pool stays disconnected and has
        no SPM (lver and spm_id -1) until connectStoragePool. The new master is taken out of another pool that
        is not connected, as VDSM detached it; any other domain of another pool answers 380.
        """
        sp_uuid = check_uuid("spUUID", sp_uuid)
        with self._lock:
            known = self._pools.get(sp_uuid)
            if known is not None and known.connected:
                raise StoragePoolConnected(sp_uuid)
            master = check_uuid("masterDom", master)
            self._domains.validate(self._domains.get(master))
            domains = reconstruct_domains(dom_dict)
            if master not in domains:
                raise InvalidParameterException(f"masterDom={master}: not in domDict")
            name = check_name(name)
            domains[master] = ACTIVE  # the master is always active in this view
            elsewhere = {sd: other for sd in domains for other in self.of_domain(sd) if other.uuid != sp_uuid}
            for sd, other in elsewhere.items():
                if sd != master or other.connected:
                    raise StorageDomainAlreadyAttached(f"{sd} is in pool {other.uuid}")
            if master in elsewhere:
                self._take_out(elsewhere[master], master)
            self._change(Pool(sp_uuid, name, master, version, domains), sp_uuid)
        log.info("Reconstructed storage pool %s (%s), master %s version %d, domains %s", sp_uuid, name, master,
                 version, sorted(domains))
