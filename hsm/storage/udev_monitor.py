"""Block devices coming and going, from the kernel's or udev's uevents (pyudev), told to registered callbacks.

hsmd's caches of what LVM sees (hsm.storage.lvm) register a callback that invalidates them. With udevd
running the monitor listens to udev's events (sent once udev has made the device's nodes and links);
without it, to the kernel's own (udev's never come then). Loop devices send `change` when a file is
attached or detached, so callbacks get every action: add, remove, change, move, online, offline.
Reading uevents needs no privilege.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hsm.storage.udev_monitor")

UDEV_CONTROL = "/run/udev/control"  # udevd's control socket: absent when udevd is not running


@dataclass(frozen=True)
class BlockDeviceEvent:
    action: str       # add, remove, change, move, online, offline
    name: str         # the kernel's name: loop3, sda, dm-2
    devnode: str      # /dev/loop3, or "" when the kernel gave none
    devtype: str      # disk or partition


Callback = Callable[[BlockDeviceEvent], None]


def default_source() -> str:
    return "udev" if os.path.exists(UDEV_CONTROL) else "kernel"


class BlockDeviceMonitor:
    """Calls every registered callback, in one thread of its own, for each block device uevent.

    A callback that raises is logged and the others still run: one broken consumer must not leave the
    rest with stale caches. Callbacks should be quick (invalidate, not refresh).
    """

    def __init__(self, source: str | None = None) -> None:
        self.source = source or default_source()
        if self.source not in ("udev", "kernel"):
            raise ValueError(f"source={self.source!r}: udev or kernel")
        self._callbacks: list[Callback] = []
        self._lock = threading.Lock()
        self._observer: Any = None

    def add_callback(self, callback: Callback) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def remove_callback(self, callback: Callback) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def start(self) -> BlockDeviceMonitor:
        """Listen from now on; events before start() are not seen."""
        import pyudev  # only hsmd's block repositories need it

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        monitor.filter_by(subsystem="block")
        monitor.start()  # bound before start() returns: an event right after it is not lost
        self._observer = pyudev.MonitorObserver(monitor, callback=self._dispatch, name="udev-monitor",
                                                daemon=True)
        self._observer.start()
        log.info("Watching block devices (%s events)", self.source)
        return self

    def stop(self) -> None:
        """Stop listening; returns once no callback runs any more."""
        if self._observer is not None:
            self._observer.stop()  # joins the thread unless called from a callback
            self._observer = None  # and with it the netlink socket, closed when pyudev's monitor goes

    def _dispatch(self, device: Any) -> None:
        event = BlockDeviceEvent(device.action or "", device.sys_name, device.device_node or "",
                                 device.device_type or "")
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # a consumer's bug: log it, keep telling the others
                log.exception("Block device callback %r failed on %s", callback, event)
