"""VDSM 4.10.3's vdsClient as a client of hsmd: each storage command's flow, with exactly the Python values
vdsClient puts on the wire, through vdsm_shim's ServiceProxy to a real hsmd; the answers must have the keys
vdsClient reads and prints.

vdsClient is Python 2 and needs VDSM's modules, so it cannot run here; what it sends was read from
vdsm_cli/vdsClient.py at tag v4.10.3 (line numbers below). It passes its command-line words through as
strings unless it converts them: `validateArgTypes(args, [types])` (line 63) applies int/str per position;
conList, domList, volume lists and dicts are built by splitting "a,b" and "k=v,k=v" text. "str" below means
the word as typed; defaults are what vdsClient fills in when the word is left out.

| verb (vdsClient lines) | what vdsClient sends | what it reads from the answer |
| --- | --- | --- |
| connectStorageServer (674-687) | int(type), spUUID, [{k: v str}] one entry from "k=v,..." | status |
| validateStorageServerConnection (689-706) | as connectStorageServer | statuslist[].id, .status |
| disconnectStorageServer (708-721) | as connectStorageServer | status |
| discoverSendTargets (643-668) | {id, connection: ip, port: str ("3260"), iqn, portal, user, password} | fullTargets, |
| | all str, id/iqn/portal "" and user/password "" unless given | targets |
| cleanupUnusedConnections (670-672) | () | status |
| (getStorageConnectionsList, prepareImage, teardownImage: not offered by vdsClient 4.10.3) | | |
| createStorageDomain (452-457) | [int, str, str, str, int, int]: domVersion int, or left out | status |
| setStorageDomainDescription (459-465), validateStorageDomain (467-472) | str | status |
| formatStorageDomain (518-527) | sdUUID, autoDetach str, default 'False' | status |
| getStorageDomainInfo (529-536) | sdUUID | every key of info |
| getStorageDomainStats (538-547) | sdUUID | stats.disktotal, stats.diskfree (int() of each) |
| getStorageDomainsList (549-559) | spUUID, default BLANK_UUID | domlist |
| getImagesList (1111-1118) | sdUUID | imageslist |
| getFileList (1080-1089) | [str, str]: (sdUUID) or (sdUUID, pattern) | files {name: value} |
| repoStats (1616-1625) | () | every key but status |
| attach/activate/forcedDetachStorageDomain (474-516) | sdUUID, spUUID | status |
| deactivate/detachStorageDomain (482-508) | sdUUID, spUUID, msdUUID, int(masterVersion) | status |
| createStoragePool (817-835) | int(type), spUUID, name, msdUUID, [sd, ...] from "a,b", int(ver), str extras | status |
| connectStoragePool (846-862) | spUUID, int(id), key, msdUUID default BLANK_UUID, int(ver) default -1 | status |
| disconnectStoragePool (864-871), destroyStoragePool (837-844) | spUUID, int(id), key | status |
| refreshStoragePool (873-880) | spUUID, msdUUID, int(ver) | status |
| setStoragePoolDescription (882-888) | spUUID, str | status |
| getStoragePoolInfo (890-899) | spUUID | every key of info and of dominfo |
| getConnectedStoragePoolsList (1134-1140) | () | poollist |
| spmStart (723-729) | [str, int, int, int, str, int, int], 5 required: scsiFencing str | uuid |
| spmStop (731-736) | spUUID | status |
| getSpmStatus (738-745), fenceSpmStorage (747-756) | spUUID; fence: spUUID, int, int | every key of spm_st |
| upgradeStoragePool (778-783) | [str, int] | upgradeStatus |
| reconstructMaster (797-815) | spUUID, name, msdUUID, {sd: str} from "k=v,...", int(ver), int extras | status |
| updateVM (758-776) | spUUID, [{k: v str}] (imglist "a+b" sent as "a,b"), sdUUID default BLANK_UUID | status |
| removeVM (785-795) | spUUID, vmUUID, sdUUID default BLANK_UUID | status |
| getVmsList (1426-1444) | spUUID, sdUUID default BLANK_UUID | vmlist |
| getVmsInfo (1403-1424) | spUUID, sdUUID default BLANK_UUID, [vm, ...] default [] | vmlist |
| getIsoList (1091-1100), getFloppyList (1102-1109) | spUUID | isolist |
| getImageDomainsList (1120-1132) | spUUID, imgUUID; or a third word as typed (str, named sdUUID there) | domainslist |
| prepareForShutdown (1383-1387) | () | status |
| createVolume (901-927) | 11 args: size int(GiB word) * 2097152 (an int of sectors), int(volFormat), | uuid |
| | int(preallocate), int(diskType), srcImgUUID/srcVolUUID default BLANK_UUID | |
| getVolumeInfo (929-939), getParent (1219-1229) | 4 UUIDs | every key of info; info.parent |
| getVolumePath (941-949) / getVolumeSize (951-961) | 4 UUIDs | path / every key but status |
| extendVolume (963-972) | 4 UUIDs, newSize str (MiB) | status |
| uploadVolume (974-985) | 4 UUIDs, srcPath, size str, extras str | status |
| setVolumeDescription (987-997), setVolumeLegality (999-1007) | 4 UUIDs, str | status |
| deleteVolume (1009-1026) | 3 UUIDs, [vol, ...] from "a,b", postZero str, force str (defaults 'False') | uuid |
| deleteVolumeByDescr (1028-1049) | getVolumesList, getVolumeInfo; deleteVolume(..., [vol, ...], 'false') | info |
| getVolumesList (1051-1078) | (sd, sp, img); no img: getImagesList, then each | info.description, .parent |
| deleteImage (1231-1246) | 3 UUIDs, postZero str, force str (defaults 'False') | uuid |
| moveImage (1248-1267) | 5 UUIDs, int(op), postZero str, force str (defaults 'False') | uuid |
| moveMultipleImages (1289-1307) | 3 UUIDs, {img: postZero str}, vmUUID, force str (default 'False') | uuid |
| cloneImageStructure (1269-1276), syncImageData (1278-1287) | str each | uuid |
| copyImage (1309-1348) | 8 str, dstSdUUID default BLANK_UUID, int volType default 6, int volFormat default 0 | uuid |
| | (UNKNOWN_VOL, VDSM's own default too), int preallocate default 0, postZero, force str ('False') | |
| mergeSnapshots (1350-1365) | 6 UUIDs, postZero str (default 'False') | uuid |
| getTaskStatus (1161-1173) | taskID alone | taskStatus.taskState, .taskResult, .message |
| getTaskInfo (1142-1149) | taskID alone | every key of TaskInfo |
| getAllTasksInfo (1151-1159) / getAllTasksStatuses (1175-1180) | () | allTasksInfo {id: {k: v}} / the whole answer |
| getAllTasks (1182-1193) | one list: [] or the tags from "a,b" | tasks {id: {k: v}} |
| stopTask (1195-1201), clearTask (1203-1209), revertTask (1211-1217) | taskID alone | status |
| getDeviceList (561-566) | its words as typed: () or (str,) | devList |
| getVGList (585-598) | () or (int,) | vglist |
| getDevicesVisibility (576-583) / createVG (618-625) | [guid, ...], {} / name, [guid, ...], bool | visible / uuid |

Five forms hsmd refused when this test was written (an int diskType, copyImage's volFormat 0, getAllTasks'
list, getImageDomainsList's third word, getDeviceList's storageType as a word) each have a test of their own.
"""

import os

import pytest

from tests.images_helpers import code, ok
from tests.legacy_helpers import BLANK, ISO, OTHER, SD, SP
from tests.waiting import wait_for
from vdsm_shim import ServiceProxy

IMG = "c1111111-1111-4111-8111-111111111111"
IMG2 = "c2222222-2222-4222-8222-222222222222"
TMPL = "c3333333-3333-4333-8333-333333333333"
VOL1 = "d1111111-1111-4111-8111-111111111111"
VOL2 = "d2222222-2222-4222-8222-222222222222"
VOL3 = "d3333333-3333-4333-8333-333333333333"
TVOL = "d4444444-4444-4444-8444-444444444444"
VM = "e1111111-1111-4111-8111-111111111111"
LOCALFS, DATA_CLASS, ISO_CLASS = 4, 1, 2
COW, RAW, PREALLOCATED, SPARSE, SHARED = 4, 5, 1, 2, 6
ONE_GIB = 1 * 2097152  # vdsClient's createVolume: the size word in GiB times 2097152, an int of sectors
DISK_TYPE = 2  # vdsClient's createVolume sends int(diskType)
COPY_OP, MOVE_OP = 1, 2


@pytest.fixture
def irs(make_hsmd):
    daemon = make_hsmd(config={"tasks": {"diagnostics": True}}).start()
    proxy = ServiceProxy(daemon.address)
    yield proxy
    proxy.close()


def con_list(text: str) -> list:
    """conList as vdsClient builds it from its "k=v,k=v" word: one entry, every value a string."""
    return [dict(item.split("=") for item in text.split(","))]


def finished(irs, task: str) -> dict:
    """Wait for a task in vdsClient's getTaskStatus form (the id alone) to finish; its taskStatus."""
    def ended():
        status = ok(irs.getTaskStatus(task))["taskStatus"]
        return status if status["taskState"] == "finished" else None
    return wait_for(ended, timeout=120, what=f"task {task} to finish")


def task_ended(irs, task: str) -> dict:
    """finished(), and a success: the three keys vdsClient prints."""
    status = finished(irs, task)
    assert (status["taskResult"], status["message"]) == ("success", "OK"), status
    return status


def run(irs, answer: dict) -> str:
    task = ok(answer)["uuid"]
    task_ended(irs, task)
    return task


def domain(irs, tmp_path, sd: str, name: str, dom_class: int = DATA_CLASS) -> str:
    """A localfs domain as vdsClient makes one: connectStorageServer, then createStorageDomain."""
    path = tmp_path / name
    path.mkdir()
    answer = ok(irs.connectStorageServer(LOCALFS, BLANK, con_list(f"id={name},connection={path}")))
    assert answer["statuslist"] == [{"id": name, "status": 0}]
    ok(irs.createStorageDomain(LOCALFS, sd, name, str(path), dom_class, 3))
    return str(path)


def pool(irs, tmp_path) -> None:
    """A connected pool of three domains (data master SD, OTHER, ISO), SD and OTHER active, spmStart done."""
    domain(irs, tmp_path, SD, "data")
    domain(irs, tmp_path, OTHER, "more")
    domain(irs, tmp_path, ISO, "iso", ISO_CLASS)
    ok(irs.createStoragePool(LOCALFS, SP, "pool", SD, f"{SD},{OTHER},{ISO}".split(","), 1))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    run(irs, irs.spmStart(SP, -1, -1, -1, "false"))
    for sd in (OTHER, ISO):
        ok(irs.activateStorageDomain(sd, SP))


# Connections

def test_connections(irs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    conn = con_list(f"id=1,connection={data}")
    answer = ok(irs.validateStorageServerConnection(LOCALFS, BLANK, conn))
    assert [(entry["id"], entry["status"]) for entry in answer["statuslist"]] == [("1", 0)]
    ok(irs.connectStorageServer(LOCALFS, BLANK, conn))
    ok(irs.connectStorageServer(LOCALFS, BLANK, conn))  # the same again
    missing = con_list(f"id=2,connection={tmp_path / 'missing'}")
    answer = ok(irs.validateStorageServerConnection(LOCALFS, BLANK, missing))
    assert answer["statuslist"][0]["id"] == "2" and answer["statuslist"][0]["status"] != 0
    ok(irs.disconnectStorageServer(LOCALFS, BLANK, conn))
    ok(irs.cleanupUnusedConnections())


def test_discover_send_targets_takes_the_port_as_a_string(irs):
    """vdsClient sends the portal's port as typed ("3260" by default); no supervdsmd here, so both forms
    answer the same error, which is not one about the arguments."""
    con = {"id": "", "connection": "127.0.0.1", "port": "3260", "iqn": "", "portal": "", "user": "",
           "password": ""}
    answer = irs.discoverSendTargets(con)
    assert code(answer) == code(irs.discoverSendTargets({**con, "port": 3260})) != 1000, answer


# Domains

def test_domains(irs, tmp_path):
    data = domain(irs, tmp_path, SD, "data")
    iso = tmp_path / "iso"
    iso.mkdir()
    ok(irs.createStorageDomain(LOCALFS, ISO, "iso", str(iso), ISO_CLASS))  # domVersion left out
    info = ok(irs.getStorageDomainInfo(SD))["info"]
    assert {"uuid", "type", "class", "name", "role", "pool", "version"} <= set(info)
    assert (info["uuid"], info["name"], info["remotePath"]) == (SD, "data", data)
    stats = ok(irs.getStorageDomainStats(SD))["stats"]
    assert 0 <= int(stats["diskfree"]) <= int(stats["disktotal"])
    assert {SD, ISO} <= set(ok(irs.getStorageDomainsList(BLANK))["domlist"])
    ok(irs.setStorageDomainDescription(SD, "renamed"))
    assert ok(irs.getStorageDomainInfo(SD))["info"]["name"] == "renamed"
    ok(irs.validateStorageDomain(SD))
    assert ok(irs.getImagesList(SD))["imageslist"] == []
    (iso / ISO / "iso" / "boot.iso").write_bytes(b"x" * 4096)
    assert set(ok(irs.getFileList(ISO))["files"]) == {"boot.iso"}
    assert set(ok(irs.getFileList(ISO, "*.vfd"))["files"]) == set()
    stats = wait_for(lambda: (lambda answer: answer if {SD, ISO} <= set(answer) else None)(ok(irs.repoStats())),
                     what="repoStats entries of both domains")
    assert stats[SD]["code"] == 0 and {"code", "lastCheck", "delay", "valid"} <= set(stats[ISO])
    ok(irs.formatStorageDomain(ISO, "False"))  # vdsClient's default autoDetach
    assert code(irs.getStorageDomainInfo(ISO)) == 358
    ok(irs.formatStorageDomain(SD, "True"))
    assert not os.path.exists(os.path.join(data, SD))


# Pool and SPM

def test_pool(irs, tmp_path):
    domain(irs, tmp_path, SD, "data")
    domain(irs, tmp_path, OTHER, "more")
    domain(irs, tmp_path, ISO, "iso", ISO_CLASS)
    ok(irs.createStoragePool(LOCALFS, SP, "pool", SD, f"{SD},{ISO}".split(","), 1))
    # The lock words left as typed (strings): the same pool again.
    ok(irs.createStoragePool(LOCALFS, SP, "pool", SD, f"{SD},{ISO}".split(","), 1, "ON", "5", "60", "10", "3"))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    # Master and version left out: vdsClient sends BLANK_UUID and -1, which VDSM 4.10.3 refused too (no such master).
    assert code(irs.connectStoragePool(SP, 1, "key", BLANK, -1)) != 0
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == [SP]
    answer = ok(irs.getStoragePoolInfo(SP))
    assert (answer["info"]["master_uuid"], answer["info"]["name"]) == (SD, "pool")
    assert set(answer["dominfo"]) == {SD, ISO}

    spm = run(irs, irs.spmStart(SP, -1, -1, -1, "false"))
    assert ok(irs.getTaskInfo(spm))["TaskInfo"]["verb"] == "spmStart"
    run(irs, irs.spmStart(SP, -1, -1, -1, "false", 250, 3))
    spm_st = ok(irs.getSpmStatus(SP))["spm_st"]
    assert (spm_st["spmStatus"], spm_st["spmId"]) == ("SPM", 1) and "spmLver" in spm_st
    assert {"spmStatus", "spmLver", "spmId"} <= set(ok(irs.fenceSpmStorage(SP, 1, 0))["spm_st"])
    assert ok(irs.upgradeStoragePool(SP, 3))["upgradeStatus"]

    ok(irs.attachStorageDomain(OTHER, SP))
    ok(irs.activateStorageDomain(OTHER, SP))
    ok(irs.activateStorageDomain(ISO, SP))
    assert OTHER in ok(irs.getStorageDomainsList(SP))["domlist"]
    assert ok(irs.getIsoList(SP))["isolist"] == []
    assert ok(irs.getFloppyList(SP))["isolist"] == []
    ok(irs.setStoragePoolDescription(SP, "renamed"))
    assert ok(irs.getStoragePoolInfo(SP))["info"]["name"] == "renamed"
    ok(irs.refreshStoragePool(SP, SD, 1))

    vm_list = [{"vm": VM, "ovf": "<ovf:Envelope/>", "imglist": f"{IMG},{IMG2}"}]  # typed as "img1+img2"
    ok(irs.updateVM(SP, vm_list, BLANK))
    assert ok(irs.getVmsList(SP, BLANK))["vmlist"] == [VM]
    assert list(ok(irs.getVmsInfo(SP, BLANK, []))["vmlist"]) == [VM]
    assert list(ok(irs.getVmsInfo(SP, BLANK, [VM]))["vmlist"]) == [VM]
    ok(irs.removeVM(SP, VM, BLANK))
    assert ok(irs.getVmsList(SP, BLANK))["vmlist"] == []

    ok(irs.deactivateStorageDomain(OTHER, SP, SD, 1))
    ok(irs.detachStorageDomain(OTHER, SP, SD, 1))
    ok(irs.attachStorageDomain(OTHER, SP))
    ok(irs.forcedDetachStorageDomain(OTHER, SP))
    ok(irs.prepareForShutdown())
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    ok(irs.spmStop(SP))
    ok(irs.disconnectStoragePool(SP, 1, "key"))
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []
    ok(irs.reconstructMaster(SP, "pool", SD, {SD: "active", ISO: "attached"}, 2))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 2))
    ok(irs.destroyStoragePool(SP, 1, "key"))
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []


# Volumes and images

def test_create_volume_as_vdsclient_sends_it(irs, tmp_path):
    domain(irs, tmp_path, SD, "data")
    run(irs, irs.createVolume(SD, BLANK, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL1, "first", BLANK, BLANK))


def test_volumes_and_images(irs, tmp_path):
    """The image flow, every call in vdsClient's form."""
    pool(irs, tmp_path)
    run(irs, irs.createVolume(SD, SP, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL1, "first", BLANK, BLANK))
    run(irs, irs.createVolume(SD, SP, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL2, "second", IMG, VOL1))
    run(irs, irs.createVolume(SD, SP, IMG2, ONE_GIB, RAW, PREALLOCATED, DISK_TYPE, VOL3, "raw", BLANK,
                              BLANK))
    # getVolumesList without an image: every image, then each volume's description and parent.
    listed = {}
    for img in ok(irs.getImagesList(SD))["imageslist"]:
        for vol in ok(irs.getVolumesList(SD, SP, img))["uuidlist"]:
            info = ok(irs.getVolumeInfo(SD, SP, img, vol))["info"]
            listed[vol] = (info["description"], info["parent"])
    assert listed == {VOL1: ("first", BLANK), VOL2: ("second", VOL1), VOL3: ("raw", BLANK)}
    info = ok(irs.getVolumeInfo(SD, SP, IMG, VOL2))["info"]
    assert {"uuid", "format", "type", "voltype", "capacity", "truesize", "apparentsize", "parent", "legality",
            "status", "description"} <= set(info)
    assert (info["format"], info["voltype"], info["capacity"]) == ("COW", "LEAF", str(1 << 30))
    assert os.path.exists(ok(irs.getVolumePath(SD, SP, IMG, VOL2))["path"])
    sizes = {key: value for key, value in ok(irs.getVolumeSize(SD, SP, IMG, VOL2)).items() if key != "status"}
    assert set(sizes) == {"apparentsize", "truesize"} and int(sizes["apparentsize"]) > 0
    ok(irs.extendVolume(SD, SP, IMG, VOL2, "2048"))
    ok(irs.setVolumeDescription(SD, SP, IMG, VOL2, "described"))
    ok(irs.setVolumeLegality(SD, SP, IMG, VOL2, "ILLEGAL"))
    assert ok(irs.getVolumeInfo(SD, SP, IMG, VOL2))["info"]["legality"] == "ILLEGAL"
    ok(irs.setVolumeLegality(SD, SP, IMG, VOL2, "LEGAL"))
    assert ok(irs.getImageDomainsList(SP, IMG))["domainslist"] == [SD]

    # copyImage with every word given; a template (volType 6, SHARED).
    run(irs, irs.copyImage(SD, SP, BLANK, IMG, VOL2, TMPL, TVOL, "template", BLANK, SHARED, COW, SPARSE,
                           "False", "False"))
    assert ok(irs.getVolumeInfo(SD, SP, TMPL, TVOL))["info"]["voltype"] == "SHARED"
    run(irs, irs.deleteImage(SD, SP, TMPL, "False", "False"))

    # moveImage: a move (op 2) to OTHER, a copy (op 1) back; the copy removed, then moveMultipleImages.
    run(irs, irs.moveImage(SP, SD, OTHER, IMG2, BLANK, MOVE_OP, "False", "False"))
    assert ok(irs.getImagesList(OTHER))["imageslist"] == [IMG2]
    run(irs, irs.moveImage(SP, OTHER, SD, IMG2, BLANK, COPY_OP, "False", "False"))
    run(irs, irs.deleteImage(SD, SP, IMG2, "False", "False"))
    run(irs, irs.moveMultipleImages(SP, OTHER, SD, {IMG2: "False"}, BLANK, "False"))
    assert IMG2 in ok(irs.getImagesList(SD))["imageslist"]
    assert ok(irs.getImagesList(OTHER))["imageslist"] == []

    run(irs, irs.mergeSnapshots(SD, SP, BLANK, IMG, VOL1, VOL2, "False"))
    wait_for(lambda: ok(irs.getVolumesList(SD, SP, IMG))["uuidlist"] == [VOL2], what="the merge's records")
    assert ok(irs.getVolumeInfo(SD, SP, IMG, VOL2))["info"]["parent"] == BLANK  # getParent: no parent

    # deleteVolumeByDescr: find by description, then deleteVolume with postZero 'false' and force left out.
    found = [vol for vol in ok(irs.getVolumesList(SD, SP, IMG2))["uuidlist"]
             if "raw" in ok(irs.getVolumeInfo(SD, SP, IMG2, vol))["info"]["description"]]
    run(irs, irs.deleteVolume(SD, SP, IMG2, found, "false"))
    run(irs, irs.deleteVolume(SD, SP, IMG, f"{VOL2}".split(","), "False", "False"))
    assert ok(irs.getImagesList(SD))["imageslist"] == []


def test_copy_image_with_vdsclients_defaults(irs, tmp_path):
    pool(irs, tmp_path)
    run(irs, irs.createVolume(SD, SP, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL1, "", BLANK, BLANK))
    run(irs, irs.copyImage(SD, SP, BLANK, IMG, VOL1, TMPL, TVOL, "template", BLANK, SHARED, 0, 0, "False",
                           "False"))


def test_image_domains_list_with_a_third_word(irs, tmp_path):
    pool(irs, tmp_path)
    run(irs, irs.createVolume(SD, SP, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL1, "", BLANK, BLANK))
    assert ok(irs.getImageDomainsList(SP, IMG, SD))["domainslist"] == [SD]


# Tasks

def test_tasks(irs, tmp_path):
    domain(irs, tmp_path, SD, "data")
    created = run(irs, irs.createVolume(SD, BLANK, IMG, ONE_GIB, COW, SPARSE, DISK_TYPE, VOL1, "", BLANK,
                                        BLANK))
    assert ok(irs.getTaskInfo(created))["TaskInfo"]["id"] == created
    infos = ok(irs.getAllTasksInfo())["allTasksInfo"]
    assert created in infos and all(isinstance(entry, dict) for entry in infos.values())
    assert created in ok(irs.getAllTasksStatuses())["allTasksStatus"]
    ok(irs.clearTask(created))
    assert code(irs.getTaskStatus(created)) == 401

    # A long task (hsm's test task, [tasks] diagnostics): stopTask, revertTask, clearTask by its id alone.
    long = ok(irs.runTestTask([{"seconds": 60}], {"taskId": "long-task"}))["taskId"]
    wait_for(lambda: ok(irs.getTaskStatus(long))["taskStatus"]["taskState"] == "running", what="the task runs")
    ok(irs.stopTask(long))
    status = finished(irs, long)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 443) and status["message"]
    assert code(irs.revertTask(long)) == 410  # rolled back already: nothing left to revert
    ok(irs.clearTask(long))
    assert code(irs.getTaskStatus(long)) == 401


@pytest.mark.parametrize("keys", [[], ["spm"]])
def test_get_all_tasks_as_vdsclient_sends_it(irs, keys):
    tasks = ok(irs.getAllTasks(keys))["tasks"]
    assert all(not keys or entry["tag"] in keys for entry in tasks.values())


# Devices (only the argument forms are checked here: tests/test_legacy_block.py runs block domains)

def test_device_list_with_the_type_as_typed(irs):
    assert code(irs.getDeviceList("3")) == code(irs.getDeviceList(3))
