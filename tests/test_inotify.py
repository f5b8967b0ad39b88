"""What hsmd notices at once through inotify (hsm/watch.py), with real processes and real mounts."""

import json
import os

import pytest

from tests.images_helpers import MiB, code, new_disk, new_snapshot, ok, top_path, wait_image
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")

BACKOFF = 120  # seconds between reconnect attempts: far longer than any wait below


def test_storage_reconnects_as_soon_as_supervdsmd_is_back(tmp_path, make_hsmd):
    """A bind mount asked for while supervdsmd is down fails and backs off for minutes; the
    moment supervdsmd binds its socket again, hsmd tries again and the mount is made."""
    repository = tmp_path / "rhev"
    supervdsmd = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository)}},
                            mount_sources=str(tmp_path))
    os.makedirs(os.path.dirname(supervdsmd.socket))  # its folder exists, as /run/hsm does
    config = {"supervdsm": {"socket": supervdsmd.socket, "connect_timeout": 0.2},
              "irs": {"repository": str(repository)},
              "connections": {"monitor_interval": BACKOFF, "reconnect_backoff_min": BACKOFF,
                              "reconnect_backoff_max": BACKOFF}}
    daemon = make_hsmd(config=config).start()
    proxy = daemon.proxy()
    export = tmp_path / "export"
    export.mkdir()
    ok(proxy.manageStorageServer(f"posixfs://?spec={export}&vfsType=none&options=bind", "store"))
    failed = wait_for(lambda: ok(proxy.getStorageServerList())["servers"]["store"]["lastError"], what="a failure")
    assert "supervdsmd is not reachable" in failed["message"], failed
    supervdsmd.start()
    try:
        wait_for(lambda: ok(proxy.getStorageServerList())["servers"]["store"]["connected"], timeout=BACKOFF / 4,
                 what="the mount, without waiting out the backoff")
        assert "supervdsmd's socket is back" in daemon.log_text()
    finally:
        ok(proxy.unmanageStorageServer("store"))
        supervdsmd.kill()


@pytest.fixture
def local(make_hsmd):
    """hsmd with its monitor and checks far away: only inotify can notice a change in time."""
    daemon = make_hsmd(config={"irs": {"sd_health_check_delay": 600}}).start()
    return daemon, daemon.proxy(), os.path.join(daemon.state_dir, "local")


def status(proxy, image_id: str) -> dict:
    return ok(proxy.getImageStatus("local", image_id))["image"]


def test_a_volume_removed_behind_hsmds_back_breaks_its_image_at_once(local):
    daemon, proxy, path = local
    disk = new_disk(proxy, size=MiB)
    volume = top_path(proxy, "local", disk)
    os.rename(volume, volume + ".moved")
    broken = wait_for(lambda: status(proxy, disk)["state"] == "broken" and status(proxy, disk), timeout=10,
                      what="the image broken without a check")
    assert broken["lastError"]["code"] == 201 and "behind hsmd's back" in broken["lastError"]["message"]
    os.rename(volume + ".moved", volume)  # the admin puts it back: the next check sees it
    ok(proxy.checkStorageRepository("local"))
    assert status(proxy, disk)["state"] == "optimized"


def test_records_changed_behind_hsmds_back_are_read_again_at_once(local):
    daemon, proxy, path = local
    disk, other = new_disk(proxy, size=MiB), new_disk(proxy, size=MiB)
    record = os.path.join(path, "images", f"{disk}.json")
    with open(record, "rb") as f:
        good = f.read()
    with open(record, "wb") as f:
        f.write(b"{damaged")
    wait_for(lambda: status(proxy, disk)["lastError"].get("code") == 207, timeout=10, what="the damage seen")
    assert code(proxy.removeImage("local", disk, {})) == 207  # nothing is done to what hsmd cannot read
    with open(record, "wb") as f:  # repaired
        f.write(good)
    wait_for(lambda: status(proxy, disk)["state"] == "optimized", timeout=10, what="the repaired record read")
    edited = json.loads(good)
    edited["userData"] = {"owner": "admin"}
    with open(record, "w") as f:
        json.dump(edited, f)
    wait_for(lambda: ok(proxy.getImageInfo("local", disk))["image"]["userData"] == {"owner": "admin"}, timeout=10,
             what="the edited record read")
    os.unlink(os.path.join(path, "images", f"{other}.json"))
    wait_for(lambda: other not in ok(proxy.getImageList("local"))["images"], timeout=10, what="the deleted record")


def test_hsmds_own_writes_and_removals_are_not_news(local):
    """A burst of hsmd's own work (creates, snapshots, copies, removals and their cleans) through the watch:
    nothing is taken for a change behind its back, and every image ends as it should."""
    daemon, proxy, path = local
    disks = [new_disk(proxy, size=MiB) for _ in range(5)]
    snapshots = [new_snapshot(proxy, disk) for disk in disks[:3]]
    copies = [ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"] for disk in disks[:3]]
    for copy in copies:
        wait_image(proxy, "local", copy)
    for image in [disks[3], disks[4], *snapshots]:
        ok(proxy.removeImage("local", image, {}))
    wait_for(lambda: ok(proxy.checkStorageRepository("local"))["fixes"] == [], timeout=180, what="cleans done")
    log = daemon.log_text()
    assert "behind hsmd's back" not in log
    for image in [*disks[:3], *copies]:
        assert status(proxy, image)["state"] == "optimized"
