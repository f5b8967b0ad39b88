"""Managed storage connections (CIDs): registered at once, then kept connected by a monitor.

manageStorageServer only records the CID (durably, in `<state_dir>/connections.json`,
mode 0600 since a URI may carry a CHAP password) and wakes the monitor. Many CIDs
may name one physical connection (the same normalized URI); it is made once and
torn down when its last CID goes. The monitor checks every connection each
`interval` and reconnects a lost one with a backoff that doubles from
`backoff_min` to `backoff_max`; the last failure is kept as lastError.
The last CID of a physical connection is not unmanaged while a connected
repository sits on it, whichever of its CIDs (managed or since unmanaged) the
repository was connected through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hsm.atomicfile import atomic_write
from hsm.connections import uri as uris
from hsm.connections.backends import Backends
from hsm.errors import (
    HsmError,
    InvalidParameterException,
    StorageServerConnectionError,
    StorageServerConnectionRefIdAlreadyInUse,
    StorageServerConnectionRefIdDoesNotExist,
)

log = logging.getLogger("hsm.connections")

CID = re.compile(r"^[^/\x00]{1,255}$")
RECONNECT_WORKERS = 4  # connections checked or reconnected at once; half of supervdsmd's call slots
NODES = "iscsi node records"  # the monitor's work key for reading them


@dataclass
class Physical:
    storage: uris.StorageURI
    cids: set[str] = field(default_factory=set)
    connected: bool = False
    last_error: dict = field(default_factory=dict)
    backoff: float = 0.0
    next_try: float = 0.0
    retired: set[str] = field(default_factory=set)  # unmanaged CIDs a connected repository still sits here through


def _recorded(last_error: dict) -> HsmError:
    """A connection's lastError as an error again, with its code and message."""
    error = HsmError()
    error.code, error.message = int(last_error.get("code", HsmError.code)), str(last_error.get("message", ""))
    return error


def _transient(what: str) -> str:
    """A stable id for a connection found on the host but not managed."""
    return "unmanaged-" + hashlib.sha1(what.encode()).hexdigest()[:12]


class ConnectionManager:
    def __init__(self, state_dir: str, backends: Backends, interval: float = 10.0, backoff_min: float = 1.0,
                 backoff_max: float = 300.0, users: Callable[[set[str]], list[str]] = lambda cids: []) -> None:
        """`users(cids)`: the connected repositories that sit on these CIDs (the engine knows)."""
        self._path = os.path.join(state_dir, "connections.json")
        self.backends = backends
        self._interval = interval
        self._backoff = (backoff_min, backoff_max)
        self._cids: dict[str, str] = {}          # cid -> the URI as given
        self._keys: dict[str, str] = {}          # cid -> its physical connection's key
        self._physical: dict[str, Physical] = {}  # key -> physical connection
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._nodes: set[tuple[str, str]] = set()  # iSCSI node records seen by the monitor's last round
        self._tending: set[str] = set()  # keys the monitor's pool (or a validation) works on now
        self.users = users
        self._load()

    # -- persistence --------------------------------------------------------

    def _load(self) -> None:
        """The CIDs of connections.json; a damaged file or entry is logged and skipped, never fatal."""
        try:
            with open(self._path, encoding="utf-8") as f:
                stored = json.load(f)
            if not isinstance(stored, dict):
                raise ValueError(f"expected a JSON object, found {type(stored).__name__}")
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
            aside = self._path + ".damaged"
            log.error("Ignoring damaged %s (%s); no stored connection is managed. Kept as %s",
                      self._path, e, aside)
            try:
                os.replace(self._path, aside)  # the next save would overwrite what may still be read by hand
            except OSError as err:
                log.error("Cannot move %s aside: %s", self._path, err)
            return
        for cid, text in stored.items():
            try:
                if not CID.fullmatch(cid):
                    raise InvalidParameterException(f"connectionID={cid!r}: 1 to 255 characters, no '/'")
                self._add(cid, uris.parse(text))
                self._cids[cid] = text
            except HsmError as e:
                log.error("Dropping stored connection %r of %s: %s", cid, self._path, e)
        log.info("Loaded %d managed connections on %d physical ones", len(self._cids), len(self._physical))

    def _save(self) -> None:
        atomic_write(self._path, json.dumps(self._cids, sort_keys=True).encode(), mode=0o600)

    def _add(self, cid: str, storage: uris.StorageURI) -> None:
        physical = self._physical.setdefault(storage.key, Physical(storage))
        physical.cids.add(cid)
        self._keys[cid] = storage.key

    # -- verbs ----------------------------------------------------------------

    def manage(self, text: str, cid: str) -> None:
        if not isinstance(cid, str) or not CID.fullmatch(cid):
            raise InvalidParameterException(f"connectionID={cid!r}: 1 to 255 characters, no '/'")
        storage = uris.parse(text)
        with self._lock:
            known = self._cids.get(cid)
            if known is not None:
                known_storage = uris.parse(known)
                if known_storage.key == storage.key and known_storage.password == storage.password:
                    return  # the same CID for the same storage again: nothing to do
                raise StorageServerConnectionRefIdAlreadyInUse(f"{cid} manages {known_storage.key}")
            self._cids[cid] = text
            try:
                self._save()
            except OSError:
                del self._cids[cid]
                raise
            if not self.users({cid}):
                for physical in self._physical.values():  # no repository sits anywhere through the old meaning
                    physical.retired.discard(cid)
            self._add(cid, storage)
        log.info("Managing %s as %s", storage.key, cid)
        self._wake.set()

    def unmanage(self, cid: str) -> None:
        if not isinstance(cid, str) or not CID.fullmatch(cid):
            raise InvalidParameterException(f"connectionID={cid!r}: 1 to 255 characters, no '/'")
        with self._lock:
            text = self._cids.get(cid)
            if text is None:
                raise StorageServerConnectionRefIdDoesNotExist(cid)
            physical = self._physical[self._keys[cid]]
            if physical.cids == {cid}:
                using = self.users(physical.cids | physical.retired)
                if using:
                    raise StorageServerConnectionRefIdAlreadyInUse(
                        f"{cid} is the last connection to the storage of repositories {', '.join(using)}; "
                        "disconnect them first")
            del self._cids[cid]
            self._save()
            storage = uris.parse(text)
            del self._keys[cid]
            physical.cids.discard(cid)
            last = not physical.cids
            if last:
                del self._physical[storage.key]
            elif self.users({cid}):
                physical.retired.add(cid)  # the guard must still see those repositories when the last CID goes
        log.info("No longer managing %s as %s", storage.key, cid)
        if last:
            try:
                self.backends.disconnect(storage)
            except HsmError as e:  # not the caller's problem: the CID is gone either way
                log.warning("Disconnecting %s failed: %s", storage.key, e)

    def servers(self) -> dict[str, dict]:
        with self._lock:
            entries = {cid: self._physical[key] for cid, key in self._keys.items()}
            infos = {key: self._info(p.storage) for key, p in self._physical.items()}
        managed_paths = {info.get("path", "") for info in infos.values()}
        answer = {cid: {"connected": p.connected, "managed": True, "lastError": dict(p.last_error),
                        "connectionInfo": infos[p.storage.key]} for cid, p in entries.items()}
        for path, info in self.backends.unmanaged_mounts(managed_paths).items():
            answer[_transient(path)] = {"connected": True, "managed": False, "lastError": {},
                                        "connectionInfo": {**info, "path": path}}
        managed_nodes = {(info.get("portal"), info.get("target")) for info in infos.values()}
        for portal, target in sorted(self._nodes - managed_nodes):
            answer[_transient(f"{portal}/{target}")] = {
                "connected": False, "managed": False, "lastError": {},
                "connectionInfo": {"scheme": "iscsi", "portal": portal, "target": target}}
        return answer

    def validate(self, text: str) -> None:
        """Whether the storage `text` names can be connected, leaving things as they were; an HsmError if not.

        Storage that is up already (managed, or connected by someone else) is only looked at. Otherwise
        the connection is made and torn down again, while the monitor keeps off its key; if a CID came
        to manage the same storage meanwhile, the connection is left up for it.
        """
        storage = uris.parse(text)
        with self._lock:
            physical = self._physical.get(storage.key)
            busy = storage.key in self._tending
            if physical is None and not busy:
                self._tending.add(storage.key)
        if physical is not None:
            if not (physical.connected or self.backends.is_connected(storage)):
                raise _recorded(physical.last_error or {"code": StorageServerConnectionError.code,
                                                        "message": f"{storage.key} is not connected yet"})
            return
        if busy:
            raise StorageServerConnectionError(f"{storage.key} is being connected or torn down; try again")
        try:
            if not self.backends.is_connected(storage):
                self._try(storage)
        finally:
            with self._lock:
                self._tending.discard(storage.key)
        self._wake.set()  # a CID that came meanwhile waited for this key

    def _try(self, storage: uris.StorageURI) -> None:
        """Connect and tear down again (also after a failure: a half-made connection leaves nothing)."""
        try:
            self.backends.connect(storage)
        finally:
            with self._lock:
                kept = storage.key in self._physical
            if not kept:
                try:
                    self.backends.disconnect(storage)
                except HsmError as e:  # the answer is whether it connected; the leftover is only logged
                    log.warning("Tearing down %s after validating it failed: %s", storage.key, e)

    def _managed(self, cid: str) -> Physical:
        with self._lock:
            key = self._keys.get(cid)
            if key is None:
                raise StorageServerConnectionRefIdDoesNotExist(cid)
            return self._physical[key]

    def status(self, cid: str) -> tuple[bool, dict]:
        """(connected, lastError) of one managed CID."""
        physical = self._managed(cid)
        return physical.connected, dict(physical.last_error)

    def path_of(self, cid: str) -> tuple[str, bool]:
        """(where the connection's files are seen here, whether it is connected) for a managed CID."""
        physical = self._managed(cid)
        return self.backends.path(physical.storage), physical.connected

    def _info(self, storage: uris.StorageURI) -> dict:
        info = dict(storage.info)
        path = self.backends.path(storage)
        if path:
            info["path"] = path
        return info

    # -- the monitor ------------------------------------------------------------

    def start(self) -> None:
        # Reconnects run side by side, so one slow login (iSCSI may take 120 s) delays no other and
        # no check; bounded, so that hung ones cannot take every supervdsmd call slot from the API.
        self._pool = ThreadPoolExecutor(RECONNECT_WORKERS, thread_name_prefix="connections")
        threading.Thread(target=self._watch, name="connections", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def retry_now(self) -> None:
        """Try every lost connection again at once, past its backoff (supervdsmd is back)."""
        with self._lock:
            for physical in self._physical.values():
                physical.next_try = 0.0
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                physicals = [p for p in self._physical.values() if p.storage.key not in self._tending]
            for physical in physicals:
                if self._stop.is_set():
                    break
                if not self._check(physical) and time.monotonic() >= physical.next_try:
                    self._submit(physical.storage.key, self._reconnect, physical)
            self._submit(NODES, self._read_nodes)
            self._wake.wait(self._interval)
            self._wake.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, key: str, work: Callable[..., None], *args: object) -> None:
        """Run `work` on the pool unless the last run for `key` is still queued or going."""
        with self._lock:
            if key in self._tending:
                return
            self._tending.add(key)

        def run() -> None:
            try:
                if not self._stop.is_set():
                    work(*args)
            except Exception:  # a pool's future keeps its error unseen: the log is the only witness
                log.exception("Tending %s failed", key)
            finally:
                with self._lock:
                    self._tending.discard(key)
        self._pool.submit(run)

    def _read_nodes(self) -> None:
        self._nodes = self.backends.iscsi_nodes()

    def _check(self, physical: Physical) -> bool:
        """Whether the connection is up, as seen now (a cheap look at the host's mounts and sessions)."""
        storage = physical.storage
        try:
            if self.backends.is_connected(storage):
                if not physical.connected:
                    log.info("%s is connected", storage.key)
                physical.connected, physical.backoff, physical.last_error = True, 0.0, {}
                return True
        except OSError as e:
            log.warning("Cannot check %s: %s", storage.key, e)
        if physical.connected:
            log.warning("%s was lost; reconnecting", storage.key)
        physical.connected = False
        return False

    def _reconnect(self, physical: Physical) -> None:
        """One attempt, on a pool worker; a failure sets the next try after a doubled backoff."""
        storage = physical.storage
        try:
            self.backends.connect(storage)
            physical.connected = self.backends.is_connected(storage)
            physical.backoff, physical.last_error = 0.0, {}
            log.info("Connected %s", storage.key)
        except HsmError as e:
            low, high = self._backoff
            physical.backoff = min(max(physical.backoff * 2, low), high)
            physical.next_try = time.monotonic() + physical.backoff
            physical.last_error = e.last_error()
            log.warning("Connecting %s failed (next try in %.0f s): %s", storage.key, physical.backoff, e)
