"""block-1 repositories for tests: an hsmd on real LVM over loop devices through a real supervdsmd.

LVM runs with activation off (the `lvm_dir` fixture's LVM_SYSTEM_DIR; no device-mapper here), so hsmd
runs with `[irs] lv_activation = loop`: each LV is used through a loop device over its extents. The
fixtures themselves are in tests/conftest.py: `block_hsmd`, `pvs` and `block_repo`.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess

from hsm.storage.block import METADATA_LV
from hsm.storage.slots import COPY, RECORD, SLOT, Copy, encode, read_slot
from tests.lvm_helpers import report

MiB = 1 << 20
GiB = 1 << 30
EXTENT = 128 * MiB  # VDSM's extent size, which block-1 repositories use


def detach_loops_over(pvs_: list[str]) -> None:
    """Detach the loop devices over LVs of these PVs; a lockspace the session's sanlock daemon still renews on
    one (an hsmd killed while joined leaves it joined) is removed first, so that the device goes too."""
    listing = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True).stdout
                         or '{"loopdevices": []}')["loopdevices"]
    loops = {loop["name"] for loop in listing if loop.get("back-file") in pvs_}
    leave_lockspaces_on(loops)
    for name in loops:
        subprocess.run(["losetup", "-d", name], check=False)


def leave_lockspaces_on(devices: set[str]) -> None:
    try:
        import sanlock
        spaces = sanlock.get_lockspaces()
    except Exception:  # no binding, or no daemon: nothing is renewed
        return
    for space in spaces:
        if space["path"] in devices:
            try:
                sanlock.rem_lockspace(space["lockspace"], space["host_id"], space["path"], wait=False)
            except sanlock.SanlockException:
                pass  # leaving already


# What a block-1 repository holds, read (and, for tests of records written elsewhere, written) here as root, not
# through hsm: its LVs as LVM reports them, its records in the slots of its metadata LV, straight from the PV.

SLOTS_READ = 128  # slots read at once (4 MiB), as hsm's loader does


def lv_names(lvm_dir, devices, vg) -> set[str]:
    """The LVs of the VG."""
    return {lv["lv_name"] for lv in report(lvm_dir, devices, "lvs", "lv", "-o", "lv_name", vg)}


def lv_place(lvm_dir, devices, vg, lv) -> tuple[str, int, int]:
    """(pv, offset, size) of the LV's one segment, as LVM reports it."""
    rows = report(lvm_dir, devices, "pvs", "pvseg", "--segments", "-o",
                  "pv_name,pe_start,pvseg_start,lv_name,vg_extent_size,lv_size", "--select",
                  f'vg_name="{vg}" && lv_name="{lv}"')
    assert len(rows) == 1, rows
    row = rows[0]
    return row["pv_name"], int(row["pe_start"]) + int(row["pvseg_start"]) * int(row["vg_extent_size"]), \
        int(row["lv_size"])


def read_direct(device: str, offset: int, size: int) -> bytes:
    """Bytes of a block device, read past every cache (O_DIRECT): what is on the disk."""
    done = subprocess.run(["dd", f"if={device}", "iflag=direct,skip_bytes,count_bytes", f"skip={offset}",
                           f"count={size}", "bs=1M", "status=none"], capture_output=True, check=True)
    return done.stdout


class MetadataSlots:
    """The record slots of a block-1 repository's metadata LV (hsm.storage.slots), on the PV itself."""

    def __init__(self, lvm_dir, devices, vg, repo_uuid: str) -> None:
        self.repo_uuid = repo_uuid
        self.pv, self.offset, self.size = lv_place(lvm_dir, devices, vg, METADATA_LV)

    def slots(self) -> dict[int, object]:
        """{slot number: hsm.storage.slots.Slot} of every slot ever written, slot 0 (the repository's) too."""
        found = {}
        first, capacity = 0, self.size // SLOT
        while first < capacity:
            count = min(SLOTS_READ, capacity - first)
            data = read_direct(self.pv, self.offset + first * SLOT, count * SLOT)
            written = False
            for number in range(first, first + count):
                slot = read_slot(self.repo_uuid, number, data[(number - first) * SLOT:(number - first + 1) * SLOT])
                if slot.newest is not None or slot.damage:
                    found[number] = slot
                    written = True
            if not written:
                break
            first += count
        return found

    def records(self) -> dict[str, bytes]:
        """{image id: its record's JSON} of every slot holding a record."""
        return {slot.newest.image_id: slot.newest.payload for number, slot in self.slots().items()
                if number and slot.newest is not None and slot.newest.kind == RECORD}

    def write(self, image_id: str, payload: bytes) -> None:
        """Write a new version of the image's record into its slot, as another writer would (hsmd stopped)."""
        [(number, slot)] = [(number, slot) for number, slot in self.slots().items()
                            if number and slot.newest is not None and slot.newest.image_id == image_id]
        copy = Copy(image_id, number, slot.newest.sequence + 1, RECORD, payload)
        write_whole(self.pv, self.offset + number * SLOT + slot.next_copy * COPY, encode(self.repo_uuid, copy))


def write_whole(device: str, offset: int, data: bytes) -> None:
    """Write all of `data` (a multiple of 4096, at an offset that is one too) onto a block device, durably
    (O_DIRECT | O_DSYNC), in one write from here: dd fed through a pipe may take a short read and write only
    part of it."""
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC)
    try:
        buf = mmap.mmap(-1, len(data))  # page-aligned, as O_DIRECT wants
        buf[:] = data
        written = os.pwritev(fd, [buf], offset)
        assert written == len(data), f"short write to {device}: {written} of {len(data)} bytes"
    finally:
        os.close(fd)


def write_through_loop(pv: str, offset: int, size: int, at: int, data: bytes) -> None:
    """Write `data` at byte `at` of the LV whose extents are `size` bytes from `offset` on `pv`, as an admin of a
    host without device-mapper would: through a second loop device over those extents, durably (O_DIRECT,
    dsync); the loop device is detached after."""
    device = subprocess.run(["losetup", "-f", "--show", "-o", str(offset), "--sizelimit", str(size), pv],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        write_whole(device, at, data)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)
