"""[irs] options that change what hsmd does, each seen doing it through a real hsmd."""

import re
import threading
import time

from tests.images_helpers import MiB, code, new_disk, ok, qemu_write, top_path, wait_image
from tests.waiting import wait_for

IO_TIMEOUT = 20.0


def test_prepare_image_timeout_bounds_the_wait_for_a_busy_repository(make_hsmd, hung_mount):
    """Two VM starts on a repository whose storage stopped answering (a FUSE mount that
    blocks, standing in for a dead NFS server): one holds the repository while its
    check of the volumes hangs; the other gives up after prepare_image_timeout (851),
    long before the storage timeout, instead of holding an RPC worker for it."""
    mountpoint, flag = hung_mount
    daemon = make_hsmd(config={"irs": {"process_pool_timeout": IO_TIMEOUT, "prepare_image_timeout": 500,
                                       "sd_health_check_delay": 60}}).start()
    proxy = daemon.proxy()
    ok(proxy.createStorageRepository("localfs-1", {"path": mountpoint}, {"force": True}))
    ok(proxy.connectStorageRepository("hung", "localfs-1", {"path": mountpoint}, {}))
    disk = new_disk(proxy, repo="hung", size=MiB)
    flag.write_text("")  # from now on every call on the mount blocks in the kernel
    answers: list[tuple[int, float]] = []

    def start_vm() -> None:
        begin = time.monotonic()
        answer = daemon.proxy(timeout=IO_TIMEOUT + 30).prepareImage("hung", disk, {})
        answers.append((code(answer), time.monotonic() - begin))

    starts = [threading.Thread(target=start_vm) for _ in range(2)]
    for start in starts:
        start.start()
    gave_up = wait_for(lambda: [seconds for found, seconds in answers if found == 851], timeout=IO_TIMEOUT,
                       what="one prepare giving up on the busy repository")
    assert 0.4 < gave_up[0] < IO_TIMEOUT / 2
    assert ok(proxy.ping())
    flag.unlink()  # the storage answers again: the other prepare ends as well
    for start in starts:
        start.join(IO_TIMEOUT + 30)
    assert len(answers) == 2
    assert [found for found, _ in answers if found != 851] in ([0], [5005])  # it held the repository


def test_progress_interval_writes_progress_lines_of_long_copies(make_hsmd):
    daemon = make_hsmd(config={"irs": {"progress_interval": 0}}).start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=256 * MiB)
    qemu_write(top_path(proxy, "local", disk), 0x11, 0, 256 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    wait_image(proxy, "local", copy)
    percents = [int(p) for p in re.findall(rf"copy of {copy} in local: (\d+)%", daemon.log_text())]
    assert len(percents) >= 2 and percents == sorted(percents)


def test_the_default_progress_interval_keeps_short_copies_quiet(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=16 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    wait_image(proxy, "local", copy)
    assert f"copy of {copy} in local:" not in daemon.log_text()  # 30 s between lines; the copy took less
