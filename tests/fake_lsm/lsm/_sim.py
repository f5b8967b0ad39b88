"""The simulated array behind the fake's `sim://` URIs, modelled on libstoragemgmt's sim plugin.

As in the sim plugin, all state lives in one file (`sim://?statefile=<file>`, else $LSM_SIM_DATA,
else <tmp>/lsm_sim_data), so every connection, in any process, sees the same array, and jobs
outlive the connection that started them. The file is JSON (the plugin's is SQLite), changed under
an flock of `<file>.lock` and replaced atomically. A job's progress comes from the time since it
started over its duration, $LSM_SIM_TIME seconds (default 1) read when it starts. Volume names are
unique on the array (NAME_CONFLICT), sizes round up to 512-byte blocks, and the pools are the
plugin's: 'Pool 1' (no volume grow or shrink), its 512 GiB sub pool 'Pool 2', 'Pool 3' (512 GiB)
and 'lsm_test_aggr' (2 EiB). Volumes and file systems take their size from their pool's free space.

File systems have ids like the plugin's (FS_ID_00001) and, unlike the plugin's, contents: each is
a local folder (its `root`, standing for the array's export of it, which a host mounts), given by
the test-only `add_filesystem`. fs_file_clone copies a file inside that folder at once, keeping its
holes, and records it in the state's `file_clones`, so tests can see the array was asked.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from lsm._data import Capabilities, ErrorNumber, JobStatus, LsmError, Pool

SYS_ID = "sim-01"
SYS_NAME = "LSM simulated storage plug-in"
BLK_SIZE = 512
JOB_DEFAULT_DURATION = 1
_GIB, _TIB, _EIB = 2**30, 2**40, 2**60
_VOLUME_POOL = Pool.ELEMENT_TYPE_FS | Pool.ELEMENT_TYPE_VOLUME | Pool.ELEMENT_TYPE_DELTA
# id: (name, total bytes, bytes its sub pools take, element types, unsupported actions)
POOLS = {
    "POOL_ID_00001": ("Pool 1", 2 * _TIB, 512 * _GIB,
                      _VOLUME_POOL | Pool.ELEMENT_TYPE_POOL | Pool.ELEMENT_TYPE_SYS_RESERVED,
                      Pool.UNSUPPORTED_VOLUME_GROW | Pool.UNSUPPORTED_VOLUME_SHRINK),
    "POOL_ID_00002": ("Pool 2(sub pool of Pool 1)", 512 * _GIB, 0, _VOLUME_POOL, 0),
    "POOL_ID_00003": ("Pool 3", 512 * _GIB, 0, _VOLUME_POOL, 0),
    "POOL_ID_00004": ("lsm_test_aggr", 2 * _EIB, 0, _VOLUME_POOL, 0),
}
# What the sim plugin leaves out of its all-on capability table.
_UNSUPPORTED = (Capabilities.POOLS_QUICK_SEARCH, Capabilities.VOLUMES_QUICK_SEARCH, Capabilities.DISKS_QUICK_SEARCH,
                Capabilities.FS_QUICK_SEARCH, Capabilities.ACCESS_GROUPS_QUICK_SEARCH,
                Capabilities.NFS_EXPORTS_QUICK_SEARCH, Capabilities.TARGET_PORTS_QUICK_SEARCH)


def default_statefile() -> str:
    return os.environ.get("LSM_SIM_DATA", os.path.join(tempfile.gettempdir(), "lsm_sim_data"))


def _blocks(size: int) -> int:
    return (size + BLK_SIZE - 1) // BLK_SIZE


class SimArray:
    """The array's state file, and every change to it as the sim plugin makes it."""

    def __init__(self, statefile: str) -> None:
        self.statefile = statefile
        with self.state(write=True):
            pass  # the first connection makes the array

    @contextmanager
    def state(self, write: bool = False) -> Iterator[dict]:
        with open(self.statefile + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.statefile) as f:
                    data = json.load(f)
            except FileNotFoundError:
                data = {"volumes": {}, "filesystems": {}, "file_clones": [], "jobs": {},
                        "last_id": {"volume": 0, "fs": 0, "job": 0}, "capabilities_off": []}
            yield data
            if write:
                temporary = f"{self.statefile}.{os.getpid()}.tmp"
                with open(temporary, "w") as f:
                    json.dump(data, f, indent=1)
                os.replace(temporary, self.statefile)

    @staticmethod
    def _next_id(data: dict, kind: str, prefix: str) -> str:
        data["last_id"][kind] += 1
        return f"{prefix}_{data['last_id'][kind]:05d}"

    @staticmethod
    def free_space(data: dict, pool_id: str) -> int:
        _, total, sub_pools, _, _ = POOLS[pool_id]
        taking = [*data["volumes"].values(), *data["filesystems"].values()]
        used = sum(item["blocks"] * BLK_SIZE for item in taking if item["pool_id"] == pool_id)
        return total - sub_pools - used

    @staticmethod
    def volume(data: dict, volume_id: str) -> dict:
        if volume_id not in data["volumes"]:
            raise LsmError(ErrorNumber.NOT_FOUND_VOLUME, "Volume not found")
        return data["volumes"][volume_id]

    @staticmethod
    def fs(data: dict, fs_id: str) -> dict:
        if fs_id not in data["filesystems"]:
            raise LsmError(ErrorNumber.NOT_FOUND_FS, "File system not found")
        return data["filesystems"][fs_id]

    def capabilities_off(self) -> list[int]:
        with self.state() as data:
            return list(data["capabilities_off"]) + list(_UNSUPPORTED)

    def _check_room(self, data: dict, pool_id: str, size: int, name: str, kind: str, noun: str) -> None:
        """What the sim plugin checks before it makes a volume or a file system (`kind`: the state's table)."""
        if pool_id not in POOLS:
            raise LsmError(ErrorNumber.NOT_FOUND_POOL, "Pool not found")
        if self.free_space(data, pool_id) < _blocks(size) * BLK_SIZE:
            raise LsmError(ErrorNumber.NOT_ENOUGH_SPACE, "Insufficient space in pool")
        if any(item["name"] == name for item in data[kind].values()):
            raise LsmError(ErrorNumber.NAME_CONFLICT, f"Name '{name}' is already in use by other {noun}")

    def volume_create(self, pool_id: str, name: str, size: int, provisioning: int) -> tuple[str | None, str]:
        """(job id, or None when $LSM_SIM_TIME is 0, the new volume's id)."""
        with self.state(write=True) as data:
            self._check_room(data, pool_id, size, name, "volumes", "volume")
            volume_id = self._next_id(data, "volume", "VOL_ID")
            data["volumes"][volume_id] = {"name": name, "pool_id": pool_id, "blocks": _blocks(size),
                                          "vpd83": "6" + uuid.uuid4().hex[:31], "provisioning": provisioning}
            return self._job(data, volume_id), volume_id

    def volume_resize(self, volume_id: str, size: int) -> tuple[str | None, str]:
        with self.state(write=True) as data:
            volume = self.volume(data, volume_id)
            grow = (_blocks(size) - volume["blocks"]) * BLK_SIZE
            unsupported = POOLS[volume["pool_id"]][4]
            if grow == 0:
                raise LsmError(ErrorNumber.NO_STATE_CHANGE, "Volume size is identical to requested")
            if grow > 0 and unsupported & Pool.UNSUPPORTED_VOLUME_GROW:
                raise LsmError(ErrorNumber.NO_SUPPORT, "Requested pool does not allow volume size grow")
            if grow < 0 and unsupported & Pool.UNSUPPORTED_VOLUME_SHRINK:
                raise LsmError(ErrorNumber.NO_SUPPORT, "Requested pool does not allow volume size shrink")
            if grow > self.free_space(data, volume["pool_id"]):
                raise LsmError(ErrorNumber.NOT_ENOUGH_SPACE, "Insufficient space in pool")
            volume["blocks"] = _blocks(size)
            return self._job(data, volume_id), volume_id

    def volume_delete(self, volume_id: str) -> str | None:
        with self.state(write=True) as data:
            self.volume(data, volume_id)
            del data["volumes"][volume_id]
            return self._job(data, None)

    def fs_create(self, pool_id: str, name: str, size: int, root: str) -> str:
        """The new file system's id: the sim plugin's fs_create at once, its contents the folder `root`."""
        with self.state(write=True) as data:
            self._check_room(data, pool_id, size, name, "filesystems", "fs")
            fs_id = self._next_id(data, "fs", "FS_ID")
            data["filesystems"][fs_id] = {"name": name, "pool_id": pool_id, "blocks": _blocks(size),
                                          "root": os.path.abspath(root)}
            return fs_id

    def fs_file_clone(self, fs_id: str, src: str, dst: str) -> str | None:
        """The job id (None when $LSM_SIM_TIME is 0) of copying file `src` to `dst` in the file system.

        The sim plugin only checks that the file system exists; the fake also refuses what an array
        would (INVALID_ARGUMENT): a name that is empty, absolute or has a `..`, a source that is not
        a regular file, a destination that exists or whose folder does not (lsm: every folder of
        the destination's path must exist). The copy is made now, holes kept, so the job's result
        is only its completion.
        """
        with self.state(write=True) as data:
            root = self.fs(data, fs_id)["root"]
            source, dest = _inside(root, src, "Source"), _inside(root, dst, "Destination")
            if not stat.S_ISREG(_lstat_mode(source)):
                raise LsmError(ErrorNumber.INVALID_ARGUMENT, f"Source '{src}' is not a regular file")
            if not os.path.isdir(os.path.dirname(dest)):
                raise LsmError(ErrorNumber.INVALID_ARGUMENT, f"Destination folder of '{dst}' does not exist")
            if os.path.lexists(dest):
                raise LsmError(ErrorNumber.INVALID_ARGUMENT, f"Destination '{dst}' exists")
            _sparse_copy(source, dest)
            data["file_clones"].append({"fs_id": fs_id, "src": src, "dst": dst})
            return self._job(data, None)

    def _job(self, data: dict, volume_id: str | None) -> str | None:
        duration = float(os.environ.get("LSM_SIM_TIME", JOB_DEFAULT_DURATION))
        if duration == 0:
            return None
        job_id = self._next_id(data, "job", "JOB_ID")
        data["jobs"][job_id] = {"started": time.time(), "duration": duration, "volume_id": volume_id}
        return job_id

    def job_status(self, job_id: str) -> tuple[int, int, dict | None]:
        """(status, percent, the job's volume record with its id, or None)."""
        with self.state() as data:
            if job_id not in data["jobs"]:
                raise LsmError(ErrorNumber.NOT_FOUND_JOB, "Job not found")
            job = data["jobs"][job_id]
            percent = min(100, max(0, int((time.time() - job["started"]) / job["duration"] * 100)))
            if percent < 100:
                return JobStatus.INPROGRESS, percent, None
            if job["volume_id"] is None:
                return JobStatus.COMPLETE, 100, None
            return JobStatus.COMPLETE, 100, {"id": job["volume_id"], **self.volume(data, job["volume_id"])}

    def job_free(self, job_id: str) -> None:
        with self.state(write=True) as data:
            if data["jobs"].pop(job_id, None) is None:
                raise LsmError(ErrorNumber.NOT_FOUND_JOB, "Job not found")


def _inside(root: str, name: str, role: str) -> str:
    """The path of file `name` of the file system at `root`: refused unless relative and under it."""
    if not name:
        raise LsmError(ErrorNumber.INVALID_ARGUMENT, f"{role} file name is empty")
    if posixpath.isabs(name) or ".." in name.split("/"):
        raise LsmError(ErrorNumber.INVALID_ARGUMENT,
                       f"{role} file name '{name}' must be relative to the file system's root, without '..'")
    return os.path.join(root, name)


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def _sparse_copy(source: str, dest: str) -> None:
    """Copy as an array's clone would: shared extents where the file system can, holes kept."""
    done = subprocess.run(["cp", "--sparse=always", "--reflink=auto", "--", source, dest],
                          capture_output=True, text=True)
    if done.returncode:
        raise LsmError(ErrorNumber.PLUGIN_BUG, f"Copy failed: {done.stderr.strip()}")


def set_capabilities_off(statefile: str, capabilities: list[int]) -> None:
    """Not lsm's: lets a test take capabilities away from a simulated array (the sim plugin has them all)."""
    array = SimArray(statefile)
    with array.state(write=True) as data:
        data["capabilities_off"] = list(capabilities)


def add_filesystem(statefile: str, name: str, root: str, pool_id: str = "POOL_ID_00003", size: int = 64 * _GIB) -> str:
    """Not lsm's: lets a test give a simulated array a file system whose contents are the local folder
    `root` (the array's export of it, as a host mounts it); answers its id."""
    return SimArray(statefile).fs_create(pool_id, name, size, root)
