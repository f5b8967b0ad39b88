"""kill -9 hsmd at random moments while images are created, snapshotted, copied and removed.

After each restart: every image whose creation was acknowledged exists (until
an acknowledged remove), checkStorageRepository plus its fixes leave every
image optimized or degraded with a chain qemu-img accepts, and no volume file
is left that no image owns. 50 rounds here; `-m slow` runs 300.

Each client thread draws from its own Random, seeded from the base seed, the
round and the thread, so the numbers a thread draws do not depend on when the
other thread drew; a failure names the base seed, and HSM_CRASH_SEED replays
it (hsmd's timing, and so where a kill lands, still varies from run to run).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import threading
import time
import xmlrpc.client
from xml.parsers.expat import ExpatError

import pytest

from tests.images_helpers import MiB, backing_chain, local_path, ok, qemu_check
from tests.waiting import wait_for

MAX_IMAGES = 10
ACCEPTED_REFUSALS = {203, 227, 268, 5010, 5011}  # busy, not ready, gone, a snapshot beside itself, of a snapshot
CI_SEED = 20261126


class Workload:
    """Random image operations from client threads, each with its own Random, remembering what hsmd acknowledged."""

    def __init__(self, daemon, known: set[str], removed: set[str]) -> None:
        self.daemon = daemon
        self.known = known          # acknowledged and not acknowledged-removed
        self.removed = removed      # acknowledged removes
        self.lock = threading.Lock()
        self.unexpected: list[dict] = []

    def run(self, stop: threading.Event, rng: random.Random) -> None:
        proxy = self.daemon.proxy(timeout=10)
        removing: list[str] = []
        try:
            while not stop.is_set():
                self.one(proxy, rng, removing)
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError, ExpatError):
            # hsmd was killed under us: that call's outcome is unknown, which is the point.
            with self.lock:
                self.known.difference_update(removing)  # removed or not: both are right

    def one(self, proxy, rng: random.Random, removing: list[str]) -> None:
        with self.lock:
            images = sorted(self.known)
        choice = rng.random()
        if not images or (choice < 0.3 and len(images) < MAX_IMAGES):
            answer = proxy.createVirtualDisk("local", str(rng.choice([1, 64, 1024]) * MiB), "", {}, {})
        elif choice < 0.5:
            answer = proxy.createSnapshot("local", rng.choice(images), {}, {})
        elif choice < 0.7 and len(images) < MAX_IMAGES:
            answer = proxy.copyImage("local", rng.choice(images), "", {}, {})
        else:
            target = rng.choice(images)
            removing[:] = [target]
            answer = proxy.removeImage("local", target, {})
            removing.clear()
            if answer["status"]["code"] == 0:
                with self.lock:
                    self.known.discard(target)
                    self.removed.add(target)
            self.check(answer)
            return
        self.check(answer)
        if answer["status"]["code"] == 0:
            with self.lock:
                self.known.add(answer["imageId"])

    def check(self, answer: dict) -> None:
        if answer["status"]["code"] not in ACCEPTED_REFUSALS | {0}:
            self.unexpected.append(answer)


def settle(proxy, timeout: float = 180.0) -> None:
    """Wait until no task runs: first the fixes hsmd resumed by itself, then the ones check offers."""
    def running() -> list[dict]:
        return [s for s in ok(proxy.getAllTasksStatuses())["allTasksStatus"].values() if s["taskState"] != "finished"]

    for _ in range(3):
        wait_for(lambda: not running(), timeout=timeout, what=lambda: f"end of the tasks: {running()}")
        fixes = ok(proxy.checkStorageRepository("local"))["fixes"]
        if not fixes:
            return
        for fix in fixes:
            ok(proxy.fixStorageRepository("local", fix["fix"], {}))
    raise AssertionError(f"fixes keep coming back: {fixes}")


def verify(proxy, daemon, known: set[str], removed: set[str]) -> None:
    listed = set(ok(proxy.getImageList("local"))["images"])
    assert known <= listed, f"acknowledged images lost: {known - listed}"
    assert not (removed & listed), f"acknowledged removes came back: {removed & listed}"
    owned = set()
    for image_id in listed:
        info = ok(proxy.getImageInfo("local", image_id))["image"]
        assert info["state"] in ("optimized", "degraded"), info
        for volume in info["volumes"]:
            assert os.path.exists(volume["path"]), (image_id, volume)
            if volume["image"] == image_id:
                owned.add(os.path.basename(volume["path"]))
        qemu_check(info["volumes"][0]["path"])
        chain = [layer["filename"] for layer in backing_chain(info["volumes"][0]["path"])]
        assert chain == [volume["path"] for volume in info["volumes"]], (image_id, chain, info["volumes"])
    on_disk = set(os.listdir(os.path.join(local_path(daemon), "volumes")))
    assert on_disk == owned, f"files no image owns: {on_disk - owned}; missing: {owned - on_disk}"


def crash_rounds(daemon, rounds: int, seed: int) -> None:
    print(f"image crash rounds: base seed {seed}")
    try:
        _crash_rounds(daemon, rounds, seed)
    except Exception as e:
        e.add_note(f"replay: HSM_CRASH_SEED={seed} .venv/bin/python -m pytest tests/test_image_crash.py")
        raise


def _crash_rounds(daemon, rounds: int, seed: int) -> None:
    known: set[str] = set()
    removed: set[str] = set()
    for round_number in range(rounds):
        daemon.start()
        proxy = daemon.proxy()
        print(f"seed {seed} round {round_number}")
        settle(proxy)
        verify(proxy, daemon, known, removed)
        known |= set(ok(proxy.getImageList("local"))["images"])  # committed but unanswered ones count too
        workload = Workload(daemon, known, removed)
        stop = threading.Event()
        threads = [threading.Thread(target=workload.run, args=(stop, random.Random(f"{seed}/{round_number}/{n}")))
                   for n in range(2)]
        for thread in threads:
            thread.start()
        # The moment of the kill is the point (before, during or after a commit): a random pause, not an ordering.
        time.sleep(random.Random(f"{seed}/{round_number}/kill").uniform(0.0, 0.4))
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        stop.set()
        for thread in threads:
            thread.join(15)
        daemon.close_proxies()
        assert not workload.unexpected, f"seed {seed} round {round_number}: {workload.unexpected}"
    daemon.start()
    proxy = daemon.proxy()
    settle(proxy)
    verify(proxy, daemon, known, removed)
    daemon.stop()


@pytest.mark.timeout(1800)  # about a minute alone, 4-10 on a busy 2-core machine
def test_kill_9_during_image_operations(make_hsmd):
    crash_rounds(make_hsmd(), rounds=50, seed=int(os.environ.get("HSM_CRASH_SEED", CI_SEED)))


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_kill_9_during_image_operations_long(make_hsmd):
    crash_rounds(make_hsmd(), rounds=300, seed=int(os.environ.get("HSM_CRASH_SEED", time.time())))
