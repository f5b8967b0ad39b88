"""The image engine's data-loss defects of issue 10, each as the steps that showed it, on a real hsmd.

Each test failed on the engine before its fix. Each runs on every repository format (tests/images_helpers.py
`repositories`: localfs-1 'local', block-1 'blk'), but for the defects that only files can have (`files_only`).
Volumes are real qcow2 files or LVs, read back with qemu-io through their whole chain, through prepareImage's path.
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
    files_only,
    new_disk,
    new_snapshot,
    ok,
    qemu_reads,
    qemu_write,
    top_path,
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


# 1 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auto_fix", [False, True])
def test_a_snapshot_a_pending_disk_reads_through_is_not_removed_under_it(repo, auto_fix):
    proxy = repo.proxy
    disk = repo.written_disk(0x3C, size=16 * MiB)
    snapshot = new_snapshot(proxy, disk, repo.id)
    pending = ok(proxy.createVirtualDisk(repo.id, str(16 * MiB), snapshot, {}, {"autoFix": False}))["imageId"]
    answer = proxy.removeImage(repo.id, snapshot, {"autoFix": auto_fix})
    assert code(answer) == 203 and pending in answer["status"]["message"], answer
    assert run_fixes(proxy, repo.id) == []  # the mend of the pending disk
    ok(proxy.removeImage(repo.id, snapshot, {"autoFix": auto_fix}))
    assert run_fixes(proxy, repo.id) == []  # the merge, when autoFix left it to us
    info = wait_image(proxy, repo.id, pending)
    assert [volume["image"] for volume in info["volumes"]] == [pending]
    with repo.opened(pending) as path:
        assert qemu_reads(path, 0x3C, 0, MiB)


def test_a_merge_waits_for_the_create_of_a_disk_on_the_snapshot(repo):
    """Records already in the bad order (written by an older hsm or another host): no data is lost."""
    proxy = repo.proxy
    disk = repo.written_disk(0x5A, size=16 * MiB)
    snapshot = new_snapshot(proxy, disk, repo.id)
    pending = ok(proxy.createVirtualDisk(repo.id, str(16 * MiB), snapshot, {}, {"autoFix": False}))["imageId"]
    repo.daemon.stop()
    record = repo.record(snapshot)
    record["removed"] = True
    repo.write_record(snapshot, record)
    proxy = repo.start()  # resumes both the create and the merge, in any order
    fixes = run_fixes(proxy, repo.id)
    assert fixes == [], fixes
    info = wait_image(proxy, repo.id, pending)
    assert [volume["image"] for volume in info["volumes"]] == [pending]
    with repo.opened(pending) as path:
        assert qemu_reads(path, 0x5A, 0, MiB)
    assert snapshot not in ok(proxy.getImageList(repo.id))["images"]
    assert snapshot not in repo.records()


def test_the_source_of_a_pending_copy_is_not_removed(repo):
    proxy = repo.proxy
    disk = repo.written_disk(0x61, size=16 * MiB)
    copy = ok(proxy.copyImage(repo.id, disk, "", {}, {"autoFix": False}))["imageId"]
    assert code(proxy.removeImage(repo.id, disk, {})) == 203
    run_fixes(proxy, repo.id)
    ok(proxy.removeImage(repo.id, disk, {}))
    wait_image(proxy, repo.id, copy)
    with repo.opened(copy) as path:
        assert qemu_reads(path, 0x61, 0, MiB)


# 2 ---------------------------------------------------------------------------------------------


def test_a_prepared_image_stays_prepared_across_a_restart(repo):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id, size=16 * MiB)
    path = ok(proxy.prepareImage(repo.id, disk))["path"]
    qemu_write(path, 0x4D, 0, MiB)
    repo.daemon.kill()
    proxy = repo.start()
    answer = proxy.removeImage(repo.id, disk, {})
    assert code(answer) == 203 and "prepared" in answer["status"]["message"]
    assert code(proxy.disconnectStorageRepository(repo.id, {})) == 203
    assert os.path.exists(path) and qemu_reads(path, 0x4D, 0, MiB)  # still usable where the VM has it
    ok(proxy.teardownImage(repo.id, disk))
    assert code(proxy.teardownImage(repo.id, disk)) == 230
    ok(proxy.removeImage(repo.id, disk, {}))
    assert run_fixes(proxy, repo.id) == []
    assert not os.path.exists(path)
    assert disk not in repo.records()


# 3 ---------------------------------------------------------------------------------------------


def test_check_reports_an_image_whose_volume_is_gone_as_unfixable(repo):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id, size=16 * MiB)
    [volume] = ok(proxy.getImageInfo(repo.id, disk))["image"]["volumes"]
    repo.lose_volume(volume["id"])  # its file, or its LV, removed behind hsmd's back
    [entry] = ok(proxy.checkStorageRepository(repo.id))["fixes"]
    assert entry["imageId"] == disk and entry["fixable"] is False and "fix" not in entry
    assert "missing" in entry["reason"] and entry["code"] == 201
    assert ok(proxy.getImageStatus(repo.id, disk))["image"]["state"] == "broken"


# 4 and 5 ---------------------------------------------------------------------------------------


def test_the_task_id_of_a_commit_survives_kill_9(make_repo):
    repo = make_repo(config=diagnostics_config(thread_pool_size=1))
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id, size=16 * MiB)
    blocker = hold_the_worker(proxy)  # the copy stays queued
    copy = ok(proxy.copyImage(repo.id, disk, "", {}, {}))["imageId"]
    [task] = ok(proxy.getImageTasks(copy))["tasks"]
    repo.daemon.kill()
    proxy = repo.start()
    stop_blocker(proxy, blocker)
    assert status(proxy, task)["verb"] == "copyImage"
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    wait_image(proxy, repo.id, copy)


def test_a_reused_transparent_task_id_is_refused_before_anything_is_written(repo):
    proxy = repo.proxy
    ok(proxy.setTaskMode("transparent"))
    first = ok(proxy.createVirtualDisk(repo.id, str(MiB), "", {}, {"taskId": "vdsm-task-1"}))["imageId"]
    images = ok(proxy.getImageList(repo.id))["images"]
    assert code(proxy.createVirtualDisk(repo.id, str(MiB), "", {}, {"taskId": "vdsm-task-1"})) == 5007
    wait_state(proxy, "vdsm-task-1")
    wait_image(proxy, repo.id, first)
    records = repo.records()
    assert code(proxy.removeImage(repo.id, first, {"taskId": "vdsm-task-1"})) == 5007  # finished, not cleared
    assert ok(proxy.getImageList(repo.id))["images"] == images
    assert repo.records() == records and repo.record(first)["removed"] is False
    ok(proxy.clearTask("vdsm-task-1"))
    ok(proxy.removeImage(repo.id, first, {"taskId": "vdsm-task-1"}))


# 8 ---------------------------------------------------------------------------------------------


def test_a_record_naming_a_path_outside_the_repository_deletes_nothing(repo, tmp_path):
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id, size=MiB)
    repo.daemon.stop()
    victim = tmp_path / "victim.qcow2"
    victim.write_text("keep me")
    record = repo.record(disk)
    depth = os.path.relpath(tmp_path, repo.volumes_folder)  # where its volume's path would lead out to
    record["volumes"][0]["id"] = os.path.join(depth, "victim")
    record["removed"] = True
    repo.write_record(disk, record)
    proxy = repo.start()
    assert disk in ok(proxy.getImageList(repo.id))["images"]
    image = ok(proxy.getImageStatus(repo.id, disk))["image"]
    assert image["state"] == "broken" and image["lastError"]["code"] == 207
    [entry] = ok(proxy.checkStorageRepository(repo.id))["fixes"]
    assert entry["imageId"] == disk and entry["fixable"] is False and "volume id" in entry["reason"]
    assert victim.read_text() == "keep me"


def test_an_unreadable_record_keeps_every_volume_it_might_own(repo):
    proxy = repo.proxy
    damaged, other = new_disk(proxy, repo.id, size=MiB), new_disk(proxy, repo.id, size=MiB)
    repo.daemon.stop()
    volumes = repo.volumes()
    repo.write_record(damaged, b"\x00{garbage")  # its file, or its slot (which still names the image)
    proxy = repo.start()
    assert set(ok(proxy.getImageList(repo.id))["images"]) == {damaged, other}
    assert code(proxy.removeImage(repo.id, damaged, {})) == 207
    fixes = ok(proxy.checkStorageRepository(repo.id))["fixes"]
    assert [(fix["imageId"], fix["fixable"]) for fix in fixes] == [(damaged, False)]
    assert repo.volumes() == volumes
    # Repaired by hand: the next check reads it again, and the image is whole.
    ok(proxy.removeImage(repo.id, other, {}))
    run_fixes(proxy, repo.id)
    [volume] = repo.volumes()
    repo.write_record(damaged, {"id": damaged, "kind": "disk", "size": MiB, "state": "optimized",
                                "volumes": [{"id": volume, "image": damaged}]})
    assert ok(proxy.checkStorageRepository(repo.id))["fixes"] == []
    assert ok(proxy.getImageStatus(repo.id, damaged))["image"]["state"] == "optimized"


def test_a_record_that_names_another_image_changes_neither(repo):
    proxy = repo.proxy
    first, second = new_disk(proxy, repo.id, size=MiB), new_disk(proxy, repo.id, size=2 * MiB)
    repo.daemon.stop()
    repo.write_record(first, repo.record(second))  # under the first's file name, or in its slot
    proxy = repo.start()
    image = ok(proxy.getImageStatus(repo.id, first))["image"]
    assert image["state"] == "broken" and second in image["lastError"]["message"]
    assert ok(proxy.getImageInfo(repo.id, second))["image"]["size"] == str(2 * MiB)
    assert [fix["imageId"] for fix in ok(proxy.checkStorageRepository(repo.id))["fixes"]] == [first]


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


@files_only("a full filesystem and the reserve file; block-1 records a removal in its slot, in place")
def test_removing_works_on_a_full_repository(make_repo, small_filesystem):
    proxy = make_repo().proxy
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


def test_get_image_tasks_shows_a_merge_on_the_children_it_rewrites(make_repo):
    repo = make_repo(config=diagnostics_config(thread_pool_size=1))
    proxy = repo.proxy
    disk = new_disk(proxy, repo.id, size=16 * MiB)
    snapshot = new_snapshot(proxy, disk, repo.id)
    child = new_disk(proxy, repo.id, size=16 * MiB, base=snapshot)
    blocker = hold_the_worker(proxy)
    ok(proxy.removeImage(repo.id, snapshot, {}))
    [merge] = [task for task, state in ok(proxy.getAllTasksStatuses())["allTasksStatus"].items()
               if task != blocker and state["taskState"] != "finished"]
    assert merge in ok(proxy.getImageTasks(child))["tasks"]
    assert merge in ok(proxy.getImageTasks(disk))["tasks"]
    ok(proxy.stopTask(blocker))
    wait_state(proxy, merge)
    assert ok(proxy.getImageTasks(child))["tasks"] == []


def test_transparent_mode_gives_back_a_task_a_crash_cut_off_before_it_was_written(make_repo):
    """The record holds the caller's task id; the journal does not (kill -9 between the two writes)."""
    repo = make_repo(config={"tasks": {"mode": "transparent"}})
    proxy = repo.proxy
    disk = ok(proxy.createVirtualDisk(repo.id, str(MiB), "", {}, {"autoFix": False}))["imageId"]
    repo.daemon.stop()
    record = repo.record(disk)
    record.update(task="vdsm-7", verb="createVirtualDisk")
    repo.write_record(disk, record)
    proxy = repo.start()
    waiting = status(proxy, "vdsm-7")
    assert waiting["state"] == "waitrecover" and waiting["verb"] == "createVirtualDisk"
    assert ok(proxy.getImageStatus(repo.id, disk))["image"]["tasks"] == ["vdsm-7"]
    ok(proxy.recoverTask("vdsm-7"))
    assert wait_state(proxy, "vdsm-7")["taskResult"] == "success"
    wait_image(proxy, repo.id, disk)


def test_a_pending_merge_below_does_not_hide_a_create_at_restart(make_repo):
    """At start-up the merge of a removed snapshot names the new disk as a child; its create must still resume."""
    repo = make_repo(config=diagnostics_config(thread_pool_size=1))
    proxy = repo.proxy
    disk = repo.written_disk(0x27, size=4 * MiB)
    below, above = new_snapshot(proxy, disk, repo.id), new_snapshot(proxy, disk, repo.id)
    ok(proxy.removeImage(repo.id, below, {"autoFix": False}))  # its merge waits for the caller
    blocker = hold_the_worker(proxy)  # the create below stays queued, never journalled
    new = ok(proxy.createVirtualDisk(repo.id, str(4 * MiB), above, {}, {}))["imageId"]
    [task] = ok(proxy.getImageTasks(new))["tasks"]
    repo.daemon.kill()
    proxy = repo.start()
    stop_blocker(proxy, blocker)
    assert status(proxy, task)["verb"] == "createVirtualDisk"
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    assert run_fixes(proxy, repo.id) == []
    info = wait_image(proxy, repo.id, new)
    assert below not in [volume["image"] for volume in info["volumes"]]
    with repo.opened(new) as path:
        assert qemu_reads(path, 0x27, 0, MiB)


# Found by the model walk ---------------------------------------------------------------------------
def test_a_copy_made_on_a_base_still_runs_after_its_source_was_optimized(make_repo):
    """A copy of a degraded disk committed (with autoFix off) while the disk read through its
    base snapshot, whose fix runs after the disk's optimize made it stand alone: the copy still
    reads what the disk held, over its base (its fix once failed: the source had no second volume)."""
    repo = make_repo(config={"tasks": {"mode": "transparent"}})  # no fix runs by itself
    proxy = repo.proxy
    origin = new_disk(proxy, repo.id, size=4 * MiB, taskId="make-origin")
    with repo.opened(origin) as path:
        qemu_write(path, 0x21, 0, MiB)
    base = ok(proxy.createSnapshot(repo.id, origin, {}, {"taskId": "make-base"}))["imageId"]
    wait_image(proxy, repo.id, base)
    disk = ok(proxy.createVirtualDisk(repo.id, str(4 * MiB), base, {}, {"taskId": "make-disk"}))["imageId"]
    wait_image(proxy, repo.id, disk)
    with repo.opened(disk) as path:
        qemu_write(path, 0x22, MiB, MiB)
    repo.daemon.stop()
    record = repo.record(disk)  # as if made with strategy=performance, its optimize not run yet
    record.update(state="degraded", intent={"op": "optimize"}, percentComplete=-1)
    repo.write_record(disk, record)
    proxy = repo.start()
    copy = ok(proxy.copyImage(repo.id, disk, base, {}, {"autoFix": False}))["imageId"]
    fixes = {fix["imageId"]: fix for fix in ok(proxy.checkStorageRepository(repo.id))["fixes"]}
    task = ok(proxy.fixStorageRepository(repo.id, fixes[disk]["fix"], {"taskId": "optimize-disk"}))["taskId"]
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success"
    assert len(ok(proxy.getImageInfo(repo.id, disk))["image"]["volumes"]) == 1  # it stands alone now
    task = ok(proxy.fixStorageRepository(repo.id, fixes[copy]["fix"], {"taskId": "copy-disk"}))["taskId"]
    assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success", status(proxy, task)
    info = wait_image(proxy, repo.id, copy)
    assert info["baseSnapshotId"] == base and len(info["volumes"]) > 1  # still over its base
    with repo.opened(copy) as top:
        assert qemu_reads(top, 0x21, 0, MiB) and qemu_reads(top, 0x22, MiB, MiB)
        assert qemu_reads(top, 0, 2 * MiB, 2 * MiB)
        mapped = json.loads(subprocess.run(["qemu-img", "map", "-U", "--output=json", top], capture_output=True,
                                           text=True, check=True).stdout)
    own = [(m["start"], m["start"] + m["length"]) for m in mapped if m["depth"] == 0 and m["data"]]
    assert own and all(start >= MiB for start, _ in own)  # only what differs from the base: no copy of its data


def test_a_full_task_queue_at_start_up_logs_one_line_and_check_lists_the_rest(make_repo):
    """Past [tasks] max_tasks, resuming pending intents at start-up (at connect, for a repository connected by its
    callers) stops at once with one warning (not one per record: 100,000 records made 100,000 lines), and
    checkStorageRepository still offers every fix left."""
    repo = make_repo(config=diagnostics_config(thread_pool_size=1, max_tasks=3))
    proxy = repo.proxy
    disks = [ok(proxy.createVirtualDisk(repo.id, str(MiB), "", {}, {"autoFix": False}))["imageId"] for _ in range(8)]
    hold_the_worker(proxy)
    repo.daemon.kill()
    proxy = repo.start()  # the blocker runs again on the only worker; two fixes fill the queue
    lines = repo.daemon.log_text().splitlines()
    assert not [line for line in lines if "Cannot resume" in line]
    waiting = [line for line in lines if "more wait" in line]
    assert len(waiting) == 1 and f"Resumed 2 fixes in {repo.id}; 6 more wait" in waiting[0], waiting
    fixes = ok(proxy.checkStorageRepository(repo.id))["fixes"]
    assert {fix["imageId"] for fix in fixes} == set(disks), [fix for fix in fixes if fix["imageId"] not in disks]


def test_a_merge_cut_off_after_its_rebase_loses_nothing_when_another_merge_runs_first(repo):
    """Disk D on removed snapshots S2 over S1. S2's merge rebased D's top onto S1's volume, then hsmd was
    killed before it updated the records (made here by that same rebase, by hand); S1's merge runs first.
    It must rebase D's top too (its header reads through S1's volume, whatever the records put above it):
    before, it rebased only S2's volume and its clean deleted the file D's header still named."""
    proxy = repo.proxy
    disk = repo.written_disk(0x11, size=8 * MiB)
    s1 = new_snapshot(proxy, disk, repo.id)
    with repo.opened(disk) as path:
        qemu_write(path, 0x22, MiB, MiB)
    s2 = new_snapshot(proxy, disk, repo.id)
    with repo.opened(disk) as path:
        qemu_write(path, 0x33, 2 * MiB, MiB)
    for snapshot in (s2, s1):
        ok(proxy.removeImage(repo.id, snapshot, {"autoFix": False}))
    _, _, bottom = ok(proxy.getImageInfo(repo.id, disk))["image"]["volumes"]  # D's top, S2's volume, S1's
    with repo.opened(disk) as path:  # what S2's merge did before the kill: D's top reads through S1 now
        done = subprocess.run(["qemu-img", "rebase", "-f", "qcow2", "-b", os.path.basename(bottom["path"]), "-F",
                               "qcow2", path], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    fixes = {json.loads(fix["fix"])["image"]: fix["fix"] for fix in ok(proxy.checkStorageRepository(repo.id))["fixes"]}
    for snapshot in (s1, s2):  # S1's merge first
        task = ok(proxy.fixStorageRepository(repo.id, fixes[snapshot], {}))["taskId"]
        assert wait_state(proxy, task, timeout=WAIT)["taskResult"] == "success", status(proxy, task)
    assert run_fixes(proxy, repo.id) == []
    info = wait_image(proxy, repo.id, disk)
    assert [volume["image"] for volume in info["volumes"]] == [disk]
    with repo.opened(disk) as path:
        for pattern, offset in ((0x11, 0), (0x22, MiB), (0x33, 2 * MiB)):
            assert qemu_reads(path, pattern, offset, MiB), hex(pattern)
