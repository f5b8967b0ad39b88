"""Images on a real hsmd over XML-RPC, with real qemu-img volumes checked by qemu-io and qemu-img.

Every test starts from hsmd's embedded default: a localfs-1 repository under
its state dir, connected as 'local'.
"""

import os

from tests.images_helpers import (
    GiB,
    MiB,
    backing_chain,
    code,
    local_path,
    new_disk,
    new_snapshot,
    ok,
    qemu_check,
    qemu_reads,
    qemu_write,
    top_path,
    volume_files,
    wait_image,
)
from tests.waiting import wait_for


def second_repository(proxy, tmp_path, name: str = "second") -> str:
    path = tmp_path / name
    path.mkdir()
    ok(proxy.createStorageRepository("localfs-1", {"path": str(path)}, {}))
    ok(proxy.connectStorageRepository(name, "localfs-1", {"path": str(path)}, {}))
    return str(path)


def test_the_embedded_default_repository_is_ready(proxy, hsmd):
    repos = ok(proxy.getStorageRepositoryList())["repos"]
    local = repos["local"]
    assert local["format"] == "localfs-1" and local["connected"] and local["valid"]
    assert int(local["totalBytes"]) > int(local["freeBytes"]) > 0
    assert float(local["readDelay"]) < 1
    assert "localfs-1" in ok(proxy.getCapabilities())["info"]["repoFormats"]
    assert os.path.exists(os.path.join(local_path(hsmd), "repository.json"))


def test_create_commits_at_once_and_completes_as_a_fix(proxy):
    answer = ok(proxy.createVirtualDisk("local", str(3 * GiB), "", {"name": "boot"}, {}))
    disk = answer["imageId"]
    early = ok(proxy.getImageStatus("local", disk))["image"]
    assert early["state"] in ("broken", "optimized")  # broken: not usable until its fix made the volume
    info = wait_image(proxy, "local", disk)
    assert info["kind"] == "disk" and info["size"] == str(3 * GiB) and info["userData"] == {"name": "boot"}
    assert info["hostId"] == 1 and info["percentComplete"] == 100 and info["lastError"] == {}
    [volume] = info["volumes"]
    assert volume["format"] == "qcow2" and volume["capacity"] == str(3 * GiB)
    [layer] = backing_chain(volume["path"])
    assert layer["virtual-size"] == 3 * GiB and layer["format"] == "qcow2"
    assert disk in ok(proxy.getImageList("local"))["images"]


def test_a_snapshot_keeps_the_data_of_its_moment(proxy):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x11, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    disk_path = top_path(proxy, "local", disk)
    qemu_write(disk_path, 0x22, 0, MiB)
    snap_info = ok(proxy.getImageInfo("local", snapshot))["image"]
    assert snap_info["kind"] == "snapshot" and snap_info["state"] == "optimized"
    assert qemu_reads(snap_info["volumes"][0]["path"], 0x11, 0, MiB)
    assert qemu_reads(disk_path, 0x22, 0, MiB)
    disk_info = ok(proxy.getImageInfo("local", disk))["image"]
    assert [v["id"] for v in disk_info["volumes"][1:]] == [v["id"] for v in snap_info["volumes"]]
    assert disk_info["baseSnapshotId"] == snapshot
    assert ok(proxy.isSnapshotOf(disk, snapshot))["result"] is True
    assert [layer["filename"] for layer in backing_chain(disk_path)][1] == snap_info["volumes"][0]["path"]
    assert code(proxy.createSnapshot("local", snapshot, {}, {})) == 5011  # no snapshot of a snapshot


def test_disks_on_a_snapshot_by_strategy(proxy):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x33, 4 * MiB, MiB)
    snapshot = new_snapshot(proxy, disk)
    space = new_disk(proxy, base=snapshot)
    performance = ok(proxy.createVirtualDisk("local", str(GiB), snapshot, {}, {"strategy": "performance"}))["imageId"]
    info = wait_image(proxy, "local", performance)
    assert len(info["volumes"]) == 1 and info["baseSnapshotId"] == snapshot
    assert len(backing_chain(info["volumes"][0]["path"])) == 1  # stands alone
    assert qemu_reads(info["volumes"][0]["path"], 0x33, 4 * MiB, MiB)
    space_info = ok(proxy.getImageInfo("local", space))["image"]
    assert len(space_info["volumes"]) == 2 and space_info["state"] == "optimized"
    assert qemu_reads(space_info["volumes"][0]["path"], 0x33, 4 * MiB, MiB)
    assert ok(proxy.isSnapshotOf(space, snapshot))["result"] and ok(proxy.isSnapshotOf(performance, snapshot))["result"]
    assert not ok(proxy.isSnapshotOf(disk, space))["result"]
    assert set(ok(proxy.getImageList("local", {"kind": "snapshot"}))["images"]) == {snapshot}


def test_copies_whole_and_by_difference_across_repositories(proxy, tmp_path):
    second_repository(proxy, tmp_path)
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x41, 0, 8 * MiB)
    first = new_snapshot(proxy, disk)
    qemu_write(top_path(proxy, "local", disk), 0x42, 16 * MiB, MiB)
    second = new_snapshot(proxy, disk)
    qemu_write(top_path(proxy, "local", disk), 0x43, 32 * MiB, MiB)

    assert ok(proxy.copyImage("second", first, "", {}, {}))["imageId"] == first  # a snapshot keeps its id
    whole = wait_image(proxy, "second", first)
    assert len(whole["volumes"]) == 1 and qemu_reads(whole["volumes"][0]["path"], 0x41, 0, 8 * MiB)

    assert ok(proxy.copyImage("second", second, first, {}, {}))["imageId"] == second
    diff = wait_image(proxy, "second", second)
    assert [v["image"] for v in diff["volumes"]] == [second, first]
    assert int(diff["volumes"][0]["allocated"]) < 4 * MiB < int(whole["volumes"][0]["allocated"])
    top = diff["volumes"][0]["path"]
    assert qemu_reads(top, 0x41, 0, 8 * MiB) and qemu_reads(top, 0x42, 16 * MiB, MiB)

    # A disk two snapshots above the base: its top and the snapshot between both come over.
    copy = ok(proxy.copyImage("second", disk, first, {}, {}))["imageId"]
    assert copy != disk
    info = wait_image(proxy, "second", copy)
    path = info["volumes"][0]["path"]
    assert all(qemu_reads(path, p, o, MiB) for p, o in ((0x41, 0), (0x42, 16 * MiB), (0x43, 32 * MiB)))
    assert int(info["volumes"][0]["allocated"]) < 4 * MiB
    for image in (first, second, copy):
        qemu_check(top_path(proxy, "second", image))
    unrelated = new_disk(proxy)
    assert code(proxy.copyImage("second", unrelated, first, {}, {})) == 262  # not made on that snapshot


def test_copy_reports_progress_and_a_snapshot_copied_beside_itself_is_itself(proxy, hsmd):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x51, 0, 256 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    seen = set()

    def copied() -> bool:
        image = ok(proxy.getImageStatus("local", copy))["image"]
        seen.add(image["percentComplete"])
        return image["state"] == "optimized" and not image["tasks"]

    wait_for(copied, timeout=180, what=lambda: f"the copy optimized (progress seen: {sorted(seen)})", poll=0.005)
    assert seen & set(range(1, 100)), seen
    assert ok(proxy.getImageTasks(copy))["tasks"] == []
    snapshot = new_snapshot(proxy, disk)
    files = volume_files(local_path(hsmd))
    again = ok(proxy.copyImage("local", snapshot, "", {}, {}))
    assert again["imageId"] == snapshot  # idempotent: the repository holds that snapshot already
    assert ok(proxy.getImageStatus("local", snapshot))["image"]["tasks"] == []
    assert volume_files(local_path(hsmd)) == files


def test_removing_a_disk_gives_its_space_back(proxy, hsmd):
    disk = new_disk(proxy)
    before = volume_files(local_path(hsmd))
    ok(proxy.removeImage("local", disk, {}))
    assert disk not in ok(proxy.getImageList("local"))["images"]
    assert code(proxy.getImageStatus("local", disk)) == 268
    record = os.path.join(local_path(hsmd), "images", disk + ".json")
    wait_for(lambda: not os.path.exists(record), timeout=180, what="the image record gone")
    assert len(volume_files(local_path(hsmd))) == len(before) - 1


def test_removing_a_snapshot_merges_it_into_every_child(proxy, hsmd):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x61, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    other = new_disk(proxy, base=snapshot)
    qemu_write(top_path(proxy, "local", other), 0x62, 2 * MiB, MiB)
    snap_file = os.path.basename(ok(proxy.getImageInfo("local", snapshot))["image"]["volumes"][0]["path"])
    ok(proxy.removeImage("local", snapshot, {}))
    wait_for(lambda: snap_file not in volume_files(local_path(hsmd)), timeout=180, what="the snapshot's volume gone")
    for image, checks in ((disk, [(0x61, 0)]), (other, [(0x61, 0), (0x62, 2 * MiB)])):
        info = ok(proxy.getImageInfo("local", image))["image"]
        assert len(info["volumes"]) == 1 and info["baseSnapshotId"] == "" and info["state"] == "optimized"
        path = info["volumes"][0]["path"]
        assert len(backing_chain(path)) == 1
        assert all(qemu_reads(path, pattern, offset, MiB) for pattern, offset in checks)
        qemu_check(path)
    assert not ok(proxy.isSnapshotOf(other, snapshot))["result"]
    assert ok(proxy.checkStorageRepository("local"))["fixes"] == []


def test_prepare_and_teardown(proxy):
    disk = new_disk(proxy)
    answer = ok(proxy.prepareImage("local", disk))
    assert answer["path"] == top_path(proxy, "local", disk) and answer["readonly"] is False
    assert code(proxy.removeImage("local", disk, {})) == 203
    assert code(proxy.createSnapshot("local", disk, {}, {})) == 203
    ok(proxy.teardownImage("local", disk))
    assert code(proxy.teardownImage("local", disk)) == 230
    snapshot = new_snapshot(proxy, disk)
    assert ok(proxy.prepareImage("local", snapshot))["readonly"] is True
    assert code(proxy.prepareImage("local", snapshot, {"readonly": False})) == 5011  # no writing to a snapshot
    ok(proxy.teardownImage("local", snapshot))


def test_images_are_found_across_repositories_unless_narrowed(proxy, tmp_path):
    second_repository(proxy, tmp_path)
    disk = new_disk(proxy, repo="second")
    assert ok(proxy.getImageTasks(disk))["tasks"] == []
    assert code(proxy.getImageTasks(disk, {"participatingRepositories": ["local"]})) == 268
    assert code(proxy.getImageTasks(disk, {"imageHints": {disk: "local"}})) == 268
    ok(proxy.getImageTasks(disk, {"imageHints": {disk: "second"}}))
    copy = ok(proxy.copyImage("local", disk, "", {}, {"participatingRepositories": ["second"]}))["imageId"]
    wait_image(proxy, "local", copy)
    assert code(proxy.getImageStatus("second", copy)) == 268


def test_request_id_and_caller_ids_make_creates_idempotent(proxy):
    options = {"requestId": "create-1"}
    first = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, options))["imageId"]
    again = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, options))["imageId"]
    assert first == again
    assert code(proxy.createVirtualDisk("local", str(2 * GiB), "", {}, options)) == 5000
    chosen = {"imageId": "my-disk-1"}
    assert ok(proxy.createVirtualDisk("local", str(GiB), "", {}, chosen))["imageId"] == "my-disk-1"
    wait_image(proxy, "local", "my-disk-1")
    assert ok(proxy.createVirtualDisk("local", str(GiB), "", {}, chosen))["imageId"] == "my-disk-1"
    assert code(proxy.createVirtualDisk("local", str(2 * GiB), "", {}, chosen)) == 5010
    assert sorted(ok(proxy.getImageList("local"))["images"]) == sorted([first, "my-disk-1"])


def test_transparent_mode_fixes_carry_the_callers_task_id(proxy):
    ok(proxy.setTaskMode("transparent"))
    before = ok(proxy.getImageList("local"))["images"]
    assert code(proxy.createVirtualDisk("local", str(GiB), "", {}, {})) == 5008
    assert ok(proxy.getImageList("local"))["images"] == before  # refused before anything was written
    disk = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {"taskId": "engine-task-1"}))["imageId"]
    wait_image(proxy, "local", disk)
    status = ok(proxy.getTaskStatus("engine-task-1"))["taskStatus"]
    assert status["taskResult"] == "success" and status["verb"] == "createVirtualDisk"
    assert f"image:{disk}" in status["tags"]
    later = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {"autoFix": False}))["imageId"]
    assert ok(proxy.getImageStatus("local", later))["image"]["state"] == "broken"
    [fix] = ok(proxy.checkStorageRepository("local"))["fixes"]
    assert fix["type"] == "mend" and fix["imageId"] == later
    assert code(proxy.fixStorageRepository("local", fix["fix"], {})) == 5008
    task = ok(proxy.fixStorageRepository("local", fix["fix"], {"taskId": "engine-task-2"}))["taskId"]
    assert task == "engine-task-2"
    wait_image(proxy, "local", later)


def test_transparent_mode_leaves_an_interrupted_fix_to_the_caller(make_hsmd):
    daemon = make_hsmd(config={"tasks": {"mode": "transparent"}}).start()
    proxy = daemon.proxy()
    disk = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {"taskId": "engine-create"}))["imageId"]
    wait_image(proxy, "local", disk)
    qemu_write(top_path(proxy, "local", disk), 0x5C, 0, 512 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {"taskId": "engine-copy"}))["imageId"]
    daemon.kill()  # in the middle of the copy
    daemon.start()
    proxy = daemon.proxy()
    status = ok(proxy.getTaskStatus("engine-copy"))["taskStatus"]
    assert status["state"] == "waitrecover" and status["taskState"] == "cleaning"
    # hsmd decided at start-up, before it answered, to leave the copy's task waiting: no wait needed.
    decided = [line for line in daemon.log_text().splitlines() if "Recovered tasks:" in line]
    assert "'waiting': 1" in decided[-1], decided
    assert ok(proxy.getImageStatus("local", copy))["image"]["state"] == "broken"  # hsmd did nothing alone
    ok(proxy.recoverTask("engine-copy"))
    info = wait_image(proxy, "local", copy)
    assert qemu_reads(info["volumes"][0]["path"], 0x5C, 0, 512 * MiB)
    assert ok(proxy.getTaskStatus("engine-copy"))["taskStatus"]["taskResult"] == "success"
