"""VDSM's storage domain, pool and task verbs, each flow run twice: through vdsm_shim's ServiceProxy to a real
hsmd, and in-process with no hsmd. Both must answer the same (paths and free space aside)."""

import os

import pytest

from tests.images_helpers import MiB, code, ok, wait_image
from tests.legacy_helpers import BLANK, ISO, OTHER, SD, SP, listing, run_both
from tests.supervdsmd import Supervdsmd
from tests.waiting import wait_for


def domains_flow(irs, root: str) -> list:
    data, iso = os.path.join(root, "data"), os.path.join(root, "iso")
    os.mkdir(data)
    os.mkdir(iso)
    seen = []
    # Bad input first: VDSM's codes, nothing written.
    for args, expected in [((4, "not-a-uuid", "d", data, 1), 1000), ((4, BLANK, "d", data, 1), 1000),
                           ((3, SD, "d", "vg-uuid", 1), 1000), ((2, SD, "d", "/some/path", 1), 1000),
                           ((9, SD, "d", data, 1), 372), (("nfs", SD, "d", data, 1), 1000),
                           ((4, SD, "d", data, 7), 386), ((4, SD, "d", data, 1, 9), 394),
                           ((4, SD, "x" * 51, data, 1), 387), ((4, SD, "d", "relative", 1), 1000),
                           ((4, SD, "d", os.path.join(root, "missing"), 1), 360),
                           ((6, SD, "d", "server:/nowhere", 1), 360)]:
        assert code(irs.createStorageDomain(*args)) == expected, args
    assert listing(root) == ["data", "iso"]
    for verb, args in [("getStorageDomainInfo", ()), ("getStorageDomainStats", ()), ("getImagesList", ()),
                       ("validateStorageDomain", ()), ("formatStorageDomain", ()), ("getFileList", ("*",)),
                       ("setStorageDomainDescription", ("d",))]:
        assert code(irs.call(verb, SD, *args)) == 358, verb
        assert code(irs.call(verb, "../etc", *args)) == 1000, verb

    ok(irs.createStorageDomain(4, SD, "data domain", data, 1, 3))
    ok(irs.createStorageDomain(4, SD, "data domain", data + "/", 1, "3"))  # the same again: success
    assert code(irs.createStorageDomain(4, SD, "other name", data, 1, 3)) == 365
    assert code(irs.createStorageDomain(4, SD, "data domain", iso, 1, 3)) == 365
    ok(irs.createStorageDomain(4, ISO, "isos", iso, 2, ""))  # domVersion left empty: VDSM's default
    seen.append(listing(root))
    info = ok(irs.getStorageDomainInfo(SD))["info"]
    assert info == {"uuid": SD, "type": "LOCALFS", "class": "Data", "name": "data domain", "version": "3",
                    "remotePath": data, "role": "Regular", "pool": [], "lver": -1, "spm_id": -1, "master_ver": 0}
    seen.append(ok(irs.getStorageDomainInfo(ISO))["info"])
    stats = ok(irs.getStorageDomainStats(SD))["stats"]
    assert set(stats) == {"disktotal", "diskfree", "mdavalid", "mdathreshold", "mdasize", "mdafree"}
    assert int(stats["diskfree"]) <= int(stats["disktotal"])
    seen.append(stats)
    ok(irs.validateStorageDomain(SD))

    domains = ok(irs.getStorageDomainsList())["domlist"]
    assert {SD, ISO} <= set(domains)
    seen.append([ok(irs.getStorageDomainsList(BLANK, 2))["domlist"],
                 ok(irs.getStorageDomainsList("", "", 4, iso))["domlist"],
                 ok(irs.getStorageDomainsList("", 1, 6))["domlist"],
                 code(irs.getStorageDomainsList(SP)), code(irs.getStorageDomainsList("", "data"))])

    disk = ok(irs.createVirtualDisk(SD, str(MiB), "", {}, {"taskId": f"disk-{id(irs)}"}))["imageId"]
    wait_image(irs, SD, disk)  # the new API works on a domain: its id is the sdUUID
    assert ok(irs.getImagesList(SD))["imageslist"] == [disk]

    with open(os.path.join(iso, ISO, "iso", "boot.iso"), "wb") as f:
        f.write(b"x" * 4096)
    with open(os.path.join(iso, ISO, "iso", "floppy.vfd"), "wb") as f:
        f.write(b"y" * 512)
    os.chmod(os.path.join(iso, ISO, "iso", "floppy.vfd"), 0o600)
    seen.append([ok(irs.getFileList(ISO, "*.iso"))["files"], ok(irs.getFileList(ISO))["files"],
                 code(irs.getFileList(SD, "*"))])

    stats = ok(irs.repoStats())
    assert set(stats[SD]) == {"code", "lastCheck", "delay", "valid"} and stats[SD]["code"] == 0
    seen.append({sd: stats[sd] for sd in (SD, ISO)})

    ok(irs.setStorageDomainDescription(SD, "renamed"))
    assert code(irs.setStorageDomainDescription(SD, "x" * 51)) == 387
    assert ok(irs.getStorageDomainInfo(SD))["info"]["name"] == "renamed"
    assert code(irs.createStorageDomain(4, SD, "data domain", data, 1, 3)) == 365  # other arguments now

    assert code(irs.formatStorageDomain(ISO, "maybe")) == 1000
    ok(irs.formatStorageDomain(ISO))
    assert code(irs.getStorageDomainInfo(ISO)) == 358
    seen.append(listing(iso))
    return seen


def test_storage_domains(both):
    run_both(both, domains_flow)


def pool_flow(irs, root: str) -> list:
    for name, sd, kind in (("data", SD, 1), ("iso", ISO, 2), ("more", OTHER, 1)):
        os.mkdir(os.path.join(root, name))
        ok(irs.createStorageDomain(4, sd, name, os.path.join(root, name), kind, 3))
    seen = []
    for args, expected in [((0, "bad", "p", SD, [SD], 1), 1000), ((0, SP, "p", SD, [ISO], 1), 1000),
                           ((0, SP, "p" * 51, SD, [SD], 1), 327), ((0, SP, "p", BLANK, [BLANK], 1), 1000),
                           ((0, SP, "p", "55555555-5555-4555-8555-555555555555",
                             ["55555555-5555-4555-8555-555555555555"], 1), 358),
                           ((0, SP, "p", SD, [SD], "one"), 1000)]:
        assert code(irs.createStoragePool(*args)) == expected, args
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []
    for verb, args in [("getStoragePoolInfo", ()), ("getSpmStatus", ()), ("spmStart", (-1, -1, -1, 0)),
                       ("setStoragePoolDescription", ("d",)), ("refreshStoragePool", (SD, 1)),
                       ("destroyStoragePool", (1, "key")), ("spmStop", ()), ("fenceSpmStorage", (-1, -1))]:
        assert code(irs.call(verb, SP, *args)) == 309, verb
    assert code(irs.attachStorageDomain(ISO, SP)) == 309
    ok(irs.disconnectStoragePool(SP, 1, "key"))  # unknown: nothing to do, as in VDSM
    assert code(irs.connectStoragePool(SP, 1, "key", SD, 1)) == 304

    ok(irs.createStoragePool(0, SP, "pool", SD, f"{SD},{ISO}", 1))  # vdsClient's comma-separated domList
    ok(irs.createStoragePool(0, SP, "pool", SD, [ISO, SD], "1"))  # the same again
    assert code(irs.createStoragePool(0, SP, "other", SD, [SD, ISO], 1)) == 316
    assert code(irs.createStoragePool(0, OTHER, "other", OTHER, [OTHER, ISO], 1)) == 380
    assert code(irs.formatStorageDomain(ISO)) == 391
    assert code(irs.connectStoragePool(SP, 1, "key", SD, 2)) == 324
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    ok(irs.connectStoragePool(SP, 1, "key", "", 0))  # again, with the recorded master
    assert code(irs.connectStoragePool(OTHER, 1, "key", OTHER, 1)) == 323
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == [SP]
    assert code(irs.formatStorageDomain(ISO, True)) == 392
    seen.append(ok(irs.getStoragePoolInfo(SP)))
    seen.append(ok(irs.getStorageDomainInfo(SD))["info"])

    answer = ok(irs.spmStart(SP, -1, -1, -1, 0))
    task = answer["uuid"]
    wait_for(lambda: ok(irs.getTaskStatus(task, SP))["taskStatus"]["taskState"] == "finished", what="spmStart")
    seen.append([ok(irs.getTaskStatus(task, SP))["taskStatus"]["taskResult"], ok(irs.getSpmStatus(SP))["spm_st"],
                 ok(irs.fenceSpmStorage(SP, 1, 0))["spm_st"]])
    assert set(ok(irs.getTaskStatus(task, SP))["taskStatus"]) == {"taskID", "taskState", "taskResult", "code",
                                                                   "message"}
    assert {"state", "stage", "verb"} <= set(ok(irs.getTaskStatus(task))["taskStatus"])  # the new API's form
    assert ok(irs.getTaskInfo(task, "", {}))["TaskInfo"] == {"id": task, "verb": "spmStart"}
    assert ok(irs.getAllTasks())["tasks"][task] == {"id": task, "verb": "spmStart", "state": "finished", "code": 0,
                                                    "message": "OK", "result": {"lver": 0}, "tag": "hsm"}
    assert task not in ok(irs.getAllTasksStatuses(SP))["allTasksStatus"]  # VDSM listed "spm" tasks only
    assert task not in ok(irs.getAllTasksInfo(""))["allTasksInfo"]
    assert code(irs.getTaskStatus(task, "bad-pool")) == 1000
    assert code(irs.stopTask(task, SP, {"force": True})) == 410
    assert code(irs.revertTask(task, SP)) == 410
    ok(irs.clearTask(task, SP))
    assert code(irs.getTaskStatus(task, SP)) == 401
    assert code(irs.getTaskInfo(task)) == 401

    ok(irs.attachStorageDomain(OTHER, SP))
    ok(irs.attachStorageDomain(OTHER, SP))  # already attached: success
    assert code(irs.activateStorageDomain(SP, SP)) == 353
    ok(irs.activateStorageDomain(OTHER, SP))
    assert code(irs.detachStorageDomain(SD, SP)) == 383
    assert code(irs.forcedDetachStorageDomain(SD, SP)) == 383
    assert code(irs.deactivateStorageDomain(ISO, SP, BLANK, 1)) == 0
    ok(irs.deactivateStorageDomain(SD, SP, "", 1))  # the master without a new one: ignored, as in VDSM
    ok(irs.setStoragePoolDescription(SP, "renamed"))
    seen.append(ok(irs.getStoragePoolInfo(SP)))
    ok(irs.deactivateStorageDomain(SD, SP, OTHER, 2))  # the master role moves
    assert code(irs.refreshStoragePool(SP, SD, 1)) == 324  # a wrong master: refused, and disconnected
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []
    ok(irs.connectStoragePool(SP, 2, "key", OTHER, 2))
    ok(irs.refreshStoragePool(SP, OTHER, 2))
    ok(irs.detachStorageDomain(SD, SP))
    assert code(irs.detachStorageDomain(SD, SP)) == 375
    ok(irs.forcedDetachStorageDomain(SD, SP))
    seen.append([ok(irs.getStoragePoolInfo(SP))["info"], ok(irs.getStorageDomainsList(SP))["domlist"],
                 ok(irs.getStorageDomainInfo(OTHER))["info"]["role"], ok(irs.prepareForShutdown())])
    ok(irs.spmStop(SP))
    assert code(irs.destroyStoragePool(SP, 1, "key")) == 700
    ok(irs.destroyStoragePool(SP, 2, "key"))
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []
    for sd in (SD, ISO, OTHER):
        ok(irs.formatStorageDomain(sd, False))
    seen.append(listing(root))
    return seen


def test_storage_pool_and_tasks(both):
    run_both(both, pool_flow)


def test_pools_and_domains_survive_a_restart(make_hsmd, tmp_path):
    daemon = make_hsmd().start()
    proxy = daemon.proxy()
    data = tmp_path / "data"
    data.mkdir()
    ok(proxy.createStorageDomain(4, SD, "data", str(data), 1, 3))
    ok(proxy.createStoragePool(0, SP, "pool", SD, [SD], 1))
    ok(proxy.connectStoragePool(SP, 1, "key", SD, 1))
    before = ok(proxy.getStoragePoolInfo(SP))["info"]
    daemon.kill()
    daemon.start()
    proxy = daemon.proxy()
    assert ok(proxy.getConnectedStoragePoolsList())["poollist"] == [SP]
    assert ok(proxy.getStoragePoolInfo(SP))["info"] == before  # the domain is connected again on first use
    assert SD in ok(proxy.getStorageDomainsList())["domlist"]
    assert code(proxy.createStorageDomain(4, SD, "data", str(data), 1, 3)) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_posixfs_domain_on_a_legacy_connection(make_hsmd, tmp_path):
    repository = tmp_path / "rhev"
    supervdsmd = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository)}},
                            mount_sources=str(tmp_path)).start()
    daemon = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket},
                               "irs": {"repository": str(repository)}}).start()
    try:
        proxy = daemon.proxy()
        export = tmp_path / "export"
        export.mkdir()
        assert code(proxy.createStorageDomain(6, SD, "shared", str(export), 1, 3)) == 360  # not connected yet
        con = {"id": "55555555-5555-4555-8555-555555555555", "connection": str(export), "vfs_type": "none",
               "mnt_options": "bind"}
        assert ok(proxy.connectStorageServer(6, BLANK, [con]))["statuslist"] == [{"id": con["id"], "status": 0}]
        ok(proxy.createStorageDomain(6, SD, "shared", str(export) + "/", 1, 3))
        assert (export / SD / "repository.json").exists()  # VDSM's layout: <mount>/<sdUUID>
        info = ok(proxy.getStorageDomainInfo(SD))["info"]
        assert (info["type"], info["remotePath"]) == ("POSIXFS", str(export) + "/")
        assert ok(proxy.getStorageDomainsList("", 1, 6, str(export)))["domlist"] == [SD]
        ok(proxy.formatStorageDomain(SD))
        assert not (export / SD).exists()
        ok(proxy.disconnectStorageServer(6, BLANK, [con]))
    finally:
        daemon.kill()
        supervdsmd.kill()
        os.system(f"grep -o ' {repository}/mnt/[^ ]*' /proc/mounts | xargs -r -n1 umount -l")
