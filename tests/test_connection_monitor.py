"""The connection monitor tends connections side by side, a bounded number at once.

The backend stands in for supervdsmd: a login to a "slow" storage blocks
until the test lets it go, as an iSCSI login to a dead portal does (120 s).
"""

import threading

from hsm.connections import manager as connections
from hsm.connections.manager import ConnectionManager
from tests.waiting import wait_for


class SlowLogins:
    """Backends whose connect() of a path with 'slow' in it waits for `release`."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.logins: dict[str, int] = {}  # storage key -> connect() calls that returned

    def path(self, storage) -> str:
        return storage.info["path"]

    def is_connected(self, storage) -> bool:
        return storage.key in self.connected

    def connect(self, storage) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if "slow" in storage.key:
                assert self.release.wait(30), "the test never released the slow logins"
            self.connected.add(storage.key)
            self.logins[storage.key] = self.logins.get(storage.key, 0) + 1
        finally:
            with self.lock:
                self.in_flight -= 1

    def disconnect(self, storage) -> None:
        self.connected.discard(storage.key)

    def iscsi_nodes(self) -> set:
        return set()

    def unmanaged_mounts(self, managed: set[str]) -> dict:
        return {}


def test_slow_logins_delay_no_other_connection_and_are_bounded(tmp_path):
    backends = SlowLogins()
    monitor = ConnectionManager(str(tmp_path), backends, interval=0.05, backoff_min=0.05, backoff_max=0.1)
    workers = connections.RECONNECT_WORKERS
    monitor.start()
    try:
        slow = [f"slow{i}" for i in range(workers - 1)]
        for cid in slow:
            monitor.manage(f"localfs:///{cid}", cid)
        wait_for(lambda: backends.in_flight == len(slow), what="slow logins in flight")
        monitor.manage("localfs:///fast", "fast")
        wait_for(lambda: monitor.status("fast")[0], what="fast connection while the slow ones hang")
        backends.connected.discard("localfs:///fast")  # lost: seen and made again while the slow ones hang
        wait_for(lambda: backends.logins["localfs:///fast"] == 2 and monitor.status("fast")[0],
                 what="reconnect while the slow ones hang")

        more = ["slow-a", "slow-b"]  # now more hung logins than workers: the others wait, checks go on
        for cid in more:
            monitor.manage(f"localfs:///{cid}", cid)
        wait_for(lambda: backends.in_flight == workers, what="every worker in a slow login")
        backends.connected.discard("localfs:///fast")
        wait_for(lambda: not monitor.status("fast")[0], what="loss seen with every worker busy")
        assert backends.most_in_flight == workers
        assert not any(monitor.status(cid)[0] for cid in slow + more)

        backends.release.set()
        wait_for(lambda: all(monitor.status(cid)[0] for cid in ["fast", *slow, *more]), what="all connected")
        assert backends.most_in_flight == workers
    finally:
        backends.release.set()
        monitor.stop()
