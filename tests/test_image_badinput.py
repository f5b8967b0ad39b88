"""Bad input to the image verbs: each gets a clear code, and nothing in the repository changes."""

import os
import subprocess

import pytest

from tests.images_helpers import (
    GiB,
    MiB,
    backing_chain,
    code,
    local_path,
    new_disk,
    new_snapshot,
    ok,
    qemu_write,
    top_path,
    wait_image,
)

LARGEST = 2**51  # the largest qcow2 image qemu-img makes with its 64 KiB clusters (checked below)


def repository_state(proxy, daemon) -> tuple:
    root = local_path(daemon)
    images = sorted(ok(proxy.getImageList("local"))["images"])
    records = {image: ok(proxy.getImageInfo("local", image))["image"]["generation"] for image in images}
    files = tuple(sorted(os.listdir(os.path.join(root, "volumes")) + os.listdir(os.path.join(root, "images"))))
    return images, records, files


@pytest.fixture
def setup(hsmd):
    proxy = hsmd.proxy()
    disk = new_disk(proxy)
    snapshot = new_snapshot(proxy, disk)
    return hsmd, proxy, disk, snapshot


@pytest.mark.parametrize("size", ["0", "1000", "-512", "12abc", "", 1.5, True, {"a": 1}])
def test_sizes_must_be_positive_multiples_of_512(setup, size):
    daemon, proxy, _, _ = setup
    before = repository_state(proxy, daemon)
    answer = proxy.createVirtualDisk("local", size, "", {}, {})
    assert code(answer) == 1000 and "size" in answer["status"]["message"]
    assert repository_state(proxy, daemon) == before


@pytest.mark.parametrize("size", ["\u00b2", "\u0665\u0661\u0662", "9" * 5000, str(512 * 10**18)],
                         ids=["superscript-two", "arabic-indic-512", "5000-digits", "21-digits"])
def test_sizes_are_ascii_decimal_strings(setup, size):
    daemon, proxy, _, _ = setup
    before = repository_state(proxy, daemon)
    answer = proxy.createVirtualDisk("local", size, "", {}, {})
    assert code(answer) == 1000 and "size" in answer["status"]["message"], answer
    assert len(answer["status"]["message"]) < 200  # a huge size is not echoed whole
    assert repository_state(proxy, daemon) == before


@pytest.mark.parametrize("size", [LARGEST + 512, 2**60, 2**63 - 512, 2**63, 2**64],
                         ids=["max+512", "1EiB", "2**63-512", "2**63", "2**64"])
def test_sizes_qemu_img_cannot_make_are_refused_at_commit(setup, size):
    daemon, proxy, _, _ = setup
    before = repository_state(proxy, daemon)
    answer = proxy.createVirtualDisk("local", str(size), "", {}, {"autoFix": True})
    assert code(answer) == 1000, answer
    assert str(LARGEST) in answer["status"]["message"]
    assert repository_state(proxy, daemon) == before


def test_largest_is_the_limit_of_this_qemu_img(tmp_path):
    def create(size, *backing):
        return subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(tmp_path / f"{size}.qcow2"),
                               str(size)], capture_output=True, text=True, timeout=60)

    assert create(LARGEST).returncode == 0
    assert "too large" in create(LARGEST + 512).stderr
    backing = ["-b", str(tmp_path / f"{LARGEST}.qcow2"), "-F", "qcow2"]
    assert "too large" in create(LARGEST + 512, *backing).stderr


def test_the_largest_size_makes_a_disk_and_a_disk_on_its_snapshot(setup):
    """LARGEST is accepted and made by qemu-img, alone and over a backing file."""
    daemon, proxy, _, _ = setup
    disk = ok(proxy.createVirtualDisk("local", str(LARGEST), "", {}, {"autoFix": True}))["imageId"]
    assert wait_image(proxy, "local", disk)["size"] == str(LARGEST)
    snapshot = new_snapshot(proxy, disk)
    child = ok(proxy.createVirtualDisk("local", str(LARGEST), snapshot, {}, {"autoFix": True}))["imageId"]
    wait_image(proxy, "local", child)
    chain = backing_chain(top_path(proxy, "local", child))
    assert [layer["virtual-size"] for layer in chain] == [LARGEST] * len(chain) and len(chain) >= 2


def test_a_disk_on_a_snapshot_is_not_smaller_than_it(setup):
    daemon, proxy, _, snapshot = setup
    before = repository_state(proxy, daemon)
    assert code(proxy.createVirtualDisk("local", str(GiB // 2), snapshot, {}, {})) == 1000
    assert repository_state(proxy, daemon) == before


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "..", ".hidden", "x" * 200, "sp ace", "semi;colon"])
def test_ids_that_are_not_plain_names(setup, bad_id):
    daemon, proxy, disk, _ = setup
    before = repository_state(proxy, daemon)
    calls = [
        proxy.createVirtualDisk("local", str(GiB), "", {}, {"imageId": bad_id}),
        proxy.createVirtualDisk("local", str(GiB), bad_id, {}, {}),
        proxy.createSnapshot("local", bad_id, {}, {}),
        proxy.copyImage("local", bad_id, "", {}, {}),
        proxy.copyImage("local", disk, bad_id, {}, {}),
        proxy.removeImage("local", bad_id, {}),
        proxy.getImageStatus("local", bad_id),
        proxy.getImageStatus(bad_id, disk),
        proxy.connectStorageRepository(bad_id, "localfs-1", {"path": "/tmp"}, {}),
    ]
    assert [code(answer) for answer in calls] == [1000] * len(calls)
    assert repository_state(proxy, daemon) == before


def test_unknown_repositories_and_images(setup):
    daemon, proxy, disk, _ = setup
    before = repository_state(proxy, daemon)
    assert code(proxy.createVirtualDisk("nowhere", str(GiB), "", {}, {})) == 358
    assert code(proxy.getImageList("nowhere")) == 358
    assert code(proxy.getImageInfo("local", "no-such-image")) == 268
    assert code(proxy.removeImage("local", "no-such-image", {})) == 268
    assert code(proxy.createSnapshot("local", "no-such-image", {}, {})) == 268
    assert code(proxy.copyImage("local", "no-such-image", "", {}, {})) == 268
    assert code(proxy.isSnapshotOf("no-such-image", disk)) == 268
    assert code(proxy.createVirtualDisk("local", str(GiB), "no-such-snapshot", {}, {})) == 268
    assert code(proxy.checkStorageRepository("nowhere")) == 358
    assert repository_state(proxy, daemon) == before


def test_snapshots_never_change(setup):
    daemon, proxy, disk, snapshot = setup
    before = repository_state(proxy, daemon)
    assert code(proxy.createSnapshot("local", snapshot, {}, {})) == 5011
    assert code(proxy.prepareImage("local", snapshot, {"readonly": False})) == 5011
    assert code(proxy.createVirtualDisk("local", str(GiB), disk, {}, {})) == 1000  # a base must be a snapshot
    assert repository_state(proxy, daemon) == before


def test_an_image_a_task_uses_cannot_be_removed(setup):
    daemon, proxy, disk, _ = setup
    qemu_write(top_path(proxy, "local", disk), 0x5A, 0, 512 * MiB)
    copy = ok(proxy.copyImage("local", disk, "", {}, {}))["imageId"]
    removed = proxy.removeImage("local", copy, {})
    assert code(removed) == 203 and ok(proxy.getImageTasks(copy))["tasks"][0] in removed["status"]["message"]
    assert copy in ok(proxy.getImageList("local"))["images"]


def test_bad_options(setup):
    daemon, proxy, disk, _ = setup
    before = repository_state(proxy, daemon)
    for options in ({"strategy": "fastest"}, {"autoFix": "yes"}, {"unknownOption": 1}, "not a struct",
                    {"participatingRepositories": "local"}, {"imageHints": ["local"]}):
        assert code(proxy.createVirtualDisk("local", str(GiB), "", {}, options)) == 1000, options
    assert code(proxy.createVirtualDisk("local", str(GiB), "", "not a struct", {})) == 1000
    assert code(proxy.getImageList("local", {"kind": "template"})) == 1000
    assert repository_state(proxy, daemon) == before
