"""Making an LV usable (`[irs] lv_activation`), through a real supervdsmd on real LVM over loop devices.

This kernel has no device-mapper, so the `loop` way is tested for real: qemu-img writes through the
loop device and the bytes are read back from the PV's own backing file at the offset LVM gives. The
`lvm` way cannot make /dev/<vg>/<lv> here (shared/environment.md: lvchange -ay answers 0 and does
nothing with activation off); what is tested of it is that this is reported with a code, not as success.
"""

import json
import os
import shutil
import subprocess

import pytest

from hsm import config as hsmconfig
from hsm.errors import InvalidParameterException, SupervdsmCallError
from hsm.storage.activation import LVActivation

needs_lvm = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("lvm") is None or shutil.which("losetup") is None
                               or shutil.which("qemu-img") is None, reason="needs root, lvm2, losetup and qemu-img")

MiB = 1 << 20
PV_SIZE = 64 * MiB


@pytest.fixture
def supervdsm(lvm_supervdsmd):
    """A client of a real supervdsmd whose LVM has activation off (LVM_SYSTEM_DIR), as on these hosts."""
    client = lvm_supervdsmd.client()
    yield client
    client.close()


def loop_devices():
    return json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                                     check=True).stdout or '{"loopdevices": []}')["loopdevices"]


def maps_over(device):
    """{loop device: (offset, sizelimit, read-only)} of the loop devices over the block device `device`."""
    return {loop["name"]: (loop["offset"], loop["sizelimit"], loop["ro"]) for loop in loop_devices()
            if loop["back-file"] == device}


class VolumeGroup:
    """A VG on one loop device over a sparse file; LVs made through supervdsmd's lvm verb."""

    def __init__(self, supervdsm, image):
        self.supervdsm = supervdsm
        self.image = image
        with open(image, "wb") as f:
            f.truncate(PV_SIZE)
        try:
            self.device = subprocess.run(["losetup", "-f", "--show", image], capture_output=True, text=True,
                                         check=True).stdout.strip()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"losetup cannot attach a loop device here: {e.stderr.strip()}")
        self.name = f"hsmact{os.getpid()}x{id(self) % 100000}"
        self.config = (f'devices {{ filter=["a|^{self.device}$|", "r|.*|"] hints="none" '
                       'obtain_device_list_from_udev=0 use_devicesfile=0 } global { activation=0 }')
        self.lvm("pvcreate", self.device)
        self.lvm("vgcreate", "-s", "4m", self.name, self.device)

    def lvm(self, command, *args):
        done = self.supervdsm.call("lvm", command=command, args=list(args), config=self.config)
        assert done["rc"] == 0, f"{command} {args}: {done['err']}"
        return done["out"]

    def create(self, lv, size_mb):
        self.lvm("lvcreate", "-an", "-Zn", "-L", f"{size_mb}m", "-n", lv, self.name)

    def offset(self, lv):
        """Where LVM says the LV's first byte is on the PV: pe_start + its first physical extent * extent size,
        read from other reports than supervdsmd's (lvs' `devices`, pvs' `pe_start`)."""
        def report(command, kind, fields):
            out = self.lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields, self.name
                           if command != "pvs" else self.device)
            return json.loads(out)["report"][0][kind]

        lv_row = next(row for row in report("lvs", "lv", "lv_name,devices,vg_extent_size") if row["lv_name"] == lv)
        device, extent = lv_row["devices"].rstrip(")").split("(")   # "/dev/loop3(2)"
        assert device == self.device
        pe_start = int(report("pvs", "pv", "pe_start")[0]["pe_start"])
        return pe_start + int(extent) * int(lv_row["vg_extent_size"])

    def remove(self):
        for loop in maps_over(self.device):
            subprocess.run(["losetup", "-d", loop], check=False)
        self.supervdsm.call("lvm", command="vgremove", args=["-f", self.name], config=self.config)
        self.supervdsm.call("lvm", command="pvremove", args=[self.device], config=self.config)
        subprocess.run(["losetup", "-d", self.device], check=False)


@pytest.fixture
def vg(supervdsm, tmp_path):
    group = VolumeGroup(supervdsm, str(tmp_path / "pv.img"))
    yield group
    group.remove()


@pytest.fixture
def loop_way(supervdsm):
    return LVActivation(supervdsm, "loop")


def pattern(size):
    block = bytes(range(256)) * 16  # 4 KiB, every byte value
    return (block * (size // len(block) + 1))[:size]


def read_pv(image, offset, size):
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size)


@needs_lvm
def test_qemu_img_writes_through_the_loop_device_to_the_lv_extents(vg, loop_way, tmp_path):
    vg.create("first", 8)
    vg.create("second", 16)   # starts after "first": its extents are not the PV's first ones
    offset = vg.offset("second")
    assert offset == MiB + 8 * MiB, "pe_start 1 MiB, then the two 4 MiB extents of 'first'"
    path = loop_way.activate(vg.name, "second")
    assert path.startswith("/dev/loop")
    assert maps_over(vg.device) == {path: (offset, 16 * MiB, False)}
    with open(f"/sys/block/{os.path.basename(path)}/size") as f:
        assert int(f.read()) * 512 == 16 * MiB
    source = tmp_path / "pattern.raw"
    source.write_bytes(pattern(16 * MiB))
    done = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "none", str(source), path],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_pv(vg.image, offset, 16 * MiB) == pattern(16 * MiB), "the bytes are at the LV's place on the PV"
    assert read_pv(vg.image, offset - MiB, MiB) == bytes(MiB), "the LV before it is untouched"
    assert read_pv(vg.image, offset + 16 * MiB, MiB) == bytes(MiB), "nothing past the LV's end"
    assert loop_way.deactivate(vg.name, "second") == [path]


@needs_lvm
def test_qcow2_made_through_the_loop_device_reads_back_from_a_second_loop_over_the_pv(vg, loop_way):
    vg.create("disk", 12)
    path = loop_way.activate(vg.name, "disk")
    done = subprocess.run(["qemu-img", "create", "-f", "qcow2", path, "12M"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loop_way.deactivate(vg.name, "disk")
    offset = vg.offset("disk")
    second = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(offset), "--sizelimit", str(12 * MiB),
                             vg.device], capture_output=True, text=True, check=True).stdout.strip()
    try:
        info = subprocess.run(["qemu-img", "info", "--output", "json", "-f", "qcow2", second], capture_output=True,
                              text=True)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["virtual-size"] == 12 * MiB
    finally:
        subprocess.run(["losetup", "-d", second], check=False)


@needs_lvm
def test_read_only_activation_refuses_writes(vg, loop_way, tmp_path):
    vg.create("base", 8)
    path = loop_way.activate(vg.name, "base", read_only=True)
    assert maps_over(vg.device)[path][2] is True
    fd = os.open(path, os.O_WRONLY)   # the kernel lets it open, and refuses the write
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    source = tmp_path / "pattern.raw"
    source.write_bytes(pattern(8 * MiB))
    done = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), path],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert read_pv(vg.image, vg.offset("base"), 8 * MiB) == bytes(8 * MiB)
    assert loop_way.activate(vg.name, "base", read_only=True) == path
    with pytest.raises(SupervdsmCallError) as info:
        loop_way.activate(vg.name, "base")
    assert info.value.code == 558 and "read-only" in str(info.value) and path in str(info.value)
    loop_way.deactivate(vg.name, "base")


@needs_lvm
def test_activation_is_idempotent_and_deactivation_detaches(vg, loop_way):
    vg.create("vol", 8)
    path = loop_way.activate(vg.name, "vol")
    assert loop_way.activate(vg.name, "vol") == path
    assert list(maps_over(vg.device)) == [path], "one loop device over the LV, however often it is activated"
    assert loop_way.deactivate(vg.name, "vol") == [path]
    assert maps_over(vg.device) == {}
    assert loop_way.deactivate(vg.name, "vol") == [], "deactivating an inactive LV is no error"
    again = loop_way.activate(vg.name, "vol")
    assert list(maps_over(vg.device)) == [again]
    loop_way.deactivate(vg.name, "vol")


@needs_lvm
def test_an_lv_of_two_segments_is_refused(vg, loop_way):
    vg.create("grown", 8)
    vg.create("next", 8)
    vg.lvm("lvextend", "-L", "12m", f"{vg.name}/grown")   # its third extent comes after "next"'s
    with pytest.raises(SupervdsmCallError) as info:
        loop_way.activate(vg.name, "grown")
    assert info.value.code == 558
    assert "2 segments" in str(info.value)
    assert maps_over(vg.device) == {}


@needs_lvm
def test_an_lv_that_is_not_there_is_610(vg, loop_way):
    for call in (loop_way.activate, loop_way.deactivate):
        with pytest.raises(SupervdsmCallError) as info:
            call(vg.name, "nosuchlv")
        assert info.value.code == 610
        assert f"{vg.name}/nosuchlv" in str(info.value)
    assert maps_over(vg.device) == {}


BAD_NAMES = ["../etc", "-f", "vg;reboot", "a b", "", "x" * 128, "vg/lv", 'a"b', "a|b", "$(reboot)", "..", "a\n"]


@needs_lvm
@pytest.mark.parametrize("verb", ["loopActivateLV", "loopDeactivateLV", "lvmActivateLV", "lvmDeactivateLV"])
def test_bad_names_are_refused_with_1000_and_nothing_is_attached(supervdsm, vg, verb):
    vg.create("good", 8)
    for vg_name, lv_name in [(vg.name, bad) for bad in BAD_NAMES] + [(bad, "good") for bad in BAD_NAMES] + [
            (vg.name, "snapshot"), (vg.name, "x_tmeta")]:
        with pytest.raises(SupervdsmCallError) as info:
            supervdsm.call(verb, vgName=vg_name, lvName=lv_name)
        assert info.value.code == 1000, (vg_name, lv_name, info.value)
    assert maps_over(vg.device) == {}


@needs_lvm
@pytest.mark.parametrize("extra", [{"device": "/dev/loop0"}, {"offset": 0}, {"sizelimit": 1}, {"path": "/etc/x"}])
def test_no_device_or_offset_is_taken_from_the_caller(supervdsm, vg, extra):
    vg.create("good", 8)
    with pytest.raises(SupervdsmCallError) as info:
        supervdsm.call("loopActivateLV", vgName=vg.name, lvName="good", **extra)
    assert info.value.code == 1000 and "unknown arguments" in str(info.value)
    assert maps_over(vg.device) == {}


@needs_lvm
def test_hsmd_side_checks_names_before_calling(vg, loop_way):
    for bad in ("../x", "-ay", ""):
        with pytest.raises(InvalidParameterException):
            loop_way.activate(vg.name, bad)
        with pytest.raises(InvalidParameterException):
            loop_way.deactivate(bad, "x")


@needs_lvm
def test_the_lvm_way_reports_activation_off_with_a_code(vg, supervdsm):
    """lvchange -ay answers 0 and makes nothing with LVM's activation off: the lvm way says so (558)."""
    vg.create("vol", 8)
    lvm_way = LVActivation(supervdsm, "lvm")
    with pytest.raises(SupervdsmCallError) as info:
        lvm_way.activate(vg.name, "vol")
    assert info.value.code == 558
    assert f"/dev/{vg.name}/vol is not there" in str(info.value)
    assert "lv_activation = loop" in str(info.value)
    assert not os.path.exists(f"/dev/{vg.name}")
    assert lvm_way.deactivate(vg.name, "vol") == [], "an LV that is not active is deactivated already"
    with pytest.raises(SupervdsmCallError) as info:
        lvm_way.activate(vg.name, "nosuchlv")
    assert info.value.code == 558 and "nosuchlv" in str(info.value), "lvchange's own failure, with its words"


def test_the_way_is_lvm_or_loop():
    """[irs] lv_activation picks it for block-1 repositories: lvm by default, loop where there is no
    device-mapper; anything else is refused."""
    assert LVActivation(None, "loop").way == "loop"   # type: ignore[arg-type]
    assert hsmconfig.load().irs.lv_activation == "lvm"
    assert hsmconfig.load(None, {("irs", "lv_activation"): "loop"}).irs.lv_activation == "loop"
    with pytest.raises(InvalidParameterException):
        LVActivation(None, "dm")   # type: ignore[arg-type]
