"""A hung repository through a real hsmd: a localfs-1 repository on a FUSE mount that blocks every call.

The FUSE filesystem (tests/hungfs.py) stands in for a dead NFS server, which
this kernel cannot mount: the hang is real, hsmd's I/O helper for that
repository sits in D state. The API and the other repositories must not
notice; calls that need the hung storage fail by their timeout (5005).
"""

import threading
import time

from tests.images_helpers import GiB, code, new_disk, ok, wait_image

TIMEOUT = 1.0


def p99(samples: list[float]) -> float:
    return sorted(samples)[int(0.99 * (len(samples) - 1))]


def timed(call) -> float:
    begin = time.monotonic()
    ok(call())
    return time.monotonic() - begin


def test_a_hung_repository_spares_the_api_and_the_others(make_hsmd, hung_mount):
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
    assert code(answer) == 5005 and TIMEOUT * 0.9 < time.monotonic() - begin < TIMEOUT + 1.5

    stop = threading.Event()
    hung_codes: list[int] = []

    def keep_calling_the_hung_one() -> None:
        other = daemon.proxy()
        while not stop.is_set():
            hung_codes.append(code(other.getImageInfo("hung", remote)))
            hung_codes.append(code(other.createVirtualDisk("hung", str(GiB), "", {}, {})))
            hung_codes.append(code(other.checkStorageRepository("hung")))

    callers = [threading.Thread(target=keep_calling_the_hung_one) for _ in range(3)]
    for caller in callers:
        caller.start()
    try:
        pings = [timed(proxy.ping) for _ in range(200)]
        infos = [timed(lambda: proxy.getImageInfo("local", local)) for _ in range(100)]
        lists = [timed(proxy.getStorageRepositoryList) for _ in range(50)]
        creates = [timed(lambda: proxy.createVirtualDisk("local", str(GiB), "", {}, {"autoFix": False}))
                   for _ in range(20)]
        status = [timed(lambda: proxy.getImageStatus("hung", remote)) for _ in range(50)]  # from the index
    finally:
        stop.set()
        for caller in callers:
            caller.join(30)
    for name, samples in (("ping", pings), ("getImageInfo local", infos), ("getStorageRepositoryList", lists),
                          ("createVirtualDisk local", creates), ("getImageStatus hung", status)):
        assert p99(samples) < 0.1, f"{name}: p99 {p99(samples) * 1000:.0f} ms"
    assert hung_codes and set(hung_codes) == {5005}, hung_codes

    deadline = time.monotonic() + 10
    while ok(proxy.getStorageRepositoryList())["repos"]["hung"]["valid"]:
        assert time.monotonic() < deadline, "the monitor did not see the hang"
        time.sleep(0.1)

    flag.unlink()  # the server is back: the stuck calls return and the repository serves again
    deadline = time.monotonic() + 20
    while code(proxy.getImageInfo("hung", remote)) != 0:
        assert time.monotonic() < deadline, "the repository did not come back"
        time.sleep(0.2)
    wait_image(proxy, "hung", new_disk(proxy, repo="hung"))
