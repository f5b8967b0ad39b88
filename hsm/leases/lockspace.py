"""sanlock for one shared repository: its lockspace (the hosts' ids) and its leases area.

The metadata-writer lease itself is taken through the repository's I/O helper (hsm.leases.writer). A
repository's lockspace is named by its uuid; its ids area holds one 512-byte delta lease per host id
(1 MiB: 2,000 hosts), and its leases area the metadata-writer lease at LEASE_OFFSET (VDSM's SDM lease
place). The areas are files of a shared file repository or LVs of a block one (hsm.storage.block).
Joining is slow (sanlock waits out other hosts' io timeouts: about 3 s at io_timeout 1, 20 s at 10),
so join() only asks, and state() says how far it got.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

try:
    import sanlock
except ImportError:  # Debian's python3-sanlock, linked into the venv by tools/bootstrap.sh
    sanlock = None

log = logging.getLogger("hsm.leases")

IDS_SIZE = 1 << 20       # 2,000 hosts of 512 bytes
LEASE_OFFSET = 1 << 20   # the metadata-writer lease: VDSM's SDM lease sat at 1 MiB of the leases area
LEASES_SIZE = 2 << 20
WRITER = b"SDM"          # the metadata-writer lease's resource name
WATCHDOG_FIRE = 60       # seconds sanlock adds to 8 io timeouts before it calls a silent host dead
DEFAULT_IO_TIMEOUT = 10  # the daemon's own io timeout (a join with 0 uses it)
# sanlock's answers to an acquire (sanlock_rv.h; negative on the wire): not in the lockspace (LOCKSPACE),
# the owner's host id could not be read (IDDISK), the lease is held (IDLIVE, OWNED), another host won this
# ballot (OTHER)
SANLK_ACQUIRE_LOCKSPACE, SANLK_ACQUIRE_IDDISK, SANLK_ACQUIRE_IDLIVE = 241, 242, 243
SANLK_ACQUIRE_OWNED, SANLK_ACQUIRE_OTHER = 244, 245
HELD_ELSEWHERE = {SANLK_ACQUIRE_IDLIVE, SANLK_ACQUIRE_OWNED, SANLK_ACQUIRE_OTHER}
# reading a lease where there is none (no magic), or another lockspace's or resource's
SANLK_LEADER_MAGIC, SANLK_LEADER_LOCKSPACE, SANLK_LEADER_RESOURCE = 223, 226, 227
NO_LEASE = {SANLK_LEADER_MAGIC, SANLK_LEADER_LOCKSPACE, SANLK_LEADER_RESOURCE}


def host_dead_seconds(io_timeout: int) -> int:
    """How long sanlock may take to call a silent host dead, and so to hand over the leases it held."""
    return 8 * (io_timeout or DEFAULT_IO_TIMEOUT) + WATCHDOG_FIRE


@dataclass(frozen=True)
class Paths:
    ids: str
    leases: str


def lease_paths(repo_path: str) -> Paths:
    """Where a shared file repository keeps its sanlock areas."""
    return Paths(os.path.join(repo_path, "leases", "ids"), os.path.join(repo_path, "leases", "leases"))


class Lockspace:
    """The lockspace of one repository, as this host sees it."""

    def __init__(self, repo_uuid: str, paths: Paths, host_id: int) -> None:
        self.name = repo_uuid.encode()
        self.paths = paths
        self.host_id = host_id
        self.io_timeout = 0  # what join() asked for
        self._wanted = False  # joined, or joining, until leave()
        self._state = {"joined": False, "hostId": host_id, "writer": 0, "error": "not joined yet"}

    def state(self) -> dict:
        """What refresh_state() saw last: {joined, hostId, writer (the holder's host id, 0: none), error}."""
        return dict(self._state)

    def refresh_state(self) -> dict:
        """Ask the daemon (the repository's monitor does, so that no verb waits on it)."""
        try:
            joined = self.joined()
            if not joined and self._wanted:  # joining, or lost (its daemon restarted, or its storage): ask again
                if self._state["joined"]:
                    log.warning("Lockspace %s was lost: joining again as host %d", self.name.decode(), self.host_id)
                self.join(self.io_timeout)
            self._state = {"joined": joined, "hostId": self.host_id, "writer": self.writer() if joined else 0,
                           "error": ""}
        except Exception as e:  # the daemon gone, or the storage behind it
            self._state = {**self._state, "joined": False, "error": str(e)}
        return self.state()

    def initialize(self, io_timeout: int) -> None:
        """Write an empty lockspace and the metadata-writer lease (a new repository)."""
        sanlock.write_lockspace(self.name, self.paths.ids, iotimeout=io_timeout)
        sanlock.write_resource(self.name, WRITER, [(self.paths.leases, LEASE_OFFSET)])

    def join(self, io_timeout: int = 0) -> None:
        """Ask the daemon to join with our host id; returns at once (joined() tells when it is done). Joined
        or joining already (an hsmd restarted while its daemon kept the lockspace) is no error. `io_timeout`
        (0: the daemon's own) also sets how long others wait before they take this host for dead: sanlock's
        host-dead time is 8 io timeouts plus its watchdog's 60 s."""
        self.io_timeout, self._wanted = io_timeout, True
        try:
            sanlock.add_lockspace(self.name, self.host_id, self.paths.ids, iotimeout=io_timeout, wait=False)
        except sanlock.SanlockException as e:
            if abs(e.errno or 0) not in (errno.EEXIST, errno.EINPROGRESS, errno.EBUSY, errno.EAGAIN):
                raise
            if abs(e.errno or 0) == errno.EEXIST:
                self._leave_elsewhere()

    def _leave_elsewhere(self) -> None:
        """The daemon holds this lockspace with our host id on another path (a block repository's ids LV that
        a loop device of an earlier connect mapped): that stale registration is left, so the next join takes
        this path."""
        for space in sanlock.get_lockspaces():
            if space["lockspace"] == self.name and space["host_id"] == self.host_id and space["path"] != self.paths.ids:
                log.warning("Lockspace %s is joined through %s, not %s: leaving it there to join again",
                            self.name.decode(), space["path"], self.paths.ids)
                sanlock.rem_lockspace(self.name, self.host_id, space["path"], wait=False)

    def joined(self) -> bool:
        """True once joined; False while joining or not joined."""
        return bool(sanlock.inq_lockspace(self.name, self.host_id, self.paths.ids, wait=False))

    def leave(self, wait: bool = False) -> None:
        """Ask the daemon to leave (`wait`: and return once it has stopped using the ids area)."""
        self._wanted = False
        sanlock.rem_lockspace(self.name, self.host_id, self.paths.ids, wait=wait)

    def writer(self) -> int:
        """The host id holding the metadata-writer lease, or 0."""
        owners = sanlock.read_resource_owners(self.name, WRITER, [(self.paths.leases, LEASE_OFFSET)])
        return owners[0]["host_id"] if owners else 0

    def host_alive(self, host_id: int) -> bool:
        """Whether sanlock takes host `host_id` for alive in this lockspace: renewing its id, or not known
        yet (this host joined moments ago); False once it is dead or has left."""
        if host_id == self.host_id:
            return True
        try:
            hosts = sanlock.get_hosts(self.name, host_id)
        except sanlock.SanlockException as e:
            if e.errno == errno.EAGAIN:  # just joined: sanlock does not know yet
                return True
            raise
        return bool(hosts) and hosts[0]["flags"] not in (sanlock.HOST_DEAD, sanlock.HOST_FREE)
