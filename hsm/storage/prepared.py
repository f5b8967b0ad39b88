"""The images prepared for use on this host, kept across restarts of hsmd.

A VM may run on a prepared image long after the hsmd that prepared it died:
the set is written (through the atomic-write helper) before prepareImage
answers and after teardownImage, and read back at start-up. It carries the
host's boot id: after a reboot no VM runs on anything, so the set starts empty.
"""

from __future__ import annotations

import json
import logging
import threading

from hsm.atomicfile import atomic_write
from hsm.ids import is_id

log = logging.getLogger("hsm.storage.prepared")

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id (the kernel's): it changes with every restart of the machine."""
    try:
        with open(BOOT_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


class PreparedImages:
    """(repository uuid, image id) pairs; `path` None keeps them in memory only (in-process use)."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._boot = boot_id()
        self._keys: set[tuple[str, str]] = self._load(path) if path else set()

    def _load(self, path: str) -> set[tuple[str, str]]:
        try:
            with open(path, "rb") as f:
                stored = json.loads(f.read())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as e:
            log.error("Prepared images in %s are unreadable, none kept: %s", self._path, e)
            return set()
        if not isinstance(stored, dict) or not isinstance(stored.get("images"), list):
            log.error("Prepared images in %s are damaged, none kept", self._path)
            return set()
        if stored.get("boot") != self._boot:
            log.info("The host has rebooted since images were prepared: none is in use")
            return set()
        keys = set()
        for entry in stored["images"]:
            if isinstance(entry, list) and len(entry) == 2 and all(is_id(part) for part in entry):
                keys.add((entry[0], entry[1]))
            else:
                log.error("Skipping a damaged prepared-image entry in %s: %.80r", self._path, entry)
        if keys:
            log.info("%d images are still prepared from before", len(keys))
        return keys

    def _save(self, keys: set[tuple[str, str]]) -> None:
        if self._path:
            data = {"boot": self._boot, "images": sorted([list(key) for key in keys])}
            atomic_write(self._path, json.dumps(data).encode(), mode=0o600)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._keys

    def add(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key not in self._keys:
                self._save(self._keys | {key})  # durable before prepareImage answers
                self._keys = self._keys | {key}

    def discard(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key in self._keys:
                self._save(self._keys - {key})
                self._keys = self._keys - {key}

    def of_repository(self, repo_uuid: str) -> list[str]:
        return sorted(image for repo, image in self._keys if repo == repo_uuid)
