"""Images on a real hsmd over XML-RPC, with real qemu-img volumes checked by qemu-io and qemu-img.

Each test runs on every repository format (tests/images_helpers.py `repositories`): hsmd's embedded
default, a localfs-1 repository under its state dir connected as 'local', and a block-1 repository (a VG on
a loop device, through a real supervdsmd) connected as 'blk'. Volumes are read and written as a user does,
through prepareImage's path; what storage holds is looked at as a user would: volume and record files, or
the VG's LVs and its metadata LV's slots.
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
    own_data,
    qemu_check,
    qemu_reads,
    qemu_write,
    top_path,
    wait_image,
)
from tests.waiting import wait_for


def test_the_embedded_default_repository_is_ready(proxy, hsmd):
    """localfs-1 only: the embedded default is a localfs-1 repository under hsmd's state dir."""
    repos = ok(proxy.getStorageRepositoryList())["repos"]
    local = repos["local"]
    assert local["format"] == "localfs-1" and local["connected"] and local["valid"]
    assert int(local["totalBytes"]) > int(local["freeBytes"]) > 0
    assert float(local["readDelay"]) < 1
    assert "localfs-1" in ok(proxy.getCapabilities())["info"]["repoFormats"]
    assert os.path.exists(os.path.join(local_path(hsmd), "repository.json"))


def test_create_commits_at_once_and_completes_as_a_fix(repo):
    proxy = repo.proxy
    answer = ok(proxy.createVirtualDisk(repo.id, str(3 * GiB), "", {"name": "boot"}, {}))
    disk = answer["imageId"]
    early = ok(proxy.getImageStatus(repo.id, disk))["image"]
    assert early["state"] in ("broken", "optimized")  # broken: not usable until its fix made the volume
    info = wait_image(proxy, repo.id, disk)
    assert info["kind"] == "disk" and info["size"] == str(3 * GiB) and info["userData"] == {"name": "boot"}
    assert info["hostId"] == 1 and info["percentComplete"] == 100 and info["lastError"] == {}
    [volume] = info["volumes"]
    assert volume["format"] == "qcow2" and volume["capacity"] == str(3 * GiB)
    with repo.opened(disk) as path:
        assert path == volume["path"]
        [layer] = backing_chain(path)
    assert layer["virtual-size"] == 3 * GiB and layer["format"] == "qcow2"
    assert disk in ok(proxy.getImageList(repo.id))["images"]
    assert disk in repo.records() and volume["id"] in repo.volumes()


def test_a_snapshot_keeps_the_data_of_its_moment(repo):
    proxy = repo.proxy
    disk = repo.written_disk(0x11)
    snapshot = new_snapshot(proxy, disk, repo.id)
    snap_info = ok(proxy.getImageInfo(repo.id, snapshot))["image"]
    assert snap_info["kind"] == "snapshot" and snap_info["state"] == "optimized"
    with repo.opened(disk) as disk_path:
        qemu_write(disk_path, 0x22, 0, MiB)
        assert qemu_reads(disk_path, 0x22, 0, MiB)
        assert [layer["filename"] for layer in backing_chain(disk_path)][1] == snap_info["volumes"][0]["path"]
    with repo.opened(snapshot) as snap_path:
        assert qemu_reads(snap_path, 0x11, 0, MiB)
    disk_info = ok(proxy.getImageInfo(repo.id, disk))["image"]
    assert [v["id"] for v in disk_info["volumes"][1:]] == [v["id"] for v in snap_info["volumes"]]
    assert disk_info["baseSnapshotId"] == snapshot
    assert ok(proxy.isSnapshotOf(disk, snapshot))["result"] is True
    assert code(proxy.createSnapshot(repo.id, snapshot, {}, {})) == 5011  # no snapshot of a snapshot


def test_disks_on_a_snapshot_by_strategy(repo):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id)
    with repo.opened(disk) as path:
        qemu_write(path, 0x33, 4 * MiB, MiB)
    snapshot = new_snapshot(proxy, disk, repo.id)
    space = new_disk(proxy, repo.id, base=snapshot)
    performance = ok(proxy.createVirtualDisk(repo.id, str(GiB), snapshot, {}, {"strategy": "performance"}))["imageId"]
    info = wait_image(proxy, repo.id, performance)
    assert len(info["volumes"]) == 1 and info["baseSnapshotId"] == snapshot
    with repo.opened(performance) as path:
        assert len(backing_chain(path)) == 1  # stands alone
        assert qemu_reads(path, 0x33, 4 * MiB, MiB)
    space_info = ok(proxy.getImageInfo(repo.id, space))["image"]
    assert len(space_info["volumes"]) == 2 and space_info["state"] == "optimized"
    with repo.opened(space) as path:
        assert qemu_reads(path, 0x33, 4 * MiB, MiB)
    assert ok(proxy.isSnapshotOf(space, snapshot))["result"] and ok(proxy.isSnapshotOf(performance, snapshot))["result"]
    assert not ok(proxy.isSnapshotOf(disk, space))["result"]
    assert set(ok(proxy.getImageList(repo.id, {"kind": "snapshot"}))["images"]) == {snapshot}


def snapshots_between(repo, *writes: tuple[int, int, int]) -> tuple[str, list[str]]:
    """A new disk written with each (pattern, offset, length) in turn, a snapshot taken between two writes:
    (the disk, its snapshots, oldest first)."""
    disk = new_disk(repo.proxy, repo.id)
    snapshots = []
    for n, (pattern, offset, length) in enumerate(writes):
        if n:
            snapshots.append(new_snapshot(repo.proxy, disk, repo.id))
        with repo.opened(disk) as path:
            qemu_write(path, pattern, offset, length)
    return disk, snapshots


def test_copies_whole_and_by_difference_across_repositories(repo):
    proxy = repo.proxy
    second = repo.second()
    disk, (first, later) = snapshots_between(repo, (0x41, 0, 8 * MiB), (0x42, 16 * MiB, MiB), (0x43, 32 * MiB, MiB))

    assert ok(proxy.copyImage(second.id, first, "", {}, {}))["imageId"] == first  # a snapshot keeps its id
    whole = wait_image(proxy, second.id, first)
    assert len(whole["volumes"]) == 1
    with second.opened(first) as path:
        assert qemu_reads(path, 0x41, 0, 8 * MiB) and own_data(path) >= 8 * MiB

    assert ok(proxy.copyImage(second.id, later, first, {}, {}))["imageId"] == later
    diff = wait_image(proxy, second.id, later)
    assert [v["image"] for v in diff["volumes"]] == [later, first]
    if repo.thin:  # the storage it takes, too, is only the difference
        assert int(diff["volumes"][0]["allocated"]) < 4 * MiB < int(whole["volumes"][0]["allocated"])
    with second.opened(later) as top:
        assert own_data(top) < 4 * MiB  # only the difference
        assert qemu_reads(top, 0x41, 0, 8 * MiB) and qemu_reads(top, 0x42, 16 * MiB, MiB)

    # A disk two snapshots above the base: its top and the snapshot between both come over.
    copy = ok(proxy.copyImage(second.id, disk, first, {}, {}))["imageId"]
    assert copy != disk
    info = wait_image(proxy, second.id, copy)
    with second.opened(copy) as path:
        assert all(qemu_reads(path, p, o, MiB) for p, o in ((0x41, 0), (0x42, 16 * MiB), (0x43, 32 * MiB)))
        assert own_data(path) < 4 * MiB
    if repo.thin:
        assert int(info["volumes"][0]["allocated"]) < 4 * MiB
    for image in (first, later, copy):
        with second.opened(image) as path:
            qemu_check(path)
    unrelated = new_disk(proxy, repo.id)
    assert code(proxy.copyImage(second.id, unrelated, first, {}, {})) == 262  # not made on that snapshot


def test_a_space_copy_goes_over_a_snapshot_the_target_holds(repo):
    """strategy=space (the default) without a base: the copy of a disk is a qcow2 over the snapshot below it that
    the target already holds (a copy of that snapshot), holding only what differs; strategy=performance copies
    it whole. A snapshot the target holds under that id but taken of other data (a caller chose the id) is
    never used."""
    proxy = repo.proxy
    second, third = repo.second(), repo.second("third")
    disk, (snapshot,) = snapshots_between(repo, (0x41, 0, 8 * MiB), (0x43, 32 * MiB, MiB))
    ok(proxy.copyImage(second.id, snapshot, "", {}, {}))
    wait_image(proxy, second.id, snapshot)

    thin = ok(proxy.copyImage(second.id, disk, "", {}, {}))["imageId"]
    info = wait_image(proxy, second.id, thin)
    assert info["baseSnapshotId"] == snapshot and [v["image"] for v in info["volumes"]] == [thin, snapshot]
    whole = ok(proxy.copyImage(second.id, disk, "", {}, {"strategy": "performance"}))["imageId"]
    full = wait_image(proxy, second.id, whole)
    assert full["baseSnapshotId"] == "" and len(full["volumes"]) == 1
    for copy, own in ((thin, lambda data: data < 4 * MiB), (whole, lambda data: data >= 9 * MiB)):
        with second.opened(copy) as path:
            assert qemu_reads(path, 0x41, 0, 8 * MiB) and qemu_reads(path, 0x43, 32 * MiB, MiB)
            assert own(own_data(path)), (copy, own_data(path))
            qemu_check(path)

    other = new_disk(proxy, third.id)
    with third.opened(other) as path:
        qemu_write(path, 0x77, 0, 8 * MiB)
    assert ok(proxy.createSnapshot(third.id, other, {}, {"imageId": snapshot}))["imageId"] == snapshot
    wait_image(proxy, third.id, snapshot)
    copy = ok(proxy.copyImage(third.id, disk, "", {}, {"imageHints": {disk: repo.id}}))["imageId"]
    info = wait_image(proxy, third.id, copy)
    assert info["baseSnapshotId"] == "" and len(info["volumes"]) == 1  # not over the other data's snapshot
    with third.opened(copy) as path:
        assert qemu_reads(path, 0x41, 0, 8 * MiB) and qemu_reads(path, 0x43, 32 * MiB, MiB)


def test_copy_reports_progress_and_a_snapshot_copied_beside_itself_is_itself(repo):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id)
    with repo.opened(disk) as path:
        qemu_write(path, 0x51, 0, 256 * MiB)
    copy = ok(proxy.copyImage(repo.id, disk, "", {}, {}))["imageId"]
    seen = set()

    def copied() -> bool:
        image = ok(proxy.getImageStatus(repo.id, copy))["image"]
        seen.add(image["percentComplete"])
        return image["state"] == "optimized" and not image["tasks"]

    wait_for(copied, timeout=180, what=lambda: f"the copy optimized (progress seen: {sorted(seen)})", poll=0.005)
    assert seen & set(range(1, 100)), seen
    assert ok(proxy.getImageTasks(copy))["tasks"] == []
    snapshot = new_snapshot(proxy, disk, repo.id)
    volumes, records = repo.volumes(), repo.records()
    again = ok(proxy.copyImage(repo.id, snapshot, "", {}, {}))
    assert again["imageId"] == snapshot  # idempotent: the repository holds that snapshot already
    assert ok(proxy.getImageStatus(repo.id, snapshot))["image"]["tasks"] == []
    assert repo.volumes() == volumes and repo.records() == records


def test_removing_a_disk_gives_its_space_back(repo):
    proxy = repo.proxy
    keep, disk = new_disk(proxy, repo.id), new_disk(proxy, repo.id)
    [volume] = ok(proxy.getImageInfo(repo.id, disk))["image"]["volumes"]
    before = repo.volumes()
    assert volume["id"] in before and {keep, disk} <= repo.records()
    ok(proxy.removeImage(repo.id, disk, {}))
    assert disk not in ok(proxy.getImageList(repo.id))["images"]
    assert code(proxy.getImageStatus(repo.id, disk)) == 268
    wait_for(lambda: disk not in repo.records(), timeout=180, what="the image record gone")
    assert repo.volumes() == before - {volume["id"]}  # its volume (file, LV) is gone, no other
    assert keep in repo.records()


def test_removing_a_snapshot_merges_it_into_every_child(repo):
    proxy = repo.proxy
    disk = repo.written_disk(0x61)
    snapshot = new_snapshot(proxy, disk, repo.id)
    other = new_disk(proxy, repo.id, base=snapshot)
    with repo.opened(other) as path:
        qemu_write(path, 0x62, 2 * MiB, MiB)
    snap_volume = ok(proxy.getImageInfo(repo.id, snapshot))["image"]["volumes"][0]["id"]
    ok(proxy.removeImage(repo.id, snapshot, {}))
    wait_for(lambda: snap_volume not in repo.volumes(), timeout=180, what="the snapshot's volume gone")
    for image, checks in ((disk, [(0x61, 0)]), (other, [(0x61, 0), (0x62, 2 * MiB)])):
        info = ok(proxy.getImageInfo(repo.id, image))["image"]
        assert len(info["volumes"]) == 1 and info["baseSnapshotId"] == "" and info["state"] == "optimized"
        with repo.opened(image) as path:
            assert len(backing_chain(path)) == 1
            assert all(qemu_reads(path, pattern, offset, MiB) for pattern, offset in checks)
            qemu_check(path)
    assert not ok(proxy.isSnapshotOf(other, snapshot))["result"]
    assert ok(proxy.checkStorageRepository(repo.id))["fixes"] == []
    assert snapshot not in repo.records()


def test_prepare_and_teardown(repo):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id)
    answer = ok(proxy.prepareImage(repo.id, disk))
    assert answer["path"] == top_path(proxy, repo.id, disk) and answer["readonly"] is False
    assert code(proxy.removeImage(repo.id, disk, {})) == 203
    assert code(proxy.createSnapshot(repo.id, disk, {}, {})) == 203
    ok(proxy.teardownImage(repo.id, disk))
    assert code(proxy.teardownImage(repo.id, disk)) == 230
    snapshot = new_snapshot(proxy, disk, repo.id)
    assert ok(proxy.prepareImage(repo.id, snapshot))["readonly"] is True
    assert code(proxy.prepareImage(repo.id, snapshot, {"readonly": False})) == 5011  # no writing to a snapshot
    ok(proxy.teardownImage(repo.id, snapshot))


def test_images_are_found_across_repositories_unless_narrowed(repo):
    proxy = repo.proxy
    second = repo.second()
    disk = new_disk(proxy, second.id)
    assert ok(proxy.getImageTasks(disk))["tasks"] == []
    assert code(proxy.getImageTasks(disk, {"participatingRepositories": [repo.id]})) == 268
    assert code(proxy.getImageTasks(disk, {"imageHints": {disk: repo.id}})) == 268
    ok(proxy.getImageTasks(disk, {"imageHints": {disk: second.id}}))
    copy = ok(proxy.copyImage(repo.id, disk, "", {}, {"participatingRepositories": [second.id]}))["imageId"]
    wait_image(proxy, repo.id, copy)
    assert code(proxy.getImageStatus(second.id, copy)) == 268


def test_request_id_and_caller_ids_make_creates_idempotent(repo):
    proxy = repo.proxy
    options = {"requestId": "create-1"}
    first = ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, options))["imageId"]
    again = ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, options))["imageId"]
    assert first == again
    assert code(proxy.createVirtualDisk(repo.id, str(2 * GiB), "", {}, options)) == 5000
    chosen = {"imageId": "my-disk-1"}
    assert ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, chosen))["imageId"] == "my-disk-1"
    wait_image(proxy, repo.id, "my-disk-1")
    assert ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, chosen))["imageId"] == "my-disk-1"
    assert code(proxy.createVirtualDisk(repo.id, str(2 * GiB), "", {}, chosen)) == 5010
    assert sorted(ok(proxy.getImageList(repo.id))["images"]) == sorted([first, "my-disk-1"])


def test_transparent_mode_fixes_carry_the_callers_task_id(repo):
    proxy = repo.proxy
    ok(proxy.setTaskMode("transparent"))
    before = ok(proxy.getImageList(repo.id))["images"]
    records = repo.records()
    assert code(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, {})) == 5008
    assert ok(proxy.getImageList(repo.id))["images"] == before  # refused before anything was written
    assert repo.records() == records
    disk = ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, {"taskId": "engine-task-1"}))["imageId"]
    wait_image(proxy, repo.id, disk)
    status = ok(proxy.getTaskStatus("engine-task-1"))["taskStatus"]
    assert status["taskResult"] == "success" and status["verb"] == "createVirtualDisk"
    assert f"image:{disk}" in status["tags"]
    later = ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, {"autoFix": False}))["imageId"]
    assert ok(proxy.getImageStatus(repo.id, later))["image"]["state"] == "broken"
    [fix] = ok(proxy.checkStorageRepository(repo.id))["fixes"]
    assert fix["type"] == "mend" and fix["imageId"] == later
    assert code(proxy.fixStorageRepository(repo.id, fix["fix"], {})) == 5008
    task = ok(proxy.fixStorageRepository(repo.id, fix["fix"], {"taskId": "engine-task-2"}))["taskId"]
    assert task == "engine-task-2"
    wait_image(proxy, repo.id, later)


def test_transparent_mode_leaves_an_interrupted_fix_to_the_caller(make_repo):
    repo = make_repo(config={"tasks": {"mode": "transparent"}})
    proxy = repo.proxy
    disk = ok(proxy.createVirtualDisk(repo.id, str(GiB), "", {}, {"taskId": "engine-create"}))["imageId"]
    wait_image(proxy, repo.id, disk)
    with repo.opened(disk) as path:
        qemu_write(path, 0x5C, 0, 512 * MiB)
    copy = ok(proxy.copyImage(repo.id, disk, "", {}, {"taskId": "engine-copy"}))["imageId"]
    repo.daemon.kill()  # in the middle of the copy
    proxy = repo.start()
    status = ok(proxy.getTaskStatus("engine-copy"))["taskStatus"]
    assert status["state"] == "waitrecover" and status["taskState"] == "cleaning"
    # hsmd decided at start-up, before it answered, to leave the copy's task waiting: no wait needed.
    decided = [line for line in repo.daemon.log_text().splitlines() if "Recovered tasks:" in line]
    assert "'waiting': 1" in decided[-1], decided
    assert ok(proxy.getImageStatus(repo.id, copy))["image"]["state"] == "broken"  # hsmd did nothing alone
    ok(proxy.recoverTask("engine-copy"))
    wait_image(proxy, repo.id, copy)
    with repo.opened(copy) as path:
        assert qemu_reads(path, 0x5C, 0, 512 * MiB)
    assert ok(proxy.getTaskStatus("engine-copy"))["taskStatus"]["taskResult"] == "success"
