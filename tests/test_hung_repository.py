"""A hung repository through a real hsmd: a localfs-1 repository on a FUSE mount that blocks every call.

The FUSE filesystem (tests/hungfs.py) stands in for a dead NFS server, which
this kernel cannot mount: the hang is real, hsmd's I/O helper for that
repository sits in D state. The API and the other repositories must not
notice; calls that need the hung storage fail by their timeout (5005).
"""

import itertools
import threading
import time

from tests.images_helpers import GiB, code, new_disk, ok, wait_image
from tests.waiting import wait_for

# A call on the hung repository fails after this; a call elsewhere that waited on one would take a good part of it.
TIMEOUT = 3.0


def timed(call) -> float:
    begin = time.monotonic()
    ok(call())
    return time.monotonic() - begin


def test_a_hung_repository_spares_the_api_and_the_others(make_hsmd, hung_mount):
    """Latencies meanwhile, against a baseline, are bench/stalls.py's; here every call elsewhere answers,
    each well under the hung calls' timeout, so none waited on them."""
    mountpoint, flag = hung_mount
    daemon = make_hsmd(config={"irs": {"process_pool_timeout": TIMEOUT, "sd_health_check_delay": 0.5}}).start()
    proxy = daemon.proxy()
    ok(proxy.createStorageRepository("localfs-1", {"path": mountpoint}, {"force": True}))
    ok(proxy.connectStorageRepository("hung", "localfs-1", {"path": mountpoint}, {}))
    remote = new_disk(proxy, repo="hung", size=GiB)
    local = new_disk(proxy)
    assert ok(proxy.getStorageRepositoryList())["repos"]["hung"]["valid"]

    flag.write_text("")  # from now on every call on the mount blocks in the kernel
    begin = time.monotonic()
    answer = proxy.getImageInfo("hung", remote)
    assert code(answer) == 5005 and TIMEOUT * 0.9 < time.monotonic() - begin < 2 * TIMEOUT

    stop = threading.Event()
    hung_codes: list[int] = []

    def keep_calling_the_hung_one() -> None:
        other = daemon.proxy()
        calls = itertools.cycle([lambda: other.getImageInfo("hung", remote),
                                 lambda: other.createVirtualDisk("hung", str(GiB), "", {}, {}),
                                 lambda: other.checkStorageRepository("hung")])
        while not stop.is_set():  # looked at between calls: each takes the whole timeout
            hung_codes.append(code(next(calls)()))

    callers = [threading.Thread(target=keep_calling_the_hung_one) for _ in range(3)]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: len(hung_codes) >= 3, timeout=60, what="hung calls failing by their timeout")
        samples = {
            "ping": [timed(proxy.ping) for _ in range(50)],
            "getImageInfo local": [timed(lambda: proxy.getImageInfo("local", local)) for _ in range(30)],
            "getStorageRepositoryList": [timed(proxy.getStorageRepositoryList) for _ in range(20)],
            "createVirtualDisk local": [timed(lambda: proxy.createVirtualDisk("local", str(GiB), "", {},
                                                                              {"autoFix": False}))
                                        for _ in range(10)],
            "getImageStatus hung": [timed(lambda: proxy.getImageStatus("hung", remote)) for _ in range(20)],
        }
    finally:
        stop.set()
        for caller in callers:
            caller.join(60)
    assert not any(caller.is_alive() for caller in callers)
    for name, took in samples.items():
        assert max(took) < TIMEOUT / 2, f"{name}: {max(took):.2f} s, as if it waited on the hung repository"
    assert hung_codes and set(hung_codes) == {5005}, hung_codes

    wait_for(lambda: not ok(proxy.getStorageRepositoryList())["repos"]["hung"]["valid"], timeout=30,
             what="the monitor seeing the hang")
    flag.unlink()  # the server is back: the stuck calls return and the repository serves again
    wait_for(lambda: code(proxy.getImageInfo("hung", remote)) == 0, timeout=60, what="the repository back")
    wait_image(proxy, "hung", new_disk(proxy, repo="hung"))
