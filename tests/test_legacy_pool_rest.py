"""The rest of VDSM's pool verbs (the OVF store, ISO and floppy lists, image domains, upgrade and
reconstructMaster), its device verbs and the VG verbs' argument checks, each flow run twice: through
vdsm_shim's ServiceProxy to a real hsmd, and in-process with no hsmd. Both must answer the same (paths and
free space aside)."""

import os
import subprocess

import pytest

from hsm.storage.ovf import MAX_OVF_BYTES
from tests.images_helpers import MiB, code, ok, wait_image
from tests.legacy_helpers import BLANK, ISO, OTHER, SD, SP, listing, run_both, sides_with
from tests.supervdsmd import Supervdsmd

DATA2 = "55555555-5555-4555-8555-555555555555"
NEWSP = "66666666-6666-4666-8666-666666666666"
VM1 = "77777777-7777-4777-8777-777777777777"
VM2 = "88888888-8888-4888-8888-888888888888"
VM3 = "99999999-9999-4999-8999-999999999999"
IMG = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
OVF1 = "<ovf:Envelope>caf\u00e9 \u2713 one</ovf:Envelope>"
OVF2 = "<ovf:Envelope>two</ovf:Envelope>"


def make_domains(irs, root: str, *wanted: tuple) -> dict:
    """(sdUUID, folder, class[, version]) -> {folder: path}: localfs domains made with createStorageDomain."""
    paths = {}
    for sd, name, klass, *version in wanted:
        paths[name] = os.path.join(root, name)
        os.mkdir(paths[name])
        ok(irs.createStorageDomain(4, sd, name, paths[name], klass, *(version or [3])))
    return paths


def vm(uuid: str, text: str, images: str = "") -> dict:
    return {"vm": uuid, "ovf": text, "imglist": images}


def ovf_flow(irs, root: str) -> list:
    paths = make_domains(irs, root, (SD, "data", 1), (ISO, "iso", 2), (OTHER, "export", 3), (DATA2, "data2", 1))
    seen = []
    assert code(irs.updateVM(SP, [vm(VM1, OVF1)])) == 309
    assert code(irs.getVmsList("bad")) == 1000
    ok(irs.createStoragePool(0, SP, "pool", SD, [SD, ISO, OTHER, DATA2], 1))
    assert code(irs.getVmsInfo(SP, "")) == 309  # not connected yet
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    ok(irs.activateStorageDomain(ISO, SP))
    ok(irs.activateStorageDomain(DATA2, SP))

    # Bad input: VDSM's codes, nothing written.
    for args, expected in [((SP, "not a list"), 1000), ((SP, [vm("../../etc/passwd", OVF1)]), 1000),
                           ((SP, [vm(VM1 + "/x", OVF1)]), 1000), ((SP, [{"vm": VM1, "ovf": OVF1}]), 1000),
                           ((SP, [vm(VM1, OVF1), vm(VM2, 5)]), 1000), ((SP, [vm(VM1, OVF1, ["img"])]), 1000),
                           ((SP, [vm(VM1, OVF1), "x"]), 1000), ((SP, [vm(VM1, "x" * (MAX_OVF_BYTES + 1))]), 1000),
                           ((SP, [vm(VM1, OVF1)], "bad"), 1000), ((SP, [vm(VM1, OVF1)], NEWSP), 375),
                           ((SP, [vm(VM1, OVF1)], ISO), 378), ((SP, [vm(VM1, OVF1)], DATA2), 378),
                           ((SP, [vm(VM1, OVF1)], OTHER), 369), ((NEWSP, [vm(VM1, OVF1)]), 309)]:
        assert code(irs.updateVM(*args)) == expected, args[1:]
    assert code(irs.removeVM(SP, "../" + VM1)) == 1000
    assert code(irs.getVmsInfo(SP, BLANK, "all")) == 1000
    assert code(irs.getVmsInfo(SP, BLANK, [VM1, "../x"])) == 1000
    assert not any("vms" in path for path in listing(root))

    ok(irs.updateVM(SP, [vm(VM1, OVF1, "img1,img2"), {}, vm(VM2, OVF2)]))  # an empty entry is skipped, as VDSM
    with open(os.path.join(paths["data"], SD, "vms", VM1 + ".ovf"), encoding="utf-8") as f:
        assert f.read() == OVF1  # on the master domain, in UTF-8
    assert ok(irs.getVmsList(SP))["vmlist"] == [VM1, VM2]
    assert ok(irs.getVmsList(SP, BLANK))["vmlist"] == ok(irs.getVmsList(SP, SD))["vmlist"] == [VM1, VM2]
    assert ok(irs.getVmsInfo(SP, ""))["vmlist"] == {VM1: OVF1, VM2: OVF2}
    assert ok(irs.getVmsInfo(SP, BLANK, [VM2, VM3]))["vmlist"] == {VM2: OVF2}  # one not stored: left out
    ok(irs.updateVM(SP, [vm(VM2, OVF1)], ""))  # replaced
    assert ok(irs.getVmsInfo(SP, SD, [VM2]))["vmlist"] == {VM2: OVF1}
    ok(irs.removeVM(SP, VM2))
    ok(irs.removeVM(SP, VM2, BLANK))  # not there: success, as in VDSM
    assert ok(irs.getVmsList(SP, ""))["vmlist"] == [VM1]

    ok(irs.activateStorageDomain(OTHER, SP))  # an export domain holds its own OVF store
    ok(irs.updateVM(SP, [vm(VM3, OVF2)], OTHER))
    seen.append([ok(irs.getVmsList(SP, OTHER)), ok(irs.getVmsInfo(SP, OTHER)), ok(irs.getVmsList(SP))])
    assert ok(irs.getVmsList(SP, OTHER))["vmlist"] == [VM3]

    ok(irs.deactivateStorageDomain(SD, SP, DATA2, 2))  # the store moves with the master role
    assert ok(irs.getVmsInfo(SP, BLANK))["vmlist"] == {VM1: OVF1}
    assert os.path.exists(os.path.join(paths["data2"], DATA2, "vms", VM1 + ".ovf"))
    assert code(irs.getVmsList(SP, SD)) == 369  # the old master, now only attached

    ok(irs.disconnectStoragePool(SP, 1, "key"))
    assert code(irs.getVmsList(SP)) == 309
    ok(irs.connectStoragePool(SP, 1, "key", DATA2, 2))
    ok(irs.destroyStoragePool(SP, 1, "key"))
    for sd in (SD, ISO, OTHER, DATA2):
        ok(irs.formatStorageDomain(sd))  # an OVF store goes with its domain
    seen.append(listing(root))
    return seen


def test_ovf_store(both):
    assert run_both(both, ovf_flow)[-1] == ["data", "data2", "export", "iso"]


def iso_flow(irs, root: str) -> list:
    paths = make_domains(irs, root, (SD, "data", 1), (ISO, "iso", 2))
    assert code(irs.getIsoList(SP)) == 309
    ok(irs.createStoragePool(0, SP, "pool", SD, [SD], 1))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    assert [code(irs.getIsoList(SP)), code(irs.getFloppyList(SP))] == [314, 314]  # no ISO domain
    ok(irs.attachStorageDomain(ISO, SP))
    assert code(irs.getIsoList(SP, "iso")) == 314  # attached, not active yet
    ok(irs.activateStorageDomain(ISO, SP))
    folder = os.path.join(paths["iso"], ISO, "iso")
    for name, mode in [("boot.iso", 0o644), ("BOOT2.ISO", 0o644), ("secret.iso", 0o600), ("floppy.vfd", 0o644),
                       ("notes.txt", 0o644)]:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"x" * 512)
        os.chmod(os.path.join(folder, name), mode)
    os.mkdir(os.path.join(folder, "folder.iso"))
    seen = [ok(irs.getIsoList(SP)), ok(irs.getIsoList(SP, "")), ok(irs.getIsoList(SP, "txt")),
            ok(irs.getFloppyList(SP))]
    assert seen[0]["isolist"] == seen[1]["isolist"] == ["BOOT2.ISO", "boot.iso"]  # any case; readable files only
    assert seen[3]["isolist"] == ["floppy.vfd"]
    assert [code(irs.getIsoList(SP, 5)), code(irs.getIsoList(SP, "../iso")), code(irs.getIsoList("bad"))] == \
        [1000, 1000, 1000]
    assert ok(irs.getStoragePoolInfo(SP))["info"]["isoprefix"] == folder
    ok(irs.deactivateStorageDomain(ISO, SP, BLANK, 1))
    assert code(irs.getFloppyList(SP)) == 314
    return seen


def test_iso_and_floppy_lists(both):
    run_both(both, iso_flow)


def image_domains_flow(irs, root: str) -> list:
    make_domains(irs, root, (SD, "data", 1), (OTHER, "export", 3), (ISO, "iso", 2), (DATA2, "data2", 1))
    assert code(irs.getImageDomainsList(SP, IMG)) == 309
    ok(irs.createStoragePool(0, SP, "pool", SD, [SD, OTHER, ISO, DATA2], 1))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    for sd in (OTHER, ISO, DATA2):
        ok(irs.activateStorageDomain(sd, SP))
    for sd in (SD, OTHER):
        ok(irs.createVirtualDisk(sd, str(MiB), "", {}, {"taskId": f"disk-{sd}-{id(irs)}", "imageId": IMG}))
        wait_image(irs, sd, IMG)
    seen = [ok(irs.getImageDomainsList(SP, IMG)), ok(irs.getImageDomainsList(SP, IMG, True)),
            ok(irs.getImageDomainsList(SP, IMG, "")), ok(irs.getImageDomainsList(SP, IMG, False)),
            ok(irs.getImageDomainsList(SP, VM1, False))]
    assert [answer["domainslist"] for answer in seen] == [[SD], [SD], [SD], [SD, OTHER], []]
    assert [code(irs.getImageDomainsList(SP, "bad")), code(irs.getImageDomainsList(SP, IMG, "maybe")),
            code(irs.getImageDomainsList("bad", IMG)), code(irs.getImageDomainsList(NEWSP, IMG))] == \
        [1000, 1000, 1000, 309]
    ok(irs.deactivateStorageDomain(OTHER, SP, BLANK, 1))
    assert ok(irs.getImageDomainsList(SP, IMG, False))["domainslist"] == [SD]  # active domains only
    ok(irs.removeImage(SD, IMG, {"taskId": f"remove-{id(irs)}"}))
    assert ok(irs.getImageDomainsList(SP, IMG))["domainslist"] == []  # removed: gone from the index at once
    return seen


def test_image_domains_list(both):
    run_both(both, image_domains_flow)


def upgrade_and_reconstruct_flow(irs, root: str) -> list:
    make_domains(irs, root, (SD, "data", 1, 2), (OTHER, "more", 1, 0), (ISO, "iso", 2, 0), (DATA2, "spare", 1))
    assert code(irs.upgradeStoragePool(SP, 3)) == 309
    ok(irs.createStoragePool(0, SP, "pool", SD, [SD, OTHER, ISO], 1))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    ok(irs.activateStorageDomain(OTHER, SP))
    ok(irs.activateStorageDomain(ISO, SP))
    assert [code(irs.upgradeStoragePool(SP, 9)), code(irs.upgradeStoragePool(SP, "three")),
            code(irs.upgradeStoragePool("bad", 3)), code(irs.upgradeStoragePool(SP, 0))] == [394, 1000, 1000, 395]

    def versions() -> list:
        return [ok(irs.getStorageDomainInfo(sd))["info"]["version"] for sd in (SD, OTHER, ISO)]

    assert versions() == ["2", "0", "0"]  # the refusals changed nothing
    assert ok(irs.upgradeStoragePool(SP, 3))["upgradeStatus"] == "started"
    assert versions() == ["3", "3", "0"]  # the master and the data domains; an ISO domain keeps its version
    assert ok(irs.upgradeStoragePool(SP, "3"))["upgradeStatus"] == "started"  # nothing left to do
    seen = [versions()]

    assert code(irs.reconstructMaster(SP, "rebuilt", OTHER, {SD: "Active", OTHER: "Active"}, 7)) == 325
    ok(irs.disconnectStoragePool(SP, 1, "key"))
    good = {SD: "attached", OTHER: "ACTIVE", ISO: "Inactive"}
    for args, expected in [(("bad", "rebuilt", OTHER, good, 7), 1000), ((SP, "rebuilt", "bad", good, 7), 1000),
                           ((SP, "rebuilt", NEWSP, good, 7), 358), ((SP, "rebuilt", OTHER, [SD, OTHER], 7), 1000),
                           ((SP, "rebuilt", OTHER, {SD: "Active"}, 7), 1000),
                           ((SP, "rebuilt", OTHER, {**good, SD: "Broken"}, 7), 376),
                           ((SP, "rebuilt", OTHER, {**good, "bad": "Active"}, 7), 1000),
                           ((SP, "rebuilt", OTHER, {**good, SD: 1}, 7), 376),
                           ((SP, "x" * 51, OTHER, good, 7), 327), ((SP, "rebuilt", OTHER, good, "seven"), 1000),
                           ((SP, "rebuilt", OTHER, good, 7, "", "", "", "", "", "host"), 1000)]:
        assert code(irs.reconstructMaster(*args)) == expected, args
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))  # nothing written: the old master still holds
    assert ok(irs.getStoragePoolInfo(SP))["info"]["name"] == "pool"
    ok(irs.disconnectStoragePool(SP, 1, "key"))

    ok(irs.reconstructMaster(SP, "rebuilt", OTHER, good, 7, "", "", "", "", "", 2))
    assert ok(irs.getConnectedStoragePoolsList())["poollist"] == []  # reconstructed, not connected
    assert code(irs.connectStoragePool(SP, 2, "key", SD, 1)) == 324
    ok(irs.connectStoragePool(SP, 2, "key", OTHER, 7))
    info = ok(irs.getStoragePoolInfo(SP))
    assert (info["info"]["master_uuid"], info["info"]["master_ver"], info["info"]["name"], info["info"]["lver"]) \
        == (OTHER, 7, "rebuilt", -1)
    assert info["info"]["domains"] == ",".join(sorted([f"{SD}:Attached", f"{OTHER}:Active", f"{ISO}:Attached"]))
    seen.append(info)
    seen.append([ok(irs.getStorageDomainInfo(sd))["info"]["role"] for sd in (SD, OTHER)])

    # Rescue from scratch: a pool this host never knew. A domain of a connected pool stays where it is.
    assert code(irs.reconstructMaster(NEWSP, "fresh", DATA2, {DATA2: "Active", SD: "Attached"}, 1)) == 380
    ok(irs.reconstructMaster(NEWSP, "fresh", DATA2, {DATA2: "Active", NEWSP: "Unattached"}, 1))
    ok(irs.disconnectStoragePool(SP, 2, "key"))
    ok(irs.connectStoragePool(NEWSP, 3, "key", DATA2, 1))
    seen.append(ok(irs.getStoragePoolInfo(NEWSP))["info"]["domains"])
    assert seen[-1] == f"{DATA2}:Active"
    return seen


def test_upgrade_and_reconstruct_master(both):
    run_both(both, upgrade_and_reconstruct_flow)


def block_flow(irs, root: str) -> list:
    make_domains(irs, root, (SD, "data", 1), (OTHER, "more", 1))
    answers = []
    for verb, args, expected in [
            ("createVG", (SD, ["loop0"], "true"), 1000),  # force: hsm never relabels a device in use
            ("createVG", ("bad", ["loop0"]), 1000), ("createVG", (SD, []), 1000), ("createVG", (SD, "loop0"), 1000),
            ("createVG", (SD, ["loop0"], "maybe"), 1000), ("removeVG", (SD,), 1000), ("getVGList", ("x",), 1000),
            ("getVGInfo", ("../vg",), 1000),
            ("extendStorageDomain", (SD, SP, ["loop0"]), 309), ("extendStorageDomain", ("bad", SP, ["loop0"]), 1000),
            ("extendStorageDomain", (SD, "bad", ["loop0"]), 1000), ("extendStorageDomain", (SD, SP, "loop0"), 1000),
            ("extendStorageDomain", (SD, SP, ["loop0"], "maybe"), 1000)]:
        answer = irs.call(verb, *args)
        assert code(answer) == expected, (verb, args)
        answers.append(answer)
    ok(irs.createStoragePool(0, SP, "pool", SD, [SD], 1))
    ok(irs.connectStoragePool(SP, 1, "key", SD, 1))
    for args, expected in [((NEWSP, SP, ["loop0"]), 358), ((OTHER, SP, ["loop0"]), 375),
                           ((SD, SP, ["loop0"], False), 372)]:
        answers.append(irs.extendStorageDomain(*args))
        assert code(answers[-1]) == expected, args
    assert "LOCALFS" in answers[-1]["status"]["message"]
    assert [path for path in listing(root) if "/" not in path] == ["data", "more"]
    return answers


def test_vg_verbs_check_arguments_and_extend_refuses_a_file_domain(both):
    """The VG verbs' arguments are checked before supervdsmd is asked (tests/test_legacy_vg.py runs them on
    real LVM); extendStorageDomain answers 372 for a file domain, which has no devices
    (tests/test_legacy_block.py extends a block domain)."""
    run_both(both, block_flow)


@pytest.fixture
def loop_device(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices)")
    image = tmp_path / "lun.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    made = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup failed: {made.stderr.strip()}")
    yield made.stdout.strip()
    subprocess.run(["losetup", "-d", made.stdout.strip()], check=False)


@pytest.fixture
def both_with_supervdsmd(make_hsmd, tmp_path):
    """[(irs, root)] as `both`, each side asking one real supervdsmd for devices."""
    supervdsmd = Supervdsmd(str(tmp_path / "sv")).start()
    with sides_with(make_hsmd, tmp_path, supervdsmd) as sides:
        yield sides
    supervdsmd.kill()


def devices_flow(device: str):
    guid = os.path.basename(device)

    def flow(irs, root: str) -> list:
        info = ok(irs.getDeviceInfo(guid))["info"]
        assert (info["GUID"], info["capacity"], info["devnode"]) == (guid, str(64 * MiB), device)
        seen = [info, ok(irs.getDeviceInfo(guid, {}))["info"]]
        seen.append(ok(irs.getDevicesVisibility([guid, "no-such-device"], {})))
        assert seen[-1]["visible"] == {guid: True, "no-such-device": False}
        assert ok(irs.getDevicesVisibility([]))["visible"] == {}
        assert [code(irs.getDeviceInfo("no-such-device")), code(irs.getDeviceInfo("")), code(irs.getDeviceInfo(5)),
                code(irs.getDevicesVisibility(guid)), code(irs.getDevicesVisibility([guid, 5]))] == \
            [466, 1000, 1000, 1000, 1000]
        return seen
    return flow


def test_device_info_and_visibility(both_with_supervdsmd, loop_device):
    run_both(both_with_supervdsmd, devices_flow(loop_device))
