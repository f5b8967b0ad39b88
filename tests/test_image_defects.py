"""The image engine's data-loss defects of issue 10, each as the steps that showed it, on a real hsmd.

Each test failed on the engine before its fix. Volumes are real qcow2 files,
read back with qemu-io through their whole chain.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.images_helpers import (
    MiB,
    code,
    local_path,
    new_disk,
    new_snapshot,
    ok,
    qemu_reads,
    qemu_write,
    top_path,
    volume_files,
    wait_image,
)
from tests.tasks_helpers import diagnostics_config, start_task, status, wait_state

WAIT = 180.0  # seconds a fix may take: copies run at idle priority, so a busy machine starves them


def run_fixes(proxy, repo: str = "local", rounds: int = 4) -> list[dict]:
    """Run every fix check lists until it lists none that can run; returns what is left (unfixable)."""
    for _ in range(rounds):
        for task, state in ok(proxy.getAllTasksStatuses())["allTasksStatus"].items():
            if state["taskState"] == "running":  # the fixes the verbs started themselves go first
                wait_state(proxy, task, timeout=WAIT)
        fixes = ok(proxy.checkStorageRepository(repo))["fixes"]
        runnable = [fix for fix in fixes if fix["fixable"]]
        if not runnable:
            return fixes
        for fix in runnable:
            task = ok(proxy.fixStorageRepository(repo, fix["fix"], {}))["taskId"]
            assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success", status(proxy, task)
    raise AssertionError(f"fixes keep coming back: {fixes}")


def hold_the_worker(proxy) -> str:
    """A sleeping diagnostics task running on hsmd's only worker (thread_pool_size=1): fixes queue behind it."""
    blocker = start_task(proxy, [{"seconds": 60}])
    wait_state(proxy, blocker, states=("running",), timeout=WAIT)
    return blocker


def stop_blocker(proxy, blocker: str) -> None:
    """Free the worker a sleeping diagnostics task holds (resumed after a restart, it sleeps again)."""
    if code(proxy.stopTask(blocker)) == 0:
        wait_state(proxy, blocker, timeout=WAIT)


def record_path(daemon, image_id: str) -> str:
    return os.path.join(local_path(daemon), "images", image_id + ".json")


# 1 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auto_fix", [False, True])
def test_a_snapshot_a_pending_disk_reads_through_is_not_removed_under_it(proxy, auto_fix):
    disk = new_disk(proxy, size=16 * MiB)
    qemu_write(top_path(proxy, "local", disk), 0x3C, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    pending = ok(proxy.createVirtualDisk("local", str(16 * MiB), snapshot, {}, {"autoFix": False}))["imageId"]
    answer = proxy.removeImage("local", snapshot, {"autoFix": auto_fix})
    assert code(answer) == 203 and pending in answer["status"]["message"], answer
    assert run_fixes(proxy) == []  # the mend of the pending disk
    ok(proxy.removeImage("local", snapshot, {"autoFix": auto_fix}))
    assert run_fixes(proxy) == []  # the merge, when autoFix left it to us
    info = wait_image(proxy, "local", pending)
    assert [volume["image"] for volume in info["volumes"]] == [pending]
    assert qemu_reads(info["volumes"][0]["path"], 0x3C, 0, MiB)


def test_a_merge_waits_for_the_create_of_a_disk_on_the_snapshot(make_hsmd):
    """Records already in the bad order (written by an older hsm or another host): no data is lost."""
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=16 * MiB)
    qemu_write(top_path(proxy, "local", disk), 0x5A, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    pending = ok(proxy.createVirtualDisk("local", str(16 * MiB), snapshot, {}, {"autoFix": False}))["imageId"]
    daemon.stop()
    with open(record_path(daemon, snapshot)) as f:
        record = json.load(f)
    record["removed"] = True
    with open(record_path(daemon, snapshot), "w") as f:
        json.dump(record, f)
    daemon.start()  # resumes both the create and the merge, in any order
    proxy = daemon.proxy()
    fixes = run_fixes(proxy)
    assert fixes == [], fixes
    info = wait_image(proxy, "local", pending)
    assert [volume["image"] for volume in info["volumes"]] == [pending]
    assert qemu_reads(info["volumes"][0]["path"], 0x5A, 0, MiB)
    assert snapshot not in ok(proxy.getImageList("local"))["images"]


def test_the_source_of_a_pending_copy_is_not_removed(proxy):
    disk = new_disk(proxy, size=16 * MiB)
    qemu_write(top_path(proxy, "local", disk), 0x61, 0, MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {"autoFix": False}))["imageId"]
    assert code(proxy.removeImage("local", disk, {})) == 203
    run_fixes(proxy)
    ok(proxy.removeImage("local", disk, {}))
    assert qemu_reads(top_path(proxy, "local", wait_image(proxy, "local", copy)["id"]), 0x61, 0, MiB)


# 2 ---------------------------------------------------------------------------------------------


def test_a_prepared_image_stays_prepared_across_a_restart(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=16 * MiB)
    path = ok(proxy.prepareImage("local", disk))["path"]
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    answer = proxy.removeImage("local", disk, {})
    assert code(answer) == 203 and "prepared" in answer["status"]["message"]
    assert code(proxy.disconnectStorageRepository("local", {})) == 203
    assert os.path.exists(path)
    ok(proxy.teardownImage("local", disk))
    assert code(proxy.teardownImage("local", disk)) == 230
    ok(proxy.removeImage("local", disk, {}))
    assert run_fixes(proxy) == []
    assert not os.path.exists(path)


# 3 ---------------------------------------------------------------------------------------------


def test_check_reports_an_image_whose_volume_is_gone_as_unfixable(proxy):
    disk = new_disk(proxy, size=16 * MiB)
    os.unlink(top_path(proxy, "local", disk))
    [entry] = ok(proxy.checkStorageRepository("local"))["fixes"]
    assert entry["imageId"] == disk and entry["fixable"] is False and "fix" not in entry
    assert "missing" in entry["reason"] and entry["code"] == 201
    assert ok(proxy.getImageStatus("local", disk))["image"]["state"] == "broken"


# 4 and 5 ---------------------------------------------------------------------------------------


def test_the_task_id_of_a_commit_survives_kill_9(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1)).start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=16 * MiB)
    blocker = hold_the_worker(proxy)  # the copy stays queued
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    [task] = ok(proxy.getImageTasks(copy))["tasks"]
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    stop_blocker(proxy, blocker)
    assert status(proxy, task)["verb"] == "copyImage"
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    wait_image(proxy, "local", copy)


def test_a_reused_transparent_task_id_is_refused_before_anything_is_written(proxy):
    ok(proxy.setTaskMode("transparent"))
    first = ok(proxy.createVirtualDisk("local", str(MiB), "", {}, {"taskId": "vdsm-task-1"}))["imageId"]
    images = ok(proxy.getImageList("local"))["images"]
    assert code(proxy.createVirtualDisk("local", str(MiB), "", {}, {"taskId": "vdsm-task-1"})) == 5007
    wait_state(proxy, "vdsm-task-1")
    wait_image(proxy, "local", first)
    assert code(proxy.removeImage("local", first, {"taskId": "vdsm-task-1"})) == 5007  # finished, not cleared
    assert ok(proxy.getImageList("local"))["images"] == images
    ok(proxy.clearTask("vdsm-task-1"))
    ok(proxy.removeImage("local", first, {"taskId": "vdsm-task-1"}))


# 8 ---------------------------------------------------------------------------------------------


def test_a_record_naming_a_path_outside_the_repository_deletes_nothing(make_hsmd, tmp_path):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=MiB)
    daemon.stop()
    victim = tmp_path / "victim.qcow2"
    victim.write_text("keep me")
    with open(record_path(daemon, disk)) as f:
        record = json.load(f)
    depth = os.path.relpath(tmp_path, os.path.join(local_path(daemon), "volumes"))
    record["volumes"][0]["id"] = os.path.join(depth, "victim")
    record["removed"] = True
    with open(record_path(daemon, disk), "w") as f:
        json.dump(record, f)
    daemon.start()
    proxy = daemon.proxy()
    assert disk in ok(proxy.getImageList("local"))["images"]
    image = ok(proxy.getImageStatus("local", disk))["image"]
    assert image["state"] == "broken" and image["lastError"]["code"] == 207
    [entry] = ok(proxy.checkStorageRepository("local"))["fixes"]
    assert entry["imageId"] == disk and entry["fixable"] is False and "volume id" in entry["reason"]
    assert victim.read_text() == "keep me"


def test_an_unreadable_record_keeps_every_volume_it_might_own(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    damaged, other = new_disk(proxy, size=MiB), new_disk(proxy, size=MiB)
    daemon.stop()
    files = volume_files(local_path(daemon))
    with open(record_path(daemon, damaged), "wb") as f:
        f.write(b"\x00{garbage")
    daemon.start()
    proxy = daemon.proxy()
    assert set(ok(proxy.getImageList("local"))["images"]) == {damaged, other}
    assert code(proxy.removeImage("local", damaged, {})) == 207
    fixes = ok(proxy.checkStorageRepository("local"))["fixes"]
    assert [(fix["imageId"], fix["fixable"]) for fix in fixes] == [(damaged, False)]
    assert volume_files(local_path(daemon)) == files
    # Repaired by hand: the next check reads it again, and the image is whole.
    ok(proxy.removeImage("local", other, {}))
    run_fixes(proxy)
    [volume] = volume_files(local_path(daemon))
    with open(record_path(daemon, damaged), "w") as f:
        f.write(json.dumps({"id": damaged, "kind": "disk", "size": MiB, "state": "optimized",
                            "volumes": [{"id": volume.split(".")[0], "image": damaged}]}))
    assert ok(proxy.checkStorageRepository("local"))["fixes"] == []
    assert ok(proxy.getImageStatus("local", damaged))["image"]["state"] == "optimized"


def test_a_record_that_names_another_image_changes_neither(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    first, second = new_disk(proxy, size=MiB), new_disk(proxy, size=2 * MiB)
    daemon.stop()
    shutil.copy(record_path(daemon, second), record_path(daemon, first))
    daemon.start()
    proxy = daemon.proxy()
    image = ok(proxy.getImageStatus("local", first))["image"]
    assert image["state"] == "broken" and second in image["lastError"]["message"]
    assert ok(proxy.getImageInfo("local", second))["image"]["size"] == str(2 * MiB)
    assert [fix["imageId"] for fix in ok(proxy.checkStorageRepository("local"))["fixes"]] == [first]


# 9b --------------------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path):
    """A 32 MiB ext4 on a loop device, no blocks held back for root (so full is full)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a loop-mounted filesystem")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    (mountpoint / "repo").mkdir()
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder) -> None:
    """Write until the filesystem refuses another byte."""
    with open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        chunk = b"\xff" * MiB
        for size in (MiB, 65536, 4096, 512, 1):
            try:
                while f.write(chunk[:size]):
                    pass
            except OSError:
                pass


def test_removing_works_on_a_full_repository(proxy, small_filesystem):
    repo = str(small_filesystem / "repo")
    ok(proxy.createStorageRepository("localfs-1", {"path": repo}, {}))
    ok(proxy.connectStorageRepository("small", "localfs-1", {"path": repo}, {}))
    disks = []
    for _ in range(7):
        disks.append(new_disk(proxy, repo="small", size=4 * MiB))
        qemu_write(top_path(proxy, "small", disks[-1]), 0x11, 0, MiB)
    fill(small_filesystem)
    assert code(proxy.createVirtualDisk("small", str(MiB), "", {}, {})) == 397
    for disk in disks:
        ok(proxy.removeImage("small", disk, {}))
    assert run_fixes(proxy, "small") == []
    assert ok(proxy.getImageList("small"))["images"] == []
    assert os.listdir(os.path.join(repo, "volumes")) == []
    os.unlink(small_filesystem / "filler")
    ok(proxy.checkStorageRepository("small"))  # the next clean or connect puts the reserve back
    wait_image(proxy, "small", new_disk(proxy, repo="small", size=MiB))


# 10 --------------------------------------------------------------------------------------------


def test_get_image_tasks_shows_a_merge_on_the_children_it_rewrites(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1)).start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=16 * MiB)
    snapshot = new_snapshot(proxy, disk)
    child = new_disk(proxy, size=16 * MiB, base=snapshot)
    blocker = hold_the_worker(proxy)
    ok(proxy.removeImage("local", snapshot, {}))
    [merge] = [task for task, state in ok(proxy.getAllTasksStatuses())["allTasksStatus"].items()
               if task != blocker and state["taskState"] != "finished"]
    assert merge in ok(proxy.getImageTasks(child))["tasks"]
    assert merge in ok(proxy.getImageTasks(disk))["tasks"]
    ok(proxy.stopTask(blocker))
    wait_state(proxy, merge)
    assert ok(proxy.getImageTasks(child))["tasks"] == []


def test_transparent_mode_gives_back_a_task_a_crash_cut_off_before_it_was_written(make_hsmd):
    """The record holds the caller's task id; the journal does not (kill -9 between the two writes)."""
    daemon = make_hsmd(config={"tasks": {"mode": "transparent"}}).start()
    proxy = daemon.proxy()
    disk = ok(proxy.createVirtualDisk("local", str(MiB), "", {}, {"autoFix": False}))["imageId"]
    daemon.stop()
    with open(record_path(daemon, disk)) as f:
        record = json.load(f)
    record.update(task="vdsm-7", verb="createVirtualDisk")
    with open(record_path(daemon, disk), "w") as f:
        json.dump(record, f)
    daemon.start()
    proxy = daemon.proxy()
    waiting = status(proxy, "vdsm-7")
    assert waiting["state"] == "waitrecover" and waiting["verb"] == "createVirtualDisk"
    assert ok(proxy.getImageStatus("local", disk))["image"]["tasks"] == ["vdsm-7"]
    ok(proxy.recoverTask("vdsm-7"))
    assert wait_state(proxy, "vdsm-7")["taskResult"] == "success"
    wait_image(proxy, "local", disk)


def test_a_pending_merge_below_does_not_hide_a_create_at_restart(make_hsmd):
    """At start-up the merge of a removed snapshot names the new disk as a child; its create must still resume."""
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1)).start()
    proxy = daemon.proxy()
    disk = new_disk(proxy, size=4 * MiB)
    qemu_write(top_path(proxy, "local", disk), 0x27, 0, MiB)
    below, above = new_snapshot(proxy, disk), new_snapshot(proxy, disk)
    ok(proxy.removeImage("local", below, {"autoFix": False}))  # its merge waits for the caller
    blocker = hold_the_worker(proxy)  # the create below stays queued, never journalled
    new = ok(proxy.createVirtualDisk("local", str(4 * MiB), above, {}, {}))["imageId"]
    [task] = ok(proxy.getImageTasks(new))["tasks"]
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    stop_blocker(proxy, blocker)
    assert status(proxy, task)["verb"] == "createVirtualDisk"
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    assert run_fixes(proxy) == []
    info = wait_image(proxy, "local", new)
    assert below not in [volume["image"] for volume in info["volumes"]]
    assert qemu_reads(info["volumes"][0]["path"], 0x27, 0, MiB)


# Found by the model walk ---------------------------------------------------------------------------
def test_a_copy_made_on_a_base_still_runs_after_its_source_was_optimized(make_hsmd):
    """A copy of a degraded disk committed (with autoFix off) while the disk read through its
    base snapshot, whose fix runs after the disk's optimize made it stand alone: the copy still
    reads what the disk held, over its base (its fix once failed: the source had no second volume)."""
    daemon = make_hsmd(config={"tasks": {"mode": "transparent"}}).start()  # no fix runs by itself
    proxy = daemon.proxy()
    origin = new_disk(proxy, size=4 * MiB, taskId="make-origin")
    qemu_write(top_path(proxy, "local", origin), 0x21, 0, MiB)
    base = ok(proxy.createSnapshot("local", origin, {}, {"taskId": "make-base"}))["imageId"]
    wait_image(proxy, "local", base)
    disk = ok(proxy.createVirtualDisk("local", str(4 * MiB), base, {}, {"taskId": "make-disk"}))["imageId"]
    wait_image(proxy, "local", disk)
    qemu_write(top_path(proxy, "local", disk), 0x22, MiB, MiB)
    daemon.stop()
    with open(record_path(daemon, disk)) as f:  # as if made with strategy=performance, its optimize not run yet
        record = json.load(f)
    record.update(state="degraded", intent={"op": "optimize"}, percentComplete=-1)
    with open(record_path(daemon, disk), "w") as f:
        json.dump(record, f)
    daemon.start()
    proxy = daemon.proxy()
    copy = ok(proxy.copyImage("local", disk, base, {}, {"autoFix": False}))["imageId"]
    fixes = {fix["imageId"]: fix for fix in ok(proxy.checkStorageRepository("local"))["fixes"]}
    task = ok(proxy.fixStorageRepository("local", fixes[disk]["fix"], {"taskId": "optimize-disk"}))["taskId"]
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    assert len(ok(proxy.getImageInfo("local", disk))["image"]["volumes"]) == 1  # it stands alone now
    task = ok(proxy.fixStorageRepository("local", fixes[copy]["fix"], {"taskId": "copy-disk"}))["taskId"]
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success", status(proxy, task)
    info = wait_image(proxy, "local", copy)
    assert info["baseSnapshotId"] == base and len(info["volumes"]) > 1  # still over its base
    top = info["volumes"][0]["path"]
    assert qemu_reads(top, 0x21, 0, MiB) and qemu_reads(top, 0x22, MiB, MiB) and qemu_reads(top, 0, 2 * MiB, 2 * MiB)
    mapped = json.loads(subprocess.run(["qemu-img", "map", "-U", "--output=json", top], capture_output=True,
                                       text=True, check=True).stdout)
    own = [(m["start"], m["start"] + m["length"]) for m in mapped if m["depth"] == 0 and m["data"]]
    assert own and all(start >= MiB for start, _ in own)  # only what differs from the base: no copy of its data


def test_a_full_task_queue_at_start_up_logs_one_line_and_check_lists_the_rest(make_hsmd):
    """Past [tasks] max_tasks, resuming pending intents at start-up stops at once with one warning (not one per
    record: 100,000 records made 100,000 lines), and checkStorageRepository still offers every fix left."""
    daemon = make_hsmd(config=diagnostics_config(thread_pool_size=1, max_tasks=3)).start()
    proxy = daemon.proxy()
    disks = [ok(proxy.createVirtualDisk("local", str(MiB), "", {}, {"autoFix": False}))["imageId"] for _ in range(8)]
    hold_the_worker(proxy)
    daemon.kill()
    daemon.start()  # the blocker runs again on the only worker; two fixes fill the queue
    proxy = daemon.proxy()
    lines = daemon.log_text().splitlines()
    assert not [line for line in lines if "Cannot resume" in line]
    waiting = [line for line in lines if "more wait" in line]
    assert len(waiting) == 1 and "Resumed 2 fixes in local; 6 more wait" in waiting[0], waiting
    listed = {fix["imageId"] for fix in ok(proxy.checkStorageRepository("local"))["fixes"]}
    assert listed == set(disks)
