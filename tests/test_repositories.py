"""Repositories on a real hsmd: create, connect, disconnect, the monitor, check and fix, restarts."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

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
    volume_files,
    wait_image,
)
from tests.waiting import wait_for


def test_create_formats_only_empty_storage_unless_forced(proxy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    repo_uuid = ok(proxy.createStorageRepository("localfs-1", {"path": str(empty)}, {}))["repoUuid"]
    assert sorted(os.listdir(empty)) == ["images", "repository.json", "volumes"]
    assert code(proxy.createStorageRepository("localfs-1", {"path": str(empty)}, {})) == 365
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "somebody-elses-file").write_text("keep me")
    assert code(proxy.createStorageRepository("localfs-1", {"path": str(busy)}, {})) == 361
    assert os.listdir(busy) == ["somebody-elses-file"]
    forced = ok(proxy.createStorageRepository("localfs-1", {"path": str(empty)}, {"force": True}))["repoUuid"]
    assert forced != repo_uuid
    assert code(proxy.createStorageRepository("localfs-1", {"path": str(tmp_path / "missing")}, {})) == 358
    assert code(proxy.createStorageRepository("localfs-1", {"path": "relative/dir"}, {})) == 1000
    assert code(proxy.createStorageRepository("nosuchfs-9", {"path": str(empty)}, {})) == 1000
    assert code(proxy.createStorageRepository("localfs-1", "not a struct", {})) == 1000


def test_connect_list_and_disconnect(proxy, tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    repo_uuid = ok(proxy.createStorageRepository("localfs-1", {"path": str(path)}, {}))["repoUuid"]
    params = {"path": str(path)}
    ok(proxy.connectStorageRepository("mine", "localfs-1", params, {}))
    ok(proxy.connectStorageRepository("mine", "localfs-1", params, {}))  # the same again is success
    assert code(proxy.connectStorageRepository("mine", "localfs-1", {"path": str(tmp_path)}, {})) == 5012
    assert code(proxy.connectStorageRepository("twin", "localfs-1", params, {})) == 5012
    assert code(proxy.connectStorageRepository("bad/id", "localfs-1", params, {})) == 1000
    assert code(proxy.connectStorageRepository("nothing", "localfs-1", {"path": str(tmp_path)}, {})) == 358
    repos = ok(proxy.getStorageRepositoryList())["repos"]
    assert set(repos) == {"local", "mine"} and repos["mine"]["uuid"] == repo_uuid and repos["mine"]["valid"]
    disk = new_disk(proxy, repo="mine")
    ok(proxy.disconnectStorageRepository("mine", {}))
    assert code(proxy.getImageStatus("mine", disk)) == 358
    assert code(proxy.disconnectStorageRepository("mine", {})) == 358
    ok(proxy.connectStorageRepository("again", "localfs-1", params, {}))
    assert ok(proxy.getImageStatus("again", disk))["image"]["state"] == "optimized"


def test_disconnect_refuses_while_a_fix_runs_unless_forced(proxy, hsmd):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x71, 0, 512 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    assert code(proxy.disconnectStorageRepository("local", {})) == 203
    assert code(proxy.removeImage("local", copy, {})) == 203   # a task is using it
    assert code(proxy.removeImage("local", disk, {})) == 203   # the copy reads it
    wait_image(proxy, "local", copy)
    ok(proxy.disconnectStorageRepository("local", {}))


def test_the_monitor_keeps_checking(make_hsmd):
    daemon = make_hsmd(config={"irs": {"sd_health_check_delay": "0.2"}}).start()
    proxy = daemon.proxy()
    first = ok(proxy.getStorageRepositoryList())["repos"]["local"]

    def checked_after(moment: float) -> dict | None:
        repo = ok(proxy.getStorageRepositoryList())["repos"]["local"]
        # lastCheck is the check's age, to 0.1 s: the check came after `moment` when this is past it.
        return repo if repo["lastCheck"] and time.time() - float(repo["lastCheck"]) > moment + 0.1 else None

    for _ in range(2):  # a check after each moment: one, then another
        moment = time.time()
        later = wait_for(lambda moment=moment: checked_after(moment), what="a check after the last one seen")
    assert later["valid"] and int(later["freeBytes"]) > 0
    assert first["uuid"] == later["uuid"]
    assert ok(proxy.getStats())["stats"]["repositories"]["local"]["valid"] is True


def test_check_finds_leftovers_and_clean_removes_them(proxy, hsmd):
    disk = new_disk(proxy)
    root = local_path(hsmd)
    stray = os.path.join(root, "volumes", "left-over.qcow2")
    open(stray, "w").close()
    stale_tmp = os.path.join(root, "images", f".{disk}.json.4242.tmp")
    open(stale_tmp, "w").close()
    os.utime(stale_tmp, (time.time() - 3600, time.time() - 3600))
    fresh_tmp = os.path.join(root, "images", ".x.json.4243.tmp")  # maybe a write in flight: left alone
    open(fresh_tmp, "w").close()
    [fix] = ok(proxy.checkStorageRepository("local"))["fixes"]
    assert fix["type"] == "clean" and fix["imageId"] == ""
    task = ok(proxy.fixStorageRepository("local", fix["fix"], {}))["taskId"]
    wait_task(proxy, task)
    assert not os.path.exists(stray) and not os.path.exists(stale_tmp) and os.path.exists(fresh_tmp)
    assert ok(proxy.getImageStatus("local", disk))["image"]["state"] == "optimized"


def wait_task(proxy, task_id: str, timeout: float = 180) -> dict:
    def finished() -> dict | None:
        status = ok(proxy.getTaskStatus(task_id))["taskStatus"]
        return status if status["taskState"] == "finished" else None

    return wait_for(finished, timeout, what=f"end of {task_id}")


def test_a_volume_deleted_behind_hsmds_back_is_reported_broken(proxy):
    disk = new_disk(proxy)
    path = top_path(proxy, "local", disk)
    os.rename(path, path + ".away")
    ok(proxy.checkStorageRepository("local"))
    image = ok(proxy.getImageStatus("local", disk))["image"]
    assert image["state"] == "broken" and image["lastError"]["code"] == 201
    assert code(proxy.prepareImage("local", disk)) == 227
    os.rename(path + ".away", path)
    ok(proxy.checkStorageRepository("local"))
    assert ok(proxy.getImageStatus("local", disk))["image"]["state"] == "optimized"


def test_fixes_without_auto_fix(proxy, hsmd):
    disk = new_disk(proxy)
    qemu_write(top_path(proxy, "local", disk), 0x72, 0, MiB)
    snapshot = new_snapshot(proxy, disk)
    child = new_disk(proxy, base=snapshot)
    pending = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {"autoFix": False}))["imageId"]
    ok(proxy.removeImage("local", snapshot, {"autoFix": False}))
    fixes = {fix["imageId"]: fix for fix in ok(proxy.checkStorageRepository("local"))["fixes"]}
    assert {image: fix["type"] for image, fix in fixes.items()} == {pending: "mend", snapshot: "merge"}
    assert code(proxy.fixStorageRepository("local", "not json", {})) == 5013
    assert code(proxy.fixStorageRepository("local", fixes[pending]["fix"].replace(pending, "x" + pending[1:]), {})) \
        == 5013
    for fix in fixes.values():
        wait_task(proxy, ok(proxy.fixStorageRepository("local", fix["fix"], {}))["taskId"])
    assert ok(proxy.getImageStatus("local", pending))["image"]["state"] == "optimized"
    for image in (disk, child):
        info = ok(proxy.getImageInfo("local", image))["image"]
        assert [v["image"] for v in info["volumes"]] == [image]
        assert qemu_reads(info["volumes"][0]["path"], 0x72, 0, MiB)
    assert ok(proxy.checkStorageRepository("local"))["fixes"] == []
    assert len(volume_files(local_path(hsmd))) == 3


def test_images_and_pending_fixes_survive_a_restart(make_hsmd):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    ready = new_disk(proxy)
    pending = ok(proxy.createVirtualDisk("local", str(GiB), "", {}, {"autoFix": False}))["imageId"]
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    assert ok(proxy.getImageStatus("local", ready))["image"]["state"] == "optimized"
    wait_image(proxy, "local", pending)  # resumed at start-up by itself (non-transparent mode)
    daemon.stop()


def test_no_default_repository_when_configured_so(make_hsmd):
    daemon = make_hsmd(config={"irs": {"default_repository": "none"}}).start()
    assert ok(daemon.proxy().getStorageRepositoryList())["repos"] == {}
    assert not os.path.exists(local_path(daemon))


def test_a_forged_clean_fix_is_refused(proxy, hsmd):
    repo_uuid = ok(proxy.getStorageRepositoryList())["repos"]["local"]["uuid"]
    for files in (["volumes/.."], ["../../etc/passwd"], ["volumes/a/../../x"], "volumes/x"):
        forged = json.dumps({"kind": "orphans", "repo": repo_uuid, "image": "", "files": files})
        assert code(proxy.fixStorageRepository("local", forged, {})) == 5013, files
    other = json.dumps({"kind": "orphans", "repo": "another-uuid", "image": "", "files": []})
    assert code(proxy.fixStorageRepository("local", other, {})) == 5013
    assert os.path.isdir(local_path(hsmd))


@pytest.mark.parametrize("folder", ["images", "volumes"])
def test_a_layout_folder_that_is_a_symlink_is_refused(proxy, tmp_path, folder):
    """Issue 11's reproduction: a local user points `images` at a root-owned folder and asks for force."""
    if os.geteuid() != 0:
        pytest.skip("needs root: hsmd must be the privileged side and the attacker another user")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    attacker = tempfile.mkdtemp(prefix="hsm-attacker-", dir="/tmp")
    try:
        os.chmod(attacker, 0o755)
        os.chown(attacker, 65534, 65534)
        subprocess.run(["ln", "-s", str(victim), os.path.join(attacker, folder)], user=65534, check=True)
        answer = proxy.createStorageRepository("localfs-1", {"path": attacker}, {"force": True})
        assert code(answer) == 379 and "symbolic link" in answer["status"]["message"], answer
        assert (victim / "precious").read_text() == "keep"
        assert code(proxy.connectStorageRepository("evil", "localfs-1", {"path": attacker}, {})) != 0
    finally:
        shutil.rmtree(attacker)
