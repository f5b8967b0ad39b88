"""Copies offloaded to an array: a file repository whose folder lives on an array's file system clones
volumes there by the array's file clone (lsm fs_file_clone), through a real hsmd over XML-RPC.

libstoragemgmt is not installable on these machines, so the array is the FAKE simulator in
tests/fake_lsm (lsm's client API and its sim:// plugin's behaviour; see its docstring). Its file system
is a local folder standing for the array's NFS export as a host mounts it, and its fs_file_clone
really copies the file inside that folder, as an array does on its own storage, so that the copies
are compared byte for byte with `qemu-img compare`. The repositories are localfs-1 over that folder:
kernel NFS mounts do not work here.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.hsmd import Hsmd
from tests.images_helpers import GiB, MiB, code, new_disk, new_snapshot, ok, qemu_write, top_path, wait_image
from tests.waiting import wait_for

FAKE_LSM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_lsm")
sys.path.insert(0, FAKE_LSM)
lsm = importlib.import_module("lsm")  # the fake, never libstoragemgmt's (tests/fake_lsm/lsm/__init__.py)
fake_sim = importlib.import_module("lsm._sim")


@dataclass
class OnArray:
    """An hsmd with one fake sim:// array, a file system of it, and repository "arr" in folder "repo" of it."""

    daemon: Hsmd
    uri: str
    statefile: str
    fs_id: str
    root: str  # the file system's data: what a host sees where it mounts the array's export

    @property
    def proxy(self):
        return self.daemon.proxy()

    def clones(self) -> list[dict]:
        """The file clones the array was asked for, as the array itself keeps them."""
        with open(self.statefile) as f:
            return json.load(f).get("file_clones", [])

    def record(self, folder: str = "repo") -> dict:
        with open(os.path.join(self.root, folder, "repository.json")) as f:
            return json.load(f)

    def repository(self, repo: str = "arr") -> dict:
        return ok(self.proxy.getStorageRepositoryList())["repos"][repo]

    def create(self, repo: str = "arr", folder: str = "repo", **array) -> dict:
        """createStorageRepository's answer for `folder` of the file system, and connect it when made."""
        path = os.path.join(self.root, folder)
        os.makedirs(path, exist_ok=True)
        place = {"arrayId": self.uri, "fsId": self.fs_id, "path": folder, **array}
        answer = self.proxy.createStorageRepository("localfs-1", {"path": path}, {"array": place})
        if answer["status"]["code"] == 0:
            ok(self.proxy.connectStorageRepository(repo, "localfs-1", {"path": path}, {}))
        return answer


@pytest.fixture
def array(make_hsmd, tmp_path, monkeypatch):
    """Start an hsmd beside a fresh fake array with one file system: array(**offload options) -> OnArray."""
    monkeypatch.setenv("LSM_SIM_TIME", "0")  # what this process does on the array answers at once
    statefile = str(tmp_path / "sim.json")
    uri = f"sim://?statefile={statefile}"
    root = tmp_path / "export"
    root.mkdir()
    fs_id = fake_sim.add_filesystem(statefile, "images", str(root))

    def start(sim_time: str = "0.2", create: bool = True, **offload) -> OnArray:
        daemon = make_hsmd(config={"offload": {"arrays": uri, **offload}},
                           env={"PYTHONPATH": FAKE_LSM, "LSM_SIM_TIME": sim_time}).start()
        made = OnArray(daemon, uri, statefile, fs_id, str(root))
        if create:
            ok(made.create())
        return made

    return start


def same_data(a: str, b: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def disk_with_data(proxy, repo: str = "arr") -> tuple[str, str]:
    disk = new_disk(proxy, repo=repo)
    path = top_path(proxy, repo, disk)
    qemu_write(path, 0x11, 0, 4 * MiB)
    qemu_write(path, 0x22, 512 * MiB, 4 * MiB)
    return disk, path


def copy_of(proxy, image: str, repo: str = "arr", **options) -> str:
    copy = ok(proxy.copyImage(repo, image, "", {}, options))["imageId"]
    wait_image(proxy, repo, copy)
    return copy


def test_copies_and_disks_for_performance_are_cloned_by_the_array(array):
    on = array()
    repo = on.repository()
    assert repo["capabilities"]["offload"][0] == "array"
    assert {k: v for k, v in repo["capabilities"]["array"].items() if k != "readAt"} == \
        {"arrayId": on.uri, "fsId": on.fs_id, "path": "repo", "capabilities": {"FILE_CLONE": True}}
    assert float(repo["capabilities"]["array"]["readAt"]) > 0
    assert on.record()["array"] == {"arrayId": on.uri, "fsId": on.fs_id, "path": "repo"}  # in its metadata
    assert on.record()["arrayCapabilities"]["FILE_CLONE"] is True
    assert "array" in ok(on.proxy.getCapabilities())["info"]["offloadBackends"]
    disk, source = disk_with_data(on.proxy)
    copy = copy_of(on.proxy, disk)
    target = top_path(on.proxy, "arr", copy)
    assert same_data(source, target)
    [clone] = on.clones()
    assert clone["fs_id"] == on.fs_id and clone["src"] == os.path.relpath(source, on.root) \
        and clone["dst"] == os.path.relpath(target, on.root)
    assert f"into {copy} of arr by array" in on.daemon.log_text()
    snapshot = new_snapshot(on.proxy, disk, repo="arr")
    fast = ok(on.proxy.createVirtualDisk("arr", str(2 * GiB), snapshot, {}, {"strategy": "performance"}))["imageId"]
    wait_image(on.proxy, "arr", fast)
    info = ok(on.proxy.getImageInfo("arr", fast))["image"]
    assert len(info["volumes"]) == 1 and len(on.clones()) == 2
    assert same_data(top_path(on.proxy, "arr", snapshot), info["volumes"][0]["path"])  # its 2nd GiB reads zeros
    assert f"Made disk {fast} of arr from snapshot {snapshot} by array" in on.daemon.log_text()


def test_without_file_clone_copies_fall_back_and_the_record_says_so(array):
    on = array()
    fake_sim.set_capabilities_off(on.statefile, [lsm.Capabilities.FILE_CLONE])
    ok(on.proxy.refreshArrayCapabilities(on.uri))
    wait_for(lambda: on.record()["arrayCapabilities"]["FILE_CLONE"] is False, timeout=30,
             what="the repository's record to store the capability's loss")
    wait_for(lambda: "array" not in on.repository()["capabilities"]["offload"], timeout=30,
             what="the repository to stop offering the array")
    disk, source = disk_with_data(on.proxy)
    copy = copy_of(on.proxy, disk)
    assert same_data(source, top_path(on.proxy, "arr", copy))
    assert on.clones() == [] and f"into {copy} of arr by array" not in on.daemon.log_text()
    fake_sim.set_capabilities_off(on.statefile, [])
    ok(on.proxy.refreshArrayCapabilities(on.uri))
    wait_for(lambda: on.repository()["capabilities"]["offload"][:1] == ["array"], timeout=30,
             what="the array offered again once it clones again")


def test_a_clone_the_array_puts_elsewhere_is_not_taken_for_the_copy(array):
    """A wrong array.path: the array is asked for names it does not have, refuses, and qemu-img copies."""
    on = array(create=False)
    os.makedirs(os.path.join(on.root, "elsewhere", "volumes"))
    ok(on.create(path="elsewhere"))
    disk, source = disk_with_data(on.proxy)
    copy = copy_of(on.proxy, disk)
    assert same_data(source, top_path(on.proxy, "arr", copy))
    assert on.clones() == []
    assert "The array did not clone" in on.daemon.log_text()


def test_offload_false_and_offload_disabled_never_ask_the_array(array, make_hsmd):
    on = array()
    disk, source = disk_with_data(on.proxy)
    copy = copy_of(on.proxy, disk, offload=False)
    assert same_data(source, top_path(on.proxy, "arr", copy)) and on.clones() == []
    on.daemon.stop()
    off = make_hsmd(name="off", config={"offload": {"arrays": on.uri, "enabled": "false"}},
                    env={"PYTHONPATH": FAKE_LSM, "LSM_SIM_TIME": "0"}).start()
    path = os.path.join(on.root, "repo")
    ok(off.proxy().connectStorageRepository("arr", "localfs-1", {"path": path}, {}))
    repo = ok(off.proxy().getStorageRepositoryList())["repos"]["arr"]
    assert repo["capabilities"]["offload"] == [] and repo["capabilities"]["array"]["fsId"] == on.fs_id
    assert ok(off.proxy().getCapabilities())["info"]["offloadBackends"] == []
    copy = copy_of(off.proxy(), disk)
    assert same_data(source, top_path(off.proxy(), "arr", copy)) and on.clones() == []


@pytest.mark.parametrize("place, expected", [
    ({"arrayId": "sim://?statefile=/nowhere"}, 5017),
    ({"fsId": "FS_ID_99999"}, 5025),
    ({"path": "../outside"}, 1000),
    ({"path": "/abs"}, 1000),
    ({"fsId": ""}, 1000),
    ({"extra": 1}, 1000),
])
def test_a_bad_array_place_is_refused_and_nothing_is_made(array, place, expected):
    on = array(create=False)
    assert code(on.create(**place)) == expected
    assert os.listdir(os.path.join(on.root, "repo")) == []
    assert code(on.proxy.createStorageRepository("block-1", {"vgName": "vg"},
                                                 {"array": {"arrayId": on.uri, "fsId": on.fs_id}})) == 1000


@pytest.mark.parametrize("damage", [{"arrayId": 5}, "text", {"arrayId": "x", "fsId": "y", "path": "../../etc"}])
def test_a_damaged_array_field_in_the_record_means_no_array(array, damage):
    """The record comes from shared storage: a bad `array` field is left out (with a warning), never used."""
    on = array()
    path = os.path.join(on.root, "repo")
    ok(on.proxy.disconnectStorageRepository("arr", {}))
    record = on.record()
    record["array"] = damage
    with open(os.path.join(path, "repository.json"), "w") as f:
        json.dump(record, f)
    ok(on.proxy.connectStorageRepository("arr", "localfs-1", {"path": path}, {}))
    assert "array" not in on.repository()["capabilities"]
    disk, source = disk_with_data(on.proxy)
    copy = copy_of(on.proxy, disk)
    assert same_data(source, top_path(on.proxy, "arr", copy)) and on.clones() == []
    assert "no array offload" in on.daemon.log_text()
