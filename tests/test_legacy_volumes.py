"""VDSM's volume and image verbs, each flow run twice: through vdsm_shim's ServiceProxy to a real hsmd and
in-process with no hsmd, with the same answers. Real qemu-img volumes; data checked with qemu-io."""

import functools
import http.server
import io
import os
import re
import subprocess
import threading

import pytest

from tests.images_helpers import MiB, backing_chain, code, ok, qemu_reads, qemu_write
from tests.legacy_helpers import BLANK, OTHER, SD, SP, run_both
from tests.waiting import wait_for
from vdsm_shim import ServiceProxy

IMG = "a1111111-1111-4111-8111-111111111111"
IMG2 = "a2222222-2222-4222-8222-222222222222"
IMG3 = "a3333333-3333-4333-8333-333333333333"
TMPL = "a4444444-4444-4444-8444-444444444444"
VOL1 = "b1111111-1111-4111-8111-111111111111"
VOL2 = "b2222222-2222-4222-8222-222222222222"
VOL3 = "b3333333-3333-4333-8333-333333333333"
RAWVOL = "b4444444-4444-4444-8444-444444444444"
TVOL = "b5555555-5555-4555-8555-555555555555"
COW, RAW, PREALLOCATED, SPARSE, SHARED, LEAF = 4, 5, 1, 2, 6, 8
SECTORS = 2 * MiB // 512
THIRD = "55555555-5555-4555-8555-555555555555"


def finished(irs, task: str) -> dict:
    """Wait for a VDSM task to end (VDSM's getTaskStatus form) and answer its taskStatus."""
    def ended():
        status = ok(irs.getTaskStatus(task, BLANK))["taskStatus"]
        return status if status["taskState"] == "finished" else None
    status = wait_for(ended, timeout=120, what=f"task {task} to finish")
    assert status["code"] == 0, status
    return status


def run(irs, answer: dict) -> None:
    finished(irs, ok(answer)["uuid"])


def info(irs, img: str, vol: str) -> dict:
    return ok(irs.getVolumeInfo(SD, BLANK, img, vol))["info"]


def path_of(irs, img: str, vol: str) -> str:
    return ok(irs.getVolumePath(SD, BLANK, img, vol))["path"]


def stable(volume: dict) -> dict:
    """getVolumeInfo without what differs between two runs (times, sizes on disk)."""
    return {key: value for key, value in volume.items() if key not in ("ctime", "mtime", "truesize")}


def volumes_flow(irs, root: str) -> list:
    data = os.path.join(root, "data")
    os.mkdir(data)
    ok(irs.createStorageDomain(4, SD, "data", data, 1, 3))
    seen = []
    # Bad input: VDSM's codes, nothing written.
    for args, expected in [
            ((SD, BLANK, "not-a-uuid", SECTORS, COW, SPARSE, "DATA", VOL1, ""), 1000),
            ((SD, BLANK, IMG, SECTORS, 9, SPARSE, "DATA", VOL1, ""), 1000),
            ((SD, BLANK, IMG, SECTORS, COW, 7, "DATA", VOL1, ""), 1000),
            ((SD, BLANK, IMG, "2 MiB", COW, SPARSE, "DATA", VOL1, ""), 1000),
            ((SD, BLANK, IMG, 0, COW, SPARSE, "DATA", VOL1, ""), 1000),
            ((SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", BLANK, ""), 1000),
            ((SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "x" * 211), 1000),
            ((SD, SP, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, ""), 309),
            ((TMPL, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, ""), 358),
            ((SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "", IMG2, VOL2), 268)]:
        assert code(irs.createVolume(*args)) == expected, args
    assert ok(irs.getImagesList(SD))["imageslist"] == []
    assert os.listdir(os.path.join(data, SD, "volumes")) == []

    # A new image: size in sectors; asked again, the same answer; other arguments, 212.
    run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "first"))
    run(irs, irs.createVolume(SD, "", IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "first", BLANK, BLANK))
    assert code(irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "other")) == 212
    first = info(irs, IMG, VOL1)
    assert stable(first) == {
        "uuid": VOL1, "format": "COW", "type": "SPARSE", "voltype": "LEAF", "disktype": "DATA",
        "capacity": str(2 * MiB), "apparentsize": first["apparentsize"], "parent": BLANK, "legality": "LEGAL",
        "status": "OK", "domain": SD, "image": IMG, "description": "first", "pool": ""}
    seen.append(stable(first))
    qemu_write(path_of(irs, IMG, VOL1), 0x5A, 0, MiB)

    # A snapshot: the new leaf over the old one, which becomes INTERNAL; the data reads through.
    assert code(irs.createVolume(SD, BLANK, IMG, SECTORS, RAW, SPARSE, "DATA", VOL2, "", IMG, VOL1)) == 1000
    assert code(irs.createVolume(SD, BLANK, IMG, SECTORS * 2, COW, SPARSE, "DATA", VOL2, "", IMG, VOL1)) == 1000
    run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL2, "second", IMG, VOL1))
    run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL2, "second", IMG, VOL1))
    assert ok(irs.getVolumesList(SD, BLANK, IMG))["uuidlist"] == [VOL2, VOL1]
    assert ok(irs.getImagesList(SD))["imageslist"] == [IMG]
    assert code(irs.getVolumeInfo(SD, BLANK, VOL1, VOL1)) == 268  # an INTERNAL volume is no image
    assert (info(irs, IMG, VOL1)["voltype"], info(irs, IMG, VOL1)["description"]) == ("INTERNAL", "first")
    assert (info(irs, IMG, VOL2)["parent"], info(irs, IMG, VOL2)["description"]) == (VOL1, "second")
    leaf = path_of(irs, IMG, VOL2)
    assert qemu_reads(leaf, 0x5A, 0, MiB)
    qemu_write(leaf, 0x6B, MiB, MiB)
    seen.append([stable(info(irs, IMG, vol)) for vol in (VOL2, VOL1)])

    # A RAW, preallocated image, size in bytes; a COW leaf over it keeps reading it as raw.
    run(irs, irs.createVolume(SD, BLANK, IMG2, str(MiB), RAW, PREALLOCATED, "DATA", RAWVOL, "raw"))
    raw = info(irs, IMG2, RAWVOL)
    assert (raw["format"], raw["type"], raw["capacity"]) == ("RAW", "PREALLOCATED", str(MiB))
    assert int(raw["truesize"]) >= MiB
    qemu_write(path_of(irs, IMG2, RAWVOL), 0x11, 0, MiB, fmt="raw")
    run(irs, irs.createVolume(SD, BLANK, IMG2, MiB // 512, COW, SPARSE, "DATA", VOL3, "", IMG2, RAWVOL))
    chain = backing_chain(path_of(irs, IMG2, VOL3))
    assert [entry["format"] for entry in chain] == ["qcow2", "raw"]
    assert qemu_reads(path_of(irs, IMG2, VOL3), 0x11, 0, MiB)
    seen.append(stable(info(irs, IMG2, VOL3)))

    # A template from the image (copyImage, volType SHARED), and an image on it.
    run(irs, irs.copyImage(SD, BLANK, BLANK, IMG, VOL2, TMPL, TVOL, "template", BLANK, SHARED, 3, 0, False, False))
    run(irs, irs.copyImage(SD, BLANK, BLANK, IMG, VOL2, TMPL, TVOL, "template", BLANK, SHARED, 3, 0, False, False))
    assert code(irs.copyImage(SD, BLANK, BLANK, IMG, VOL2, TMPL, TVOL, "other", BLANK, SHARED, 3, 0, False,
                              False)) == 212
    template = info(irs, TMPL, TVOL)
    assert (template["voltype"], template["parent"], template["image"]) == ("SHARED", BLANK, TMPL)
    assert subprocess.run(["qemu-img", "compare", leaf, path_of(irs, TMPL, TVOL)]).returncode == 0
    assert sorted(ok(irs.getImagesList(SD))["imageslist"]) == sorted([IMG, IMG2, TMPL])
    run(irs, irs.createVolume(SD, BLANK, IMG3, SECTORS, COW, SPARSE, "DATA", VOL3.replace("b3", "c3"), "",
                              TMPL, TVOL))
    on_template = ok(irs.getVolumesList(SD, BLANK, IMG3))["uuidlist"]
    assert on_template[1:] == [TVOL]
    assert info(irs, IMG3, TVOL)["image"] == TMPL
    assert code(irs.deleteImage(SD, BLANK, TMPL)) == 223  # a template an image is made on
    seen.append([stable(template), on_template])

    # prepareImage/teardownImage in VDSM's form; an image in use cannot be deleted; ILLEGAL is not prepared.
    prepared = ok(irs.prepareImage(SD, BLANK, IMG))
    assert prepared["path"] == leaf
    assert [entry["volumeID"] for entry in prepared["chain"]] == [VOL1, VOL2]
    assert code(irs.deleteImage(SD, BLANK, IMG)) == 203
    ok(irs.teardownImage(SD, BLANK, IMG))
    ok(irs.setVolumeLegality(SD, BLANK, IMG, VOL1, "ILLEGAL"))
    assert code(irs.prepareImage(SD, BLANK, IMG)) == 227
    assert code(irs.setVolumeLegality(SD, BLANK, IMG, VOL1, "BROKEN")) == 1000
    ok(irs.setVolumeLegality(SD, BLANK, IMG, VOL1, "LEGAL"))
    ok(irs.setVolumeDescription(SD, BLANK, IMG, VOL2, "renamed"))
    assert info(irs, IMG, VOL2)["description"] == "renamed"
    sizes = ok(irs.getVolumeSize(SD, BLANK, IMG, VOL2))
    assert int(sizes["apparentsize"]) == os.stat(leaf).st_size
    ok(irs.extendVolume(SD, BLANK, IMG, VOL2, 4))
    assert code(irs.extendVolume(SD, BLANK, IMG, VOL2, 0)) == 1000
    # sendExtendMsg (VDSM's VM code, in its own process): the callback runs here once the extend ends.
    extended = []
    vol_dict = {"domainID": SD, "imageID": IMG, "volumeID": VOL2, "name": "vda"}
    ok(irs.sendExtendMsg(BLANK, vol_dict, 4 * MiB, extended.append))
    wait_for(lambda: extended == [vol_dict], what="sendExtendMsg's callback")
    assert code(irs.sendExtendMsg(BLANK, {"domainID": SD}, 4 * MiB, extended.append)) == 1000
    assert code(irs.sendExtendMsg(BLANK, vol_dict, 0, extended.append)) == 1000
    for verb in ("refreshVolume", "prepareVolume", "teardownVolume"):
        ok(irs.call(verb, SD, BLANK, IMG, VOL2))
        assert code(irs.call(verb, SD, BLANK, IMG, TVOL)) == 201, verb

    # Removing: a volume below the leaf has a child; the leaf alone over INTERNAL volumes stays;
    # mergeSnapshots folds VOL1 into VOL2, the data kept.
    assert code(irs.deleteVolume(SD, BLANK, IMG, [VOL1])) == 204
    assert code(irs.deleteVolume(SD, BLANK, IMG, [VOL2])) == 222
    assert code(irs.deleteImage(SD, BLANK, IMG, True)) == 1000  # postZero: not wiped here, so refused
    run(irs, irs.mergeSnapshots(SD, BLANK, BLANK, IMG, VOL1, VOL2))
    wait_for(lambda: ok(irs.getVolumesList(SD, BLANK, IMG))["uuidlist"] == [VOL2], what="the merge's records")
    assert qemu_reads(leaf, 0x5A, 0, MiB) and qemu_reads(leaf, 0x6B, MiB, MiB)
    assert info(irs, IMG, VOL2)["parent"] == BLANK
    run(irs, irs.deleteVolume(SD, BLANK, IMG3, [on_template[0]]))
    run(irs, irs.deleteImage(SD, BLANK, TMPL))
    run(irs, irs.deleteImage(SD, BLANK, IMG2))
    run(irs, irs.deleteVolume(SD, BLANK, IMG, [VOL2], "false", "false"))
    assert ok(irs.getImagesList(SD))["imageslist"] == []
    wait_for(lambda: os.listdir(os.path.join(data, SD, "volumes")) == [], what="every volume file cleaned")
    return seen


def test_volumes_and_images(both):
    run_both(both, volumes_flow)


def test_vdsm_tasks_cut_off_by_kill_9_wait_for_recover_task_through_the_shim(make_hsmd, tmp_path):
    """VDSM's flow through ServiceProxy: tasks queued when hsmd is killed wait after its restart (transparent
    mode, which the shim set) until VDSM says recoverTask; then they end and no byte is lost."""
    daemon = make_hsmd(config={"tasks": {"thread_pool_size": 1, "diagnostics": True}}).start()
    irs = ServiceProxy(daemon.address)
    data = tmp_path / "data"
    data.mkdir()
    ok(irs.createStorageDomain(4, SD, "data", str(data), 1, 3))
    finished(irs, ok(irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "", "", "",
                                      {"taskId": "vdsm-create"}))["uuid"])
    qemu_write(path_of(irs, IMG, VOL1), 0x7E, 0, 2 * MiB)
    blocker = ok(irs.runTestTask([{"seconds": 60}], {"taskId": "blocker"}))["taskId"]
    wait_for(lambda: ok(irs.getTaskStatus(blocker))["taskStatus"]["state"] == "running", what="the blocker runs")
    copy = ok(irs.copyImage(SD, BLANK, BLANK, IMG, VOL1, TMPL, TVOL, "", BLANK, LEAF, 3, 0, False, False,
                            {"taskId": "vdsm-copy"}))["uuid"]
    assert code(irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL2, "", IMG, VOL1,
                                 {"taskId": "vdsm-snapshot"})) == 203  # the copy reads the image
    snapshot = ok(irs.createVolume(SD, BLANK, IMG2, SECTORS, COW, SPARSE, "DATA", VOL3, "", "", "",
                                   {"taskId": "vdsm-new"}))["uuid"]
    assert (copy, snapshot) == ("vdsm-copy", "vdsm-new")
    daemon.kill()
    assert code(irs.getTaskStatus(copy, BLANK)) == 5015  # hsmd away: at once, VDSM's error shape
    daemon.start()
    for task in (copy, snapshot):  # the same proxy reconnects by itself; hsmd did nothing alone
        assert ok(irs.getTaskStatus(task, BLANK))["taskStatus"]["taskState"] != "finished"
        assert ok(irs.getTaskStatus(task))["taskStatus"]["state"] == "waitrecover"
    ok(irs.revertTask(blocker, BLANK))
    for task in (copy, snapshot):
        ok(irs.recoverTask(task))
        finished(irs, task)
    assert info(irs, TMPL, TVOL)["voltype"] == "LEAF"
    assert qemu_reads(path_of(irs, TMPL, TVOL), 0x7E, 0, 2 * MiB)
    assert info(irs, IMG2, VOL3)["legality"] == "LEGAL"
    finished(irs, ok(irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL2, "", IMG, VOL1))["uuid"])
    assert qemu_reads(path_of(irs, IMG, VOL2), 0x7E, 0, 2 * MiB)
    irs.close()


def moves_flow(irs, root: str) -> list:
    for name, sd in (("one", SD), ("two", OTHER), ("three", THIRD)):
        os.mkdir(os.path.join(root, name))
        ok(irs.createStorageDomain(4, sd, name, os.path.join(root, name), 1, 3))
    seen = []
    run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, "base"))
    qemu_write(path_of(irs, IMG, VOL1), 0x21, 0, MiB)
    run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL2, "leaf", IMG, VOL1))
    qemu_write(path_of(irs, IMG, VOL2), 0x22, MiB, MiB)
    run(irs, irs.createVolume(SD, BLANK, IMG2, SECTORS, RAW, SPARSE, "DATA", RAWVOL, "raw"))
    run(irs, irs.copyImage(SD, BLANK, BLANK, IMG, VOL2, TMPL, TVOL, "template", BLANK, SHARED, 3, 0, False, False))
    run(irs, irs.createVolume(SD, BLANK, IMG3, SECTORS, COW, SPARSE, "DATA", VOL3, "on the template", TMPL, TVOL))

    for args, expected in [((BLANK, SD, SD, IMG, BLANK, 2), 1000), ((BLANK, SD, OTHER, IMG, BLANK, 7), 1000),
                           ((BLANK, SD, OTHER, IMG2.replace("a2", "f2"), BLANK, 2), 268),
                           ((BLANK, SD, OTHER, VOL1, BLANK, 2), 268), ((BLANK, SD, SP, IMG, BLANK, 2), 358),
                           ((SP, SD, OTHER, IMG, BLANK, 2), 309), ((BLANK, SD, OTHER, IMG, BLANK, 2, True), 1000),
                           ((BLANK, SD, OTHER, IMG3, BLANK, 2), 268)]:  # its template is not on the target
        assert code(irs.moveImage(*args)) == expected, args
    assert ok(irs.getImagesList(OTHER))["imageslist"] == []

    # Copy (op 1): every volume with its id, the data through the chain; the source stays.
    run(irs, irs.moveImage(BLANK, SD, OTHER, IMG, BLANK, 1))
    assert ok(irs.getVolumesList(OTHER, BLANK, IMG))["uuidlist"] == [VOL2, VOL1]
    copied = ok(irs.getVolumePath(OTHER, BLANK, IMG, VOL2))["path"]
    assert qemu_reads(copied, 0x21, 0, MiB) and qemu_reads(copied, 0x22, MiB, MiB)
    assert [entry["format"] for entry in backing_chain(copied)] == ["qcow2", "qcow2"]
    seen.append([stable(ok(irs.getVolumeInfo(OTHER, BLANK, IMG, vol))["info"]) for vol in (VOL2, VOL1)])
    assert code(irs.moveImage(BLANK, SD, OTHER, IMG, BLANK, 1)) == 212  # there already
    assert ok(irs.getVolumesList(SD, BLANK, IMG))["uuidlist"] == [VOL2, VOL1]

    # Move (op 2) an image on a template, once the template is on the target.
    run(irs, irs.moveImage(BLANK, SD, OTHER, TMPL, BLANK, 1))
    run(irs, irs.moveImage(BLANK, SD, OTHER, IMG3, BLANK, 2))
    assert ok(irs.getVolumesList(OTHER, BLANK, IMG3))["uuidlist"] == [VOL3, TVOL]
    assert code(irs.getVolumesList(SD, BLANK, IMG3)) == 268
    run(irs, irs.moveMultipleImages(BLANK, SD, OTHER, {IMG2: False}, BLANK))
    assert code(irs.moveMultipleImages(BLANK, SD, OTHER, {IMG: True}, BLANK)) == 1000
    assert ok(irs.getVolumeInfo(OTHER, BLANK, IMG2, RAWVOL))["info"]["format"] == "RAW"
    seen.append([sorted(ok(irs.getImagesList(sd))["imageslist"]) for sd in (SD, OTHER)])

    # cloneImageStructure: the INTERNAL volumes with their data, the leaf new and empty.
    run(irs, irs.cloneImageStructure(BLANK, SD, IMG, THIRD))
    leaf = ok(irs.getVolumePath(THIRD, BLANK, IMG, VOL2))["path"]
    assert qemu_reads(leaf, 0x21, 0, MiB) and qemu_reads(leaf, 0, MiB, MiB)
    run(irs, irs.syncImageData(BLANK, SD, IMG, THIRD, "INTERNAL"))
    assert code(irs.syncImageData(BLANK, SD, IMG, THIRD, "LEAF")) == 1000
    assert code(irs.syncImageData(BLANK, SD, IMG, OTHER, "SOME")) == 1000
    wait_for(lambda: sorted(os.listdir(os.path.join(root, "one", SD, "volumes"))) == sorted(
        f"{vol}.qcow2" for vol in (VOL1, VOL2, TVOL)), what="the moved images' files cleaned")
    return seen


def test_moving_and_copying_images_between_domains(both):
    run_both(both, moves_flow)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Files with byte ranges, as qemu-img's http driver reads them (the stdlib handler sends whole files)."""

    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (int(wanted[1]), int(wanted[2] or size - 1)) if wanted else (0, size - 1)
        end = min(end, size - 1)
        self.send_response(206 if wanted else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            return io.BytesIO(f.read(end - start + 1) if self.command == "GET" else b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): an http server of the folder's files, with byte ranges."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(RangeHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_upload_volume_from_a_url(both, served):
    folder, url = served
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"), str(2 * MiB)], check=True)
    qemu_write(str(folder / "disk.qcow2"), 0x4D, MiB, MiB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "big.qcow2"), str(4 * MiB)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw",
                    str(folder / "over.qcow2")], check=True)

    def flow(irs, root):
        os.mkdir(os.path.join(root, "data"))
        ok(irs.createStorageDomain(4, SD, "data", os.path.join(root, "data"), 1, 3))
        run(irs, irs.createVolume(SD, BLANK, IMG, SECTORS, COW, SPARSE, "DATA", VOL1, ""))
        run(irs, irs.createVolume(SD, BLANK, IMG2, SECTORS, RAW, SPARSE, "DATA", RAWVOL, ""))
        refused = [code(irs.uploadVolume(SD, BLANK, IMG, VOL1, source, 0)) for source in (
            "/etc/passwd", "file:///etc/passwd", "host:/export/disk", f"{url}/big.qcow2", f"{url}/over.qcow2",
            f"{url}/missing.qcow2")]
        refused.append(code(irs.uploadVolume(SD, BLANK, IMG2, RAWVOL, f"{url}/disk.qcow2", 0)))  # not raw
        refused.append(code(irs.uploadVolume(SD, BLANK, IMG, VOL1, f"{url}/disk.qcow2", 0, "scp")))
        ok(irs.uploadVolume(SD, BLANK, IMG, VOL1, f"{url}/disk.qcow2", 2 * MiB, "wget"))
        path = path_of(irs, IMG, VOL1)
        assert qemu_reads(path, 0x4D, MiB, MiB) and qemu_reads(path, 0, 0, MiB)
        assert info(irs, IMG, VOL1)["legality"] == "LEGAL"
        return refused

    assert run_both(both, flow) == [1000, 1000, 1000, 1000, 1000, 2001, 1000, 1000]
