"""lsm.Client as libstoragemgmt's Python binding documents it, connected to the simulated array.

Only the `sim` plugin exists here; any other scheme answers PLUGIN_NOT_EXIST, as lsm.Client does
when lsmd has no socket for the plugin. Calls after close() answer TRANSPORT_COMMUNICATION.
"""

from __future__ import annotations

import os
import urllib.parse

from lsm._data import Capabilities, ErrorNumber, FileSystem, LsmError, Pool, System, Volume
from lsm._sim import BLK_SIZE, POOLS, SYS_ID, SYS_NAME, SimArray, default_statefile

UDS_PATH = "/var/run/lsm/ipc"  # where lsmd keeps its plugins' sockets


def _search(found: list, keys: tuple[str, ...], search_key: str | None, search_value: object) -> list:
    if search_key is None:
        return found
    if search_key not in keys:
        raise LsmError(ErrorNumber.UNSUPPORTED_SEARCH_KEY, f"Unsupported search_key: '{search_key}'")
    return [item for item in found if getattr(item, search_key) == search_value]


class Client:
    FLAG_RSVD = 0

    def __init__(self, uri: str, plain_text_password: str | None = None, timeout_ms: int = 30000,
                 flags: int = FLAG_RSVD) -> None:
        parts = urllib.parse.urlsplit(uri)
        plugin = parts.scheme.split("+")[0]
        if plugin != "sim":
            raise LsmError(ErrorNumber.PLUGIN_NOT_EXIST, f"Plug-in {os.path.join(UDS_PATH, plugin)} not found!")
        parameters = dict(part.split("=", 1) for part in parts.query.split("&") if "=" in part)
        self._array: SimArray | None = SimArray(parameters.get("statefile") or default_statefile())
        self._timeout = timeout_ms

    def _sim(self) -> SimArray:
        if self._array is None:
            raise LsmError(ErrorNumber.TRANSPORT_COMMUNICATION, "The connection is closed")
        return self._array

    def close(self, flags: int = FLAG_RSVD) -> None:
        self._sim()
        self._array = None

    plugin_unregister = close

    def plugin_info(self, flags: int = FLAG_RSVD) -> tuple[str, str]:
        self._sim()
        return "Storage simulator (hsm's test fake)", "fake"

    def time_out_set(self, ms: int, flags: int = FLAG_RSVD) -> None:
        self._sim()
        self._timeout = ms

    def time_out_get(self, flags: int = FLAG_RSVD) -> int:
        self._sim()
        return self._timeout

    def systems(self, flags: int = FLAG_RSVD) -> list[System]:
        self._sim()
        return [System(SYS_ID, SYS_NAME, System.STATUS_OK, "", _fw_version="fake", _mode=System.MODE_HARDWARE_RAID)]

    def capabilities(self, system: System, flags: int = FLAG_RSVD) -> Capabilities:
        if system.id != SYS_ID:
            raise LsmError(ErrorNumber.NOT_FOUND_SYSTEM, "System not found")
        found = Capabilities()
        found.enable_all()
        for capability in self._sim().capabilities_off():
            found.set(capability, Capabilities.UNSUPPORTED)
        return found

    def pools(self, search_key: str | None = None, search_value: object = None, flags: int = FLAG_RSVD) -> list[Pool]:
        with self._sim().state() as data:
            found = [Pool(pool_id, name, types, unsupported, total, SimArray.free_space(data, pool_id),
                          Pool.STATUS_OK, "", SYS_ID)
                     for pool_id, (name, total, _, types, unsupported) in POOLS.items()]
        return _search(found, ("id", "system_id"), search_key, search_value)

    @staticmethod
    def _volume(volume_id: str, record: dict) -> Volume:
        return Volume(volume_id, record["name"], record["vpd83"], BLK_SIZE, record["blocks"],
                      Volume.ADMIN_STATE_ENABLED, SYS_ID, record["pool_id"])

    def volumes(self, search_key: str | None = None, search_value: object = None,
                flags: int = FLAG_RSVD) -> list[Volume]:
        with self._sim().state() as data:
            found = [self._volume(volume_id, record) for volume_id, record in data["volumes"].items()]
        return _search(found, ("id", "system_id", "pool_id"), search_key, search_value)

    def _now_or_job(self, job_id: str | None, volume_id: str) -> tuple[str | None, Volume | None]:
        """(job id, None), or (None, the volume) when the array did it at once."""
        if job_id is not None:
            return job_id, None
        with self._sim().state() as data:
            return None, self._volume(volume_id, SimArray.volume(data, volume_id))

    def volume_create(self, pool: Pool, volume_name: str, size_bytes: int, provisioning: int,
                      flags: int = FLAG_RSVD) -> tuple[str | None, Volume | None]:
        return self._now_or_job(*self._sim().volume_create(pool.id, volume_name, size_bytes, provisioning))

    def volume_resize(self, volume: Volume, new_size_bytes: int,
                      flags: int = FLAG_RSVD) -> tuple[str | None, Volume | None]:
        return self._now_or_job(*self._sim().volume_resize(volume.id, new_size_bytes))

    def volume_delete(self, volume: Volume, flags: int = FLAG_RSVD) -> str | None:
        return self._sim().volume_delete(volume.id)

    def fs(self, search_key: str | None = None, search_value: object = None,
           flags: int = FLAG_RSVD) -> list[FileSystem]:
        """The file systems; as in the sim plugin, free space is their whole size."""
        with self._sim().state() as data:
            found = [FileSystem(fs_id, record["name"], record["blocks"] * BLK_SIZE, record["blocks"] * BLK_SIZE,
                                record["pool_id"], SYS_ID) for fs_id, record in data["filesystems"].items()]
        return _search(found, ("id", "system_id", "pool_id"), search_key, search_value)

    def fs_file_clone(self, fs: FileSystem, src_file_name: str, dest_file_name: str, snapshot: object = None,
                      flags: int = FLAG_RSVD) -> str | None:
        """A job id, or None when done at once; the fake has no snapshots, so none is ever found."""
        if snapshot is not None:
            raise LsmError(ErrorNumber.NOT_FOUND_FS_SS, "File system snapshot not found")
        return self._sim().fs_file_clone(fs.id, src_file_name, dest_file_name)

    def job_status(self, job_id: str, flags: int = FLAG_RSVD) -> tuple[int, int, Volume | None]:
        status, percent, record = self._sim().job_status(job_id)
        return status, percent, None if record is None else self._volume(record.pop("id"), record)

    def job_free(self, job_id: str, flags: int = FLAG_RSVD) -> None:
        self._sim().job_free(job_id)
