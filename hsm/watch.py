"""Changes on local file systems as they happen: one inotify reader for hsmd.

inotify_simple (a thin, maintained binding; pyinotify needs asyncore, which
Python 3.12 dropped) gives the events; one thread reads them and calls the
callback each watched folder registered, with the name and the event mask.
inotify sees only what this kernel does to its own file systems: what another
host writes on NFS never shows, so callers keep polling where they need it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable

from inotify_simple import INotify, flags

log = logging.getLogger("hsm.watch")

Callback = Callable[[str, int], None]  # (name in the folder, event mask)
READ_TIMEOUT_MS = 500  # how soon the reader sees close()

CREATED = flags.CREATE | flags.MOVED_TO
CHANGED = flags.CLOSE_WRITE | flags.MOVED_TO
GONE = flags.DELETE | flags.MOVED_FROM


class Watcher:
    def __init__(self) -> None:
        self._inotify = INotify()
        self._callbacks: dict[int, tuple[str, Callback]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.overflows = 0
        threading.Thread(target=self._read, name="inotify", daemon=True).start()

    def watch(self, folder: str, mask: int, callback: Callback) -> int:
        """Call `callback(name, mask)` for each event of `mask` on the entries of `folder`; OSError if it cannot."""
        wd = self._inotify.add_watch(folder, mask | flags.DONT_FOLLOW | flags.ONLYDIR)
        with self._lock:
            self._callbacks[wd] = (folder, callback)
        return wd

    def unwatch(self, wd: int) -> None:
        with self._lock:
            if self._callbacks.pop(wd, None) is None:
                return
        try:
            self._inotify.rm_watch(wd)
        except OSError:  # the folder is gone, and its watch with it
            pass

    def close(self) -> None:
        self._closed.set()

    def _read(self) -> None:
        try:
            while not self._closed.is_set():
                for event in self._inotify.read(timeout=READ_TIMEOUT_MS):
                    self._dispatch(event)
        finally:
            self._inotify.close()

    def _dispatch(self, event) -> None:
        if event.mask & flags.Q_OVERFLOW:
            self.overflows += 1
            log.warning("inotify queue overflowed: changes were missed until the next poll")
            return
        with self._lock:
            entry = self._callbacks.get(event.wd)
        if entry is None or event.mask & flags.IGNORED:
            return
        folder, callback = entry
        try:
            callback(event.name, event.mask)
        except Exception:  # one watcher's bug must not end the others' events
            log.exception("Handling %s in %s failed", event.name, folder)


class OwnChanges:
    """Record and volume names hsmd itself is writing or removing, counted until their event comes."""

    def __init__(self) -> None:
        self.active = False  # counted only while watched: nothing else would ever take the counts back
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def expect(self, relative: str) -> None:
        if self.active:
            with self._lock:
                self._counts[relative] += 1

    def consume(self, relative: str) -> bool:
        """Whether an event on `relative` is one hsmd caused (counted off), not news; also for a failed write."""
        with self._lock:
            if self._counts[relative] <= 0:
                self._counts.pop(relative, None)
                return False
            self._counts[relative] -= 1
            if not self._counts[relative]:
                del self._counts[relative]
            return True


def watch_for_file(watcher: Watcher | None, path: str, appeared: Callable[[], None]) -> int | None:
    """Call `appeared()` whenever `path` is created (a socket bound again, say); None if it cannot be watched."""
    if watcher is None:
        return None
    folder, name = os.path.split(path)
    try:
        return watcher.watch(folder, CREATED, lambda entry, mask: appeared() if entry == name else None)
    except OSError as e:
        log.warning("Cannot watch %s (%s): noticing it by polling only", folder, e.strerror)
        return None
