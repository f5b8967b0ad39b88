"""Block devices through pyudev: supervdsmd's listing (getDeviceList's data) and hsmd's device monitor.

No udevd runs here (shared/environment.md): pyudev sees the kernel's properties and sysfs, and the
monitor listens to the kernel's uevents, which loop devices send when a file is attached or detached.
"""

import os
import shutil
import subprocess
import threading

import pytest

from hsm.storage.activation import LVActivation
from hsm.storage.udev_monitor import BlockDeviceEvent, BlockDeviceMonitor, default_source
from tests.test_activation import VolumeGroup
from tests.waiting import wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None,
                                reason="needs root and losetup")
needs_lvm = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("lvm") is None or shutil.which("losetup") is None,
                               reason="needs root, lvm2 and losetup")


def attach(image, size_mb=16):
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    try:
        return subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                              check=True).stdout.strip()
    except subprocess.CalledProcessError as e:
        pytest.skip(f"losetup cannot attach a loop device here: {e.stderr.strip()}")


def detach(device):
    subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def loops():
    attached = []

    def make(image, size_mb=16):
        attached.append(attach(image, size_mb))
        return attached[-1]

    yield make
    for device in attached:
        detach(device)


@pytest.fixture
def supervdsmd(lvm_supervdsmd):
    return lvm_supervdsmd


@pytest.fixture
def supervdsm(supervdsmd):
    client = supervdsmd.client()
    yield client
    client.close()


# -- the listing ---------------------------------------------------------------


@needs_lvm
def test_listing_says_which_vg_and_what_is_in_use(supervdsm, loops, tmp_path):
    vg = VolumeGroup(supervdsm, str(tmp_path / "pv.img"))
    try:
        blank = loops(tmp_path / "blank.img")
        formatted = loops(tmp_path / "fs.img")
        subprocess.run(["mkfs.ext4", "-q", formatted], check=True)
        vg.create("vol", 8)
        lv_map = LVActivation(supervdsm, "loop").activate(vg.name, "vol")
        listed = {entry["devnode"]: entry for entry in supervdsm.call("listBlockDevices")}
        pv = listed[vg.device]
        assert (pv["vgName"], pv["inUse"], pv["usedBy"], pv["fsType"]) == (vg.name, True, "pv", "LVM2_member")
        assert pv["pvUUID"] and pv["vgUUID"]
        assert pv["size"] == str(64 << 20)
        assert pv["backingFile"] == vg.image
        assert (listed[blank]["inUse"], listed[blank]["usedBy"], listed[blank]["vgName"]) == (False, "", "")
        assert (listed[formatted]["inUse"], listed[formatted]["usedBy"]) == (True, "ext4")
        assert listed[formatted]["fsType"] == "ext4", "found without udevd"
        assert lv_map not in listed, "a loop device over an LV is the LV, not a device"
        for entry in (pv, listed[blank]):
            assert entry["logicalBlockSize"] == 512 and entry["readOnly"] is False
            assert {"vendor", "model", "serial", "holders", "devtype", "name"} <= set(entry)
    finally:
        vg.remove()


@needs_lvm
def test_get_device_list_through_hsmd_shows_the_vg(make_hsmd, supervdsmd, supervdsm, loops, tmp_path):
    vg = VolumeGroup(supervdsm, str(tmp_path / "pv.img"))
    try:
        blank = loops(tmp_path / "blank.img")
        daemon = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket}}).start()
        devices = {d["devnode"]: d for d in daemon.proxy().getDeviceList()["devList"]}
        vg_uuid = next(e["vgUUID"] for e in supervdsm.call("listBlockDevices") if e["devnode"] == vg.device)
        assert (devices[vg.device]["status"], devices[vg.device]["vgUUID"]) == ("used", vg_uuid)
        assert devices[vg.device]["pvUUID"]
        assert (devices[blank]["status"], devices[blank]["vgUUID"], devices[blank]["pvUUID"]) == ("free", "", "")
    finally:
        vg.remove()


# -- the monitor ---------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.events: list[BlockDeviceEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event):
        with self.lock:
            self.events.append(event)

    def mark(self):
        with self.lock:
            return len(self.events)

    def seen(self, name, since=0):
        with self.lock:
            return [event for event in self.events[since:] if event.name == name]


@pytest.fixture
def monitor():
    watching = BlockDeviceMonitor(source="kernel").start()
    yield watching
    watching.stop()


@needs_root
def test_monitor_sees_a_loop_device_attached_and_detached(monitor, tmp_path):
    recorder = Recorder()
    monitor.add_callback(recorder)
    device = attach(tmp_path / "disk.img")
    name = os.path.basename(device)
    try:
        attached = wait_for(lambda: recorder.seen(name), 10, what=f"an event for {name} attached")
        assert attached[0].devnode == device and attached[0].devtype == "disk"
        assert attached[0].action in ("add", "change")
        mark = recorder.mark()
    finally:
        detach(device)
    detached = wait_for(lambda: recorder.seen(name, mark), 10, what=f"an event for {name} detached")
    assert detached[0].action in ("change", "remove")


@needs_root
def test_a_failing_callback_does_not_stop_the_others_and_removed_ones_are_not_called(monitor, tmp_path):
    def broken(event):
        raise RuntimeError("a consumer's bug")

    recorder, removed = Recorder(), Recorder()
    for callback in (broken, recorder, removed):
        monitor.add_callback(callback)
    monitor.remove_callback(removed)
    device = attach(tmp_path / "disk.img")
    try:
        wait_for(lambda: recorder.seen(os.path.basename(device)), 10, what="an event past the broken callback")
    finally:
        detach(device)
    second = attach(tmp_path / "again.img")
    try:
        wait_for(lambda: recorder.seen(os.path.basename(second)), 10, what="the monitor still running")
    finally:
        detach(second)
    assert removed.events == []


@needs_root
def test_stop_ends_the_calls(tmp_path):
    watching = BlockDeviceMonitor(source="kernel").start()
    recorder = Recorder()
    watching.add_callback(recorder)
    watching.stop()
    device = attach(tmp_path / "disk.img")
    detach(device)
    marker = BlockDeviceMonitor(source="kernel").start()   # a second monitor proves the events were sent
    seen = Recorder()
    marker.add_callback(seen)
    try:
        third = attach(tmp_path / "third.img")
        detach(third)
        wait_for(lambda: seen.seen(os.path.basename(third)), 10, what="events for a monitor that runs")
    finally:
        marker.stop()
    assert recorder.events == []


def test_source_follows_udevd():
    assert default_source() == ("udev" if os.path.exists("/run/udev/control") else "kernel")
    with pytest.raises(ValueError):
        BlockDeviceMonitor(source="netlink")
