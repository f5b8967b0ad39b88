"""The index snapshot of localfs-1 repositories (hsm.storage.snapshot): a start reads one file, not one per
record, and still sees every change, its own (a kill -9 included) and those made behind its back while it
was down, which the scan after the start finds. Real hsmd processes over XML-RPC on the embedded `local`
repository; records are edited on storage as an admin would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest

from hsm.errors import StorageTimeout
from hsm.storage import repository as repositories
from hsm.storage.ioprocess import IOProcess
from hsm.storage.repository import FileRepository
from tests.images_helpers import (
    GiB,
    MiB,
    code,
    local_path,
    new_disk,
    new_snapshot,
    ok,
    qemu_reads,
    qemu_write,
    top_path,
    wait_image,
)
from tests.waiting import wait_for

RECORDS_ONLY = {"autoFix": False}


def snapshot_dir(daemon) -> str:
    [folder] = os.listdir(os.path.join(daemon.state_dir, "index"))
    return os.path.join(daemon.state_dir, "index", folder)


def everything(proxy, repo: str = "local") -> dict[str, dict]:
    """What a user sees of every image: its info, by id."""
    return {image_id: ok(proxy.getImageInfo(repo, image_id))["image"]
            for image_id in ok(proxy.getImageList(repo))["images"]}


def record_path(daemon, image_id: str) -> str:
    return os.path.join(local_path(daemon), "images", image_id + ".json")


def scanned(daemon) -> bool:
    return "every record read after the start from its snapshot" in daemon.log_text()


def disk_with(proxy, user_data: dict) -> str:
    disk = ok(proxy.createVirtualDisk("local", str(GiB), "", user_data, {}))["imageId"]
    wait_image(proxy, "local", disk)
    return disk


def some_images(proxy) -> list[str]:
    """Disks, a snapshot and a disk on it, a removed disk (each complete: a start resumes nothing)."""
    disks = [disk_with(proxy, {"n": i}) for i in range(20)]
    snapshot = new_snapshot(proxy, disks[0])
    on_it = new_disk(proxy, base=snapshot)
    ok(proxy.removeImage("local", disks[1], {}))
    wait_for(lambda: code(proxy.getImageInfo("local", disks[1])) == 268, timeout=60, what="the clean")
    return [*disks, snapshot, on_it]


def test_a_restart_reads_the_snapshot_and_shows_the_same_images(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    some_images(proxy)
    before = everything(proxy)
    assert daemon.stop() == 0
    with open(os.path.join(snapshot_dir(daemon), "snapshot"), "rb") as f:
        assert json.loads(f.readline())["images"] >= len(before)
    proxy = daemon.start().proxy()
    assert "loaded from its index snapshot" in daemon.log_text()
    assert everything(proxy) == before
    wait_for(lambda: scanned(daemon), timeout=60, what="the scan of every record")
    assert "behind hsmd's back" not in daemon.log_text()  # nothing differed
    assert everything(proxy) == before


def test_kill_9_loses_no_acknowledged_change(make_hsmd):
    """After the snapshot, changes go to its journal before the verb answers: a kill -9 keeps them."""
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    images = some_images(proxy)
    assert daemon.stop() == 0
    proxy = daemon.start().proxy()
    made = [disk_with(proxy, {"after": i}) for i in range(10)]
    ok(proxy.removeImage("local", images[2], {}))
    ok(proxy.removeImage("local", made[0], {}))
    wait_for(lambda: {code(proxy.getImageInfo("local", gone)) for gone in (images[2], made[0])} == {268},
             timeout=60, what="the cleans")
    before = everything(proxy)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    proxy = daemon.start().proxy()
    assert daemon.log_text().count("loaded from its index snapshot") == 2
    assert everything(proxy) == before
    assert made[0] not in before and set(made[1:]) <= set(before)


def test_changes_made_while_hsmd_was_down_are_seen(make_hsmd):
    """An admin edits one record, deletes another and adds a third while hsmd is stopped: a verb naming an
    image reads its record first, and the scan after the start finds the rest."""
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    images = some_images(proxy)
    edited, deleted, template = images[5], images[6], images[7]
    assert daemon.stop() == 0
    with open(record_path(daemon, edited)) as f:
        record = json.load(f)
    record["userData"] = {"edited": "by an admin"}
    with open(record_path(daemon, edited), "w") as f:
        json.dump(record, f)
    os.unlink(record_path(daemon, deleted))
    with open(record_path(daemon, template)) as f:
        added = json.load(f)
    added["id"] = str(uuid.uuid4())
    added["volumes"] = [{"id": str(uuid.uuid4()), "image": added["id"], "format": "qcow2"}]
    with open(record_path(daemon, added["id"]), "w") as f:
        json.dump(added, f)
    proxy = daemon.start().proxy()
    assert "loaded from its index snapshot" in daemon.log_text()
    assert ok(proxy.getImageInfo("local", edited))["image"]["userData"] == {"edited": "by an admin"}
    wait_for(lambda: scanned(daemon), timeout=60, what="the scan of every record")
    listed = set(ok(proxy.getImageList("local"))["images"])
    assert added["id"] in listed and deleted not in listed
    assert code(proxy.getImageInfo("local", deleted)) == 268
    assert f"Image record {added['id']} in local was changed behind hsmd's back" in daemon.log_text()
    assert daemon.stop() == 0
    proxy = daemon.start().proxy()  # and the next snapshot holds what the scan found
    assert added["id"] in ok(proxy.getImageList("local"))["images"]


def test_a_snapshot_that_cannot_be_used_means_reading_every_record(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    some_images(proxy)
    before = everything(proxy)
    assert daemon.stop() == 0
    path = os.path.join(snapshot_dir(daemon), "snapshot")
    with open(path, "rb") as f:
        header, body = f.readline(), f.read()
    with open(path, "wb") as f:
        f.write(header + body.replace(b'"disk"', b'"dusk"', 1))  # a damaged row: its CRC-32 is wrong
    proxy = daemon.start().proxy()
    assert "cannot be used (its CRC-32 is wrong)" in daemon.log_text()
    assert everything(proxy) == before
    assert daemon.stop() == 0
    fields = json.loads(header)
    fields["boot"] = "another boot"  # written before the machine restarted: a journal line may be lost
    with open(path, "rb") as f:
        f.readline()
        body = f.read()
    with open(path, "wb") as f:
        f.write(json.dumps(fields).encode() + b"\n" + body)
    proxy = daemon.start().proxy()
    assert "cannot be used (its boot differ" in daemon.log_text()
    assert everything(proxy) == before


def test_no_volume_is_deleted_before_every_record_is_read(make_hsmd):
    """A disk an admin made on a removed snapshot while hsmd was down (its qcow2 over the snapshot's volume):
    the snapshot's fix, resumed at the start, deletes nothing before the scan has found the disk; whether
    it is then refused (a merge is needed) or merges the snapshot into the disk, the disk reads its data."""
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    for _ in range(600):  # records enough that the scan takes a while
        ok(proxy.createVirtualDisk("local", str(GiB), "", {}, RECORDS_ONLY))
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x5A, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    with open(record_path(daemon, disk)) as f:
        template = json.load(f)
    ok(proxy.removeImage("local", disk, {}))
    wait_for(lambda: code(proxy.getImageInfo("local", disk)) == 268, timeout=60, what="the disk's clean")
    ok(proxy.removeImage("local", snapshot, {"autoFix": False}))  # its clean waits for a start
    assert daemon.stop() == 0
    with open(record_path(daemon, snapshot)) as f:
        [own] = [vol for vol in json.load(f)["volumes"] if vol["image"] == snapshot]
    base = f"{own['id']}.{own['format']}"
    template["id"], top = str(uuid.uuid4()), str(uuid.uuid4())
    template["volumes"] = [{"id": top, "image": template["id"], "format": "qcow2"}, own]
    template["base"] = snapshot
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", own["format"],
                    os.path.join(local_path(daemon), "volumes", f"{top}.qcow2")], check=True)
    with open(record_path(daemon, template["id"]), "w") as f:
        json.dump(template, f)
    proxy = daemon.start().proxy()
    wait_for(lambda: scanned(daemon), timeout=120, what="the scan of every record")
    wait_for(lambda: "images read through it; it needs a merge fix" in daemon.log_text()
             or len(ok(proxy.getImageInfo("local", template["id"]))["image"]["volumes"]) == 1, timeout=120,
             what="the snapshot's fix to end (refused, or merged into the disk)")
    assert qemu_reads(top_path(proxy, "local", template["id"]), 0x5A, 0, MiB)


def test_deletions_wait_until_every_record_was_read(tmp_path):
    """In-process: a repository loaded from its snapshot refuses to delete files (5005 after the wait) until
    the scan has read every record; then they may go."""
    path, index = str(tmp_path / "repo"), str(tmp_path / "index")
    os.mkdir(path)
    io = IOProcess("test", timeout=30)
    try:
        repositories.create(path, "localfs-1", io)
        for loads in range(2):
            repo = FileRepository("r", path, "localfs-1", io)
            repo.snapshot_root = index
            repo.load()
            assert repo.scanned.is_set() == (loads == 0)  # the second load is from the snapshot
            if loads == 1:
                with pytest.raises(StorageTimeout):
                    repo.wait_scanned(timeout=0.2)
                repo.start_index_work()
                repo.wait_scanned(timeout=30)
            repo.write_snapshot()
    finally:
        io.close()


def test_a_formatted_domain_leaves_no_snapshot_behind(make_hsmd, tmp_path):
    """formatStorageDomain removes the repository's records, and with them the index snapshot kept for it."""
    daemon = make_hsmd().start()
    irs = daemon.proxy()
    path = tmp_path / "domain"
    path.mkdir()
    sd = str(uuid.uuid4())
    ok(irs.createStorageDomain(4, sd, "data", str(path), 1, 3))
    disk = ok(irs.createVirtualDisk(sd, str(GiB), "", {}, {}))["imageId"]
    wait_image(irs, sd, disk)
    index = os.path.join(daemon.state_dir, "index", sd)
    wait_for(lambda: os.path.exists(os.path.join(index, "snapshot")), timeout=30, what="the domain's snapshot")
    ok(irs.formatStorageDomain(sd, True))
    assert not os.path.exists(index)
