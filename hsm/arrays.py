"""Storage arrays through libstoragemgmt: the arrays hsm.conf `[offload] arrays` names.

`lsm`, libstoragemgmt's Python binding, is imported the first time an array is used (a verb, or
the background read of capabilities), never on import: without it every call here raises
LsmUnavailable (5016), except `has`, which never raises. An array's id is its URI exactly as
configured (a URI never carries a password: that is `array_password`). Its systems and
capabilities are read in the background at start, again every `capabilities_refresh` seconds, and
on demand (`refresh`); `on_read` callbacks hear of each read, and `has` answers from the last one
without asking the array. Besides volumes (provision, resize, delete), an array's file systems are
listed, and a file in one is cloned by the array itself (`file_clone`), which hsm's storage code
uses to offload image copies. A call the array answers with a job id is waited for, job_status
polled, up to `job_timeout` seconds; past that StorageTimeout (5005) names the job, which goes on
on the array. Every call opens its own lsm connection and closes it: lsm's connection is not safe
to share between threads, and jobs outlive it. lsm's errors become hsm's (5018-5025) with lsm's
error name, number and message kept.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hsm.errors import (
    ArrayDoesNotExist,
    ArrayFsDoesNotExist,
    ArrayNameConflict,
    ArrayNoSpace,
    ArrayNoSupport,
    ArrayPoolDoesNotExist,
    ArrayRequestFailed,
    ArrayUnreachable,
    ArrayVolumeDoesNotExist,
    HsmError,
    LsmUnavailable,
    StorageTimeout,
)
from hsm.sizes import format_size

log = logging.getLogger("hsm.arrays")

# lsm's capabilities (lsm.Capabilities names) that volume provisioning and offload rely on.
CAPABILITIES = (
    "VOLUMES", "VOLUME_CREATE", "VOLUME_RESIZE", "VOLUME_DELETE", "VOLUME_THIN",
    "VOLUME_REPLICATE", "VOLUME_REPLICATE_CLONE", "VOLUME_REPLICATE_COPY",
    "VOLUME_COPY_RANGE", "VOLUME_COPY_RANGE_CLONE", "VOLUME_COPY_RANGE_COPY",
    "VOLUME_CHILD_DEPENDENCY", "VOLUME_CHILD_DEPENDENCY_RM",
    "VOLUME_MASK", "VOLUME_UNMASK", "ACCESS_GROUPS", "FS", "FILE_CLONE",
)
# provisionArrayVolume's options.provisioning, and the lsm.Volume constant each means.
PROVISIONING = {"default": "PROVISION_DEFAULT", "thin": "PROVISION_THIN", "full": "PROVISION_FULL"}
CONNECT_TIMEOUT_MS = 30000  # lsm.Client's own default

# lsm.ErrorNumber names by the hsm error each becomes; any other is ArrayRequestFailed.
_ERRORS: dict[str, type[HsmError]] = {
    "NAME_CONFLICT": ArrayNameConflict,
    "NOT_FOUND_POOL": ArrayPoolDoesNotExist,
    "NOT_FOUND_VOLUME": ArrayVolumeDoesNotExist,
    "NOT_FOUND_FS": ArrayFsDoesNotExist,
    "NOT_ENOUGH_SPACE": ArrayNoSpace,
    **dict.fromkeys(("NO_SUPPORT", "NO_SUPPORT_ONLINE_CHANGE", "NO_SUPPORT_OFFLINE_CHANGE", "NOT_LICENSED"),
                    ArrayNoSupport),
    **dict.fromkeys(("TIMEOUT", "DAEMON_NOT_RUNNING", "PERMISSION_DENIED", "NETWORK_CONNREFUSED",
                     "NETWORK_HOSTDOWN", "NETWORK_ERROR", "PLUGIN_AUTH_FAILED", "PLUGIN_IPC_FAIL",
                     "PLUGIN_SOCKET_PERMISSION", "PLUGIN_NOT_EXIST", "TRANSPORT_COMMUNICATION"), ArrayUnreachable),
}


def import_lsm() -> Any:
    """libstoragemgmt's `lsm` module, or LsmUnavailable saying why not."""
    try:
        module = importlib.import_module("lsm")
    except ImportError as e:
        raise LsmUnavailable(f"{e} (libstoragemgmt's Python binding is not installed)") from None
    if not all(hasattr(module, name) for name in ("Client", "LsmError", "ErrorNumber", "Capabilities")):
        raise LsmUnavailable(f"the lsm module at {getattr(module, '__file__', '?')} is not libstoragemgmt's")
    return module


# on_read's callbacks: (array id, {capability name: bool}, when read).
ReadCallback = Callable[[str, dict[str, bool], float], None]


def _when(moment: float) -> str:
    return f"{moment:.3f}" if moment else ""


@dataclass
class _Array:
    uri: str
    systems: list[dict] = field(default_factory=list)
    capabilities: dict[str, bool] = field(default_factory=dict)
    read_at: float = 0.0  # when systems and capabilities were read; 0: never
    last_error: dict = field(default_factory=dict)  # of the last read, cleared by a good one
    reading: threading.Lock = field(default_factory=threading.Lock)


class Arrays:
    """The configured arrays, each reached through lsm on demand."""

    def __init__(self, uris: list[str], password: str = "", refresh_interval: float = 3600.0,
                 job_timeout: float = 300.0) -> None:
        self._arrays = {uri: _Array(uri) for uri in uris}
        self._password = password or None
        self._interval = refresh_interval
        self._job_timeout = job_timeout
        self._module: Any = None
        self._stop = threading.Event()
        self._listeners: list[ReadCallback] = []

    def start(self) -> None:
        """Read every array's capabilities now and every refresh interval, in the background."""
        if self._arrays:
            threading.Thread(target=self._refresh_all, name="arrays", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def on_read(self, callback: ReadCallback) -> None:
        """Have `callback(array_id, capabilities, read_at)` called after each good read of an array's
        capabilities (background, refresh or first use), outside the array's read lock, so that
        other code keeps its own view of them; an exception it raises is logged, the read stands."""
        self._listeners.append(callback)

    def _refresh_all(self) -> None:
        while not self._stop.is_set():
            for array in list(self._arrays.values()):
                try:
                    self._read(array)
                except LsmUnavailable as e:
                    log.warning("[offload] arrays are configured, but %s: they stay unused", e)
                    return
                except HsmError as e:
                    log.warning("Capabilities of array %s not read: %s", array.uri, e)
                except Exception:  # the refresh outlives one array's surprise; the log is its witness
                    log.exception("Capabilities of array %s not read", array.uri)
            self._stop.wait(self._interval)

    # -- what the verbs ask ----------------------------------------------------------

    def lsm(self) -> Any:
        """The lsm module, imported on first use (LsmUnavailable without it)."""
        if self._module is None:
            self._module = import_lsm()
        return self._module

    def check(self, array_id: Any) -> None:
        """LsmUnavailable without lsm, else ArrayDoesNotExist unless `array_id` is a configured array."""
        self._array(array_id)

    def overview(self) -> dict[str, dict]:
        """{arrayId: {plugin, systems, capabilitiesReadAt, lastError}}, as last read (no array is asked)."""
        self.lsm()
        return {uri: {"plugin": urllib.parse.urlsplit(uri).scheme, "systems": list(array.systems),
                      "capabilitiesReadAt": _when(array.read_at), "lastError": dict(array.last_error)}
                for uri, array in self._arrays.items()}

    def capabilities(self, array_id: str) -> dict:
        """{capabilities: {NAME: bool}, readAt}: as last read, read now if never read."""
        array = self._array(array_id)
        if not array.read_at:
            self._read(array)
        return {"capabilities": dict(array.capabilities), "readAt": _when(array.read_at)}

    def has(self, array_id: str, name: str) -> bool:
        """Whether the array had capability `name` at its last read: False when never read (lsm missing
        included) or for an array not configured. Never raises and never asks the array, so storage
        code can ask it before trying an offload."""
        array = self._arrays.get(array_id) if isinstance(array_id, str) else None
        return array is not None and array.capabilities.get(name) is True

    def refresh(self, array_id: str) -> dict:
        """capabilities(), read from the array now."""
        self._read(self._array(array_id))
        return self.capabilities(array_id)

    def pools(self, array_id: str) -> dict[str, dict]:
        array = self._array(array_id)
        with self._client(array) as client:
            return {pool.id: self._pool(pool) for pool in client.pools()}

    def filesystems(self, array_id: str) -> dict[str, dict]:
        """{fsId: {name, poolId, systemId, totalBytes, freeBytes}} of the array's file systems."""
        array = self._array(array_id)
        with self._client(array) as client:
            return {fs.id: self._fs(fs) for fs in client.fs()}

    def filesystem(self, array_id: str, fs_id: str) -> dict:
        """One of filesystems(); ArrayFsDoesNotExist when the array has no such file system."""
        array = self._array(array_id)
        with self._client(array) as client:
            return self._fs(self._find(array, client.fs(), fs_id, ArrayFsDoesNotExist))

    def file_clone(self, array_id: str, fs_id: str, src: str, dst: str) -> str | None:
        """The array's clone of file `src` to `dst` in one file system, done: the job id it ran, or None.

        Names are relative to the file system's root; `dst` must not exist and its folder must (lsm's
        rule). The array shares what it can, and the copy costs the host no I/O. FILE_CLONE is checked
        first (as last read), so an array without it is never asked.
        """
        array = self._array(array_id)
        self._require(array, "FILE_CLONE")
        with self._client(array) as client:
            fs = self._find(array, client.fs(), fs_id, ArrayFsDoesNotExist)
            job_id = client.fs_file_clone(fs, src, dst)
            if job_id:
                self._wait(array, client, job_id, f"clone {src!r} to {dst!r} in {fs_id}")
        return job_id or None

    def provision(self, array_id: str, pool_id: str, name: str, size: int, provisioning: str = "default") -> dict:
        """{volume[, jobId]}: a new volume of `size` bytes (the array may round it up) in the pool."""
        array = self._array(array_id)
        self._require(array, "VOLUME_CREATE", *(["VOLUME_THIN"] if provisioning == "thin" else []))
        kind = getattr(self.lsm().Volume, PROVISIONING[provisioning])
        with self._client(array) as client:
            pool = self._find(array, client.pools(), pool_id, ArrayPoolDoesNotExist)
            job_id, volume = client.volume_create(pool, name, size, kind)
            if job_id:
                volume = self._wait(array, client, job_id, f"create {name!r}")
            if volume is None:  # a plugin whose job gives no result: the new volume by its name
                volume = self._find(array, client.volumes(), name, ArrayRequestFailed, key="name")
        return self._answer(volume, job_id)

    def resize(self, array_id: str, volume_id: str, size: int) -> dict:
        """{volume[, jobId]}: the volume at `size` bytes (the array may round it up)."""
        array = self._array(array_id)
        self._require(array, "VOLUME_RESIZE")
        lsm = self.lsm()
        with self._client(array) as client:
            volume = self._find(array, client.volumes(), volume_id, ArrayVolumeDoesNotExist)
            if volume.size_bytes == size:
                return self._answer(volume, None)
            try:
                job_id, resized = client.volume_resize(volume, size)
            except lsm.LsmError as e:
                if e.code != lsm.ErrorNumber.NO_STATE_CHANGE:
                    raise
                return self._answer(volume, None)  # `size` rounds to the size it has
            if job_id:
                resized = self._wait(array, client, job_id, f"resize {volume_id}")
            if resized is None:
                resized = self._find(array, client.volumes(), volume_id, ArrayVolumeDoesNotExist)
        return self._answer(resized, job_id)

    def delete(self, array_id: str, volume_id: str) -> dict:
        """{[jobId]}: the volume is gone."""
        array = self._array(array_id)
        self._require(array, "VOLUME_DELETE")
        with self._client(array) as client:
            volume = self._find(array, client.volumes(), volume_id, ArrayVolumeDoesNotExist)
            job_id = client.volume_delete(volume)
            if job_id:
                self._wait(array, client, job_id, f"delete {volume_id}")
        return {"jobId": job_id} if job_id else {}

    # -- talking to lsm --------------------------------------------------------------

    def _array(self, array_id: Any) -> _Array:
        self.lsm()  # 5016 first, whatever the id
        array = self._arrays.get(array_id) if isinstance(array_id, str) else None
        if array is None:
            raise ArrayDoesNotExist(f"{array_id!r} (configured: {', '.join(self._arrays) or 'none'})")
        return array

    @contextmanager
    def _client(self, array: _Array) -> Iterator[Any]:
        """An lsm connection to the array, closed after; lsm's errors as hsm's."""
        lsm = self.lsm()
        with self._errors(array):
            client = lsm.Client(array.uri, self._password, CONNECT_TIMEOUT_MS)
        try:
            with self._errors(array):
                yield client
        finally:
            try:
                client.close()
            except lsm.LsmError as e:
                log.warning("Closing the lsm connection to %s: %s", array.uri, e)

    @contextmanager
    def _errors(self, array: _Array) -> Iterator[None]:
        lsm = self.lsm()
        try:
            yield
        except lsm.LsmError as e:
            names = [name for name, value in vars(lsm.ErrorNumber).items()
                     if not name.startswith("_") and value == e.code]
            name = names[0] if names else "UNKNOWN_ERROR_NUMBER"
            raise _ERRORS.get(name, ArrayRequestFailed)(f"{array.uri}: lsm {name}({e.code}): {e.msg}") from None

    def _read(self, array: _Array) -> None:
        """Read the array's systems and capabilities (one read at a time per array), then tell on_read's callbacks."""
        lsm = self.lsm()
        with array.reading:
            try:
                with self._client(array) as client:
                    systems = client.systems()
                    found = [client.capabilities(system) for system in systems]
            except HsmError as e:
                array.last_error = e.last_error()
                raise
            numbers = {name: getattr(lsm.Capabilities, name, None) for name in CAPABILITIES}
            # A URI may reach several systems: a capability counts when every one of them has it.
            array.capabilities = {name: bool(found) and number is not None and all(c.supported(number) for c in found)
                                  for name, number in numbers.items()}
            array.systems = [{"id": s.id, "name": s.name, "status": self._flags(lsm.System, s.status)}
                             for s in systems]
            array.read_at, array.last_error = time.time(), {}
            capabilities, read_at = dict(array.capabilities), array.read_at
        log.debug("Array %s: systems %s, capabilities read", array.uri, [s["id"] for s in array.systems])
        self._tell(array.uri, capabilities, read_at)

    def _tell(self, array_id: str, capabilities: dict[str, bool], read_at: float) -> None:
        """Call on_read's callbacks, each with its own copy; one that fails is logged, not the read's failure."""
        for callback in list(self._listeners):
            try:
                callback(array_id, dict(capabilities), read_at)
            except Exception:  # another module's bug: the log is its witness, the read stands
                log.exception("A callback on array %s's capabilities failed", array_id)

    def _require(self, array: _Array, *names: str) -> None:
        """ArrayNoSupport unless the array has every capability named (as last read; read if never)."""
        if not array.read_at:
            self._read(array)
        missing = [name for name in names if not array.capabilities.get(name)]
        if missing:
            raise ArrayNoSupport(f"{array.uri} lacks {', '.join(missing)} (capabilities read at "
                                 f"{_when(array.read_at)}; refreshArrayCapabilities reads them again)")

    @staticmethod
    def _find(array: _Array, found: list, wanted: Any, missing: type[HsmError], key: str = "id") -> Any:
        for item in found:
            if getattr(item, key) == wanted:
                return item
        raise missing(f"{array.uri}: {wanted!r}")

    def _wait(self, array: _Array, client: Any, job_id: str, what: str) -> Any:
        """The job's result once the array completes it; polled with a growing pause, up to job_timeout."""
        lsm = self.lsm()
        deadline = time.monotonic() + self._job_timeout
        pause, shown = 0.05, -1
        while True:
            status, percent, result = client.job_status(job_id)
            if status in (lsm.JobStatus.COMPLETE, lsm.JobStatus.ERROR):
                client.job_free(job_id)
                if status == lsm.JobStatus.ERROR:
                    raise ArrayRequestFailed(f"{array.uri}: job {job_id} ({what}) failed at {percent}%")
                log.info("Array %s: job %s (%s) complete", array.uri, job_id, what)
                return result
            if percent != shown:
                log.info("Array %s: job %s (%s) at %s%%", array.uri, job_id, what, percent)
                shown = percent
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageTimeout(f"{array.uri}: job {job_id} ({what}) still at {percent}% after "
                                     f"{self._job_timeout:g} s ([offload] array_job_timeout); it goes on on the array")
            time.sleep(min(pause, left))
            pause = min(2 * pause, 1.0)

    # -- answers -----------------------------------------------------------------------

    @staticmethod
    def _flags(kind: Any, value: int) -> list[str]:
        """The names of the STATUS_ bits of an lsm class set in `value`."""
        return sorted(name.removeprefix("STATUS_") for name, bit in vars(kind).items()
                      if name.startswith("STATUS_") and isinstance(bit, int) and bit > 0 and value & bit)

    @staticmethod
    def _bytes(size: int) -> str:
        """A size as a decimal string; lsm's negative sizes (not found, unknown) as ""."""
        return format_size(size) if size >= 0 else ""

    def _pool(self, pool: Any) -> dict:
        kind = self.lsm().Pool
        unsupported = pool.unsupported_actions
        return {
            "name": pool.name, "systemId": pool.system_id,
            "totalBytes": self._bytes(pool.total_space), "freeBytes": self._bytes(pool.free_space),
            "status": self._flags(kind, pool.status), "statusInfo": pool.status_info or "",
            "volumes": bool(pool.element_type & kind.ELEMENT_TYPE_VOLUME),
            "grow": not unsupported & getattr(kind, "UNSUPPORTED_VOLUME_GROW", 0),
            "shrink": not unsupported & getattr(kind, "UNSUPPORTED_VOLUME_SHRINK", 0),
        }

    def _fs(self, fs: Any) -> dict:
        return {"name": fs.name, "poolId": fs.pool_id, "systemId": fs.system_id,
                "totalBytes": self._bytes(fs.total_space), "freeBytes": self._bytes(fs.free_space)}

    def _answer(self, volume: Any, job_id: str | None) -> dict:
        wire = {"id": volume.id, "name": volume.name, "poolId": volume.pool_id, "systemId": volume.system_id,
                "size": format_size(volume.size_bytes), "vpd83": volume.vpd83 or "",
                "enabled": volume.admin_state == self.lsm().Volume.ADMIN_STATE_ENABLED}
        return {"volume": wire, "jobId": job_id} if job_id else {"volume": wire}
