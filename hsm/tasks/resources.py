"""Refcounted shared/exclusive locks on named resources, taken in one global order.

A resource is (namespace, name), e.g. ("01_image", image id). Namespaces sort
as repository < image < volume, and a set of locks is always taken in sorted
order, so two tasks can never wait for each other in a cycle. Waiting writers
block new readers, so an exclusive request is not starved.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from hsm.errors import InvalidParameterException, ResourceTimeout

SHARED = "shared"
EXCLUSIVE = "exclusive"

REPOSITORY = "00_repository"
IMAGE = "01_image"
VOLUME = "02_volume"


class _Resource:
    __slots__ = ("shared", "exclusive", "waiting_exclusive", "users")

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiting_exclusive = 0
        self.users = 0  # holders and waiters: the resource goes away at 0

    def blocks(self, mode: str) -> bool:
        if mode == SHARED:
            return self.exclusive or self.waiting_exclusive > 0
        return self.exclusive or self.shared > 0


class ResourceManager:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._resources: dict[tuple[str, str], _Resource] = {}

    def _acquire(self, key: tuple[str, str], mode: str, deadline: float) -> None:
        with self._cond:
            res = self._resources.setdefault(key, _Resource())
            res.users += 1
            if mode == EXCLUSIVE:
                res.waiting_exclusive += 1
            try:
                while res.blocks(mode):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        res.users -= 1
                        self._forget(key, res)
                        raise ResourceTimeout(f"{mode} lock on {key[0]}/{key[1]}")
                    self._cond.wait(remaining)
            finally:
                if mode == EXCLUSIVE:
                    res.waiting_exclusive -= 1
            if mode == SHARED:
                res.shared += 1
            else:
                res.exclusive = True

    def _release(self, key: tuple[str, str], mode: str) -> None:
        with self._cond:
            res = self._resources[key]
            if mode == SHARED:
                res.shared -= 1
            else:
                res.exclusive = False
            res.users -= 1
            self._forget(key, res)
            self._cond.notify_all()

    def _forget(self, key: tuple[str, str], res: _Resource) -> None:
        if res.users == 0:
            del self._resources[key]
            self._cond.notify_all()

    @contextlib.contextmanager
    def locked(self, requests: list[tuple[str, str, str]], timeout: float) -> Iterator[None]:
        """Hold every (namespace, name, mode) in `requests` for the block, or raise ResourceTimeout."""
        wanted: dict[tuple[str, str], str] = {}
        for namespace, name, mode in requests:
            if mode not in (SHARED, EXCLUSIVE):
                raise InvalidParameterException(f"lock mode {mode!r}")
            key = (namespace, name)
            wanted[key] = EXCLUSIVE if EXCLUSIVE in (mode, wanted.get(key)) else SHARED
        deadline = time.monotonic() + timeout
        held: list[tuple[tuple[str, str], str]] = []
        try:
            for key in sorted(wanted):
                self._acquire(key, wanted[key], deadline)
                held.append((key, wanted[key]))
            yield
        finally:
            for key, mode in reversed(held):
                self._release(key, mode)

    def holders(self) -> dict[str, dict]:
        """{namespace/name: {shared, exclusive}} of resources in use, for diagnostics."""
        with self._cond:
            return {f"{ns}/{name}": {"shared": r.shared, "exclusive": r.exclusive}
                    for (ns, name), r in self._resources.items()}
