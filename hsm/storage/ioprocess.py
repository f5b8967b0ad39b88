"""IOProcess: file operations on one repository's storage, in a child process, with a timeout.

Any stat, listdir or read on a dead NFS server can block its thread forever
(D state). hsmd therefore never touches repository storage itself: each
repository gets its own child (hsm.storage.ioworker), as VDSM's ioprocess. A
call that gets no answer in time fails with StorageTimeout (5005); calls on a
hung repository pile up only to `slots + max_queued`, past which they fail at
once; other repositories and the API are not affected. A child that dies is
started again by the next call.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from typing import Any

from hsm.errors import StorageTimeout

log = logging.getLogger("hsm.storage.io")


class IOProcess:
    def __init__(self, name: str, timeout: float = 60.0, slots: int = 10, max_queued: int = 10) -> None:
        self.name = name
        self.timeout = timeout
        self._slots = slots
        self._max_pending = slots + max_queued
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Future, Connection]] = {}
        self._child: subprocess.Popen | None = None
        self._conn: Connection | None = None

    # -- the child ------------------------------------------------------

    def _start(self) -> Connection:
        """Start a helper; its connection is also kept as self._conn."""
        ours, theirs = socket.socketpair()
        child = self._child = subprocess.Popen(
            [sys.executable, "-m", "hsm.storage.ioworker", str(theirs.fileno()), str(self._slots)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        theirs.close()
        conn = self._conn = Connection(ours.detach())
        threading.Thread(target=self._read_answers, args=(conn, child), daemon=True,
                         name=f"io-{self.name}").start()
        log.info("I/O helper for %s started (pid %d)", self.name, child.pid)
        return conn

    def _read_answers(self, conn: Connection, child: subprocess.Popen) -> None:
        while True:
            try:
                call_id, ok, value = conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                entry = self._pending.pop(call_id, None)
            if entry is not None:
                entry[0].set_result((ok, value))
        level = logging.WARNING if child is self._child else logging.INFO  # not warned of after close()
        log.log(level, "I/O helper for %s (pid %d) is gone", self.name, child.pid)
        conn.close()  # only this thread closes it: a close elsewhere could free the fd number under us
        child.wait()  # reaped here: a child stuck in D state blocks only this thread
        with self._lock:
            if self._conn is conn:
                self._conn = None
            lost = [call_id for call_id, (_, sent_on) in self._pending.items() if sent_on is conn]
            futures = [self._pending.pop(call_id)[0] for call_id in lost]
        for future in futures:
            future.set_result((False, ("ChildProcessError", None, "the I/O helper died")))

    def close(self) -> None:
        """Kill the helper; its reader thread closes the connection once the helper is gone."""
        with self._lock:
            child = self._child
            self._child = self._conn = None
        if child is not None:
            child.kill()  # a child in D state dies when its I/O returns

    @property
    def pid(self) -> int:
        return self._child.pid if self._child else 0

    # -- calls ----------------------------------------------------------

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        timeout = self.timeout if timeout is None else timeout
        future: Future = Future()
        with self._lock:
            # Calls that timed out stay counted until the helper answers them: they hold its slots.
            if len(self._pending) >= self._max_pending:
                raise StorageTimeout(f"{self.name}: {len(self._pending)} operations already waiting")
            call_id = next(self._ids)
            for attempt in (1, 2):
                conn = self._start() if self._conn is None else self._conn
                self._pending[call_id] = (future, conn)
                try:
                    conn.send((call_id, op, args))
                    break
                except OSError:  # the helper died since the last call: once more with a new one
                    del self._pending[call_id]
                    self._conn = None
                    if attempt == 2:
                        raise StorageTimeout(f"{self.name}: the I/O helper cannot be reached") from None
        try:
            ok, value = future.result(timeout)
        except FutureTimeout:
            raise StorageTimeout(f"{self.name}: {op} {args[0] if args else ''} gave no answer in {timeout} s") \
                from None
        if ok:
            return value
        kind, errno, message = value
        if errno is not None:
            raise OSError(errno, os.strerror(errno), args[0] if args else None)
        raise StorageTimeout(f"{self.name}: {op}: {kind}: {message}") if kind == "ChildProcessError" \
            else OSError(message)

    # Named operations, so callers read as plain file code.
    def stat(self, path: str) -> dict:
        return self.call("stat", path)

    def exists(self, path: str) -> bool:
        return self.call("exists", path)

    def listdir(self, path: str) -> list[str]:
        return self.call("listdir", path)

    def read(self, path: str, limit: int = 1 << 20) -> bytes:
        return self.call("read", path, limit)

    def read_all(self, folder: str, suffix: str) -> dict[str, bytes]:
        return self.call("read_all", folder, suffix)

    def read_many(self, folder: str, names: list[str]) -> dict[str, bytes]:
        return self.call("read_many", folder, names)

    def write(self, path: str, data: bytes) -> None:
        self.call("write", path, data)

    def remove(self, path: str) -> None:
        self.call("remove", path)

    def makedirs(self, path: str) -> None:
        self.call("makedirs", path)

    def rename(self, old: str, new: str) -> None:
        self.call("rename", old, new)

    def statvfs(self, path: str) -> dict:
        return self.call("statvfs", path)

    def reserve(self, path: str, size: int) -> bool:
        return self.call("reserve", path, size)

    def is_folder(self, path: str) -> bool:
        return self.call("is_folder", path)

    def empty_folder(self, path: str) -> int:
        return self.call("empty_folder", path)

    def rmdir(self, path: str) -> None:
        self.call("rmdir", path)

    def clone(self, src: str, dst: str) -> None:
        """Make the new file `dst` a reflink of `src` (FICLONE); OSError (EOPNOTSUPP, EXDEV...) where it cannot."""
        self.call("clone", src, dst)

    def copy_range(self, src: str, dst: str, offset: int = 0, budget: int = 1 << 62) -> tuple[int, int]:
        """copy_file_range `src` into `dst` from `offset` (0 creates `dst`, which must not exist), skipping
        holes, until `budget` bytes of data are copied: (the offset to go on from, src's size), equal when
        all is copied and durable."""
        offset, size = self.call("copy_range", src, dst, offset, budget)
        return offset, size

    def offload_probe(self, folder: str) -> dict[str, bool]:
        """Whether reflink and copy_file_range work between two files of `folder`."""
        return self.call("offload_probe", folder)

    def read_at(self, path: str, offset: int, size: int) -> bytes:
        """Bytes of a block device from `offset`, past the page cache (aligned to 4096)."""
        return self.call("read_at", path, offset, size)

    def write_at(self, path: str, offset: int, data: bytes) -> None:
        """Write to a block device at `offset`, durably, past the page cache (aligned to 4096)."""
        self.call("write_at", path, offset, data)

    def zero_range(self, path: str, offset: int, size: int) -> None:
        """Make a byte range of a block device read as zeros (512-byte aligned)."""
        self.call("zero_range", path, offset, size)

    # The metadata-writer lease of a shared repository, held by the helper (hsm.storage.ioworker._Leases).
    def lease_acquire(self, lockspace: bytes, resource: bytes, path: str, offset: int, timeout: float) -> None:
        self.call("lease_acquire", lockspace, resource, path, offset, timeout=timeout)

    def lease_release(self, lockspace: bytes, resource: bytes, path: str, offset: int) -> None:
        self.call("lease_release", lockspace, resource, path, offset)

    def lease_write(self, lockspace: bytes, resource: bytes, path: str, data: bytes) -> None:
        """Write `path` atomically, only while the helper holds the lease (ENOLCK otherwise)."""
        self.call("lease_write", lockspace, resource, path, data)

    def lease_remove(self, lockspace: bytes, resource: bytes, path: str) -> None:
        self.call("lease_remove", lockspace, resource, path)

    def lease_write_at(self, lockspace: bytes, resource: bytes, device: str, offset: int, data: bytes) -> None:
        """write_at, only while the helper holds the lease (ENOLCK otherwise)."""
        self.call("lease_write_at", lockspace, resource, device, offset, data)

    def lease_init(self, lockspace: bytes, resource: bytes, path: str, size: int) -> bool:
        """Make a lease file with a free lease at offset 0 (False: it exists)."""
        return self.call("lease_init", lockspace, resource, path, size)

    def lease_owners(self, lockspace: bytes, resource: bytes, path: str, offset: int = 0) -> list[int]:
        return self.call("lease_owners", lockspace, resource, path, offset)

    def lease_format(self, lockspace: bytes, resource: bytes, path: str, offset: int) -> None:
        """Write a free lease at `offset` of a block device, over what was there."""
        self.call("lease_format", lockspace, resource, path, offset)

    def lease_read(self, path: str, offset: int) -> dict:
        """sanlock's read_resource of the lease at `offset`: {lockspace, resource, version}."""
        return self.call("lease_read", path, offset)
