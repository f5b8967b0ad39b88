"""Many hosts on one block-1 repository: two hsmd, each with its own sanlock daemon, supervdsmd and host id, on
one VG over loop devices both see (tests/multihost.py `block_cluster`). Record changes go under the
metadata-writer lease of the lockspace in the VG's ids and leases LVs, and every host's index follows the
others' (issue 15).

What the repository holds is read here as root, not through hsm: its LVs as LVM reports them, its records
in the slots of its metadata LV, straight from the PV (tests/block_helpers.py)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from hsm.ids import is_uuid
from hsm.leases.lockspace import LEASE_OFFSET
from hsm.storage.block import IDS_LV, LEASES_LV, METADATA_LV
from tests.block_helpers import MetadataSlots, detach_loops_over, lv_names, lv_place
from tests.images_helpers import code, ok, wait_image
from tests.lvm_helpers import real_lvm
from tests.multihost import (
    BLOCK_ID,
    HOST_DEAD_AFTER,
    Host,
    MiB,
    block_cluster,
    create_and_remove,
    daemon_lost_then_back,
    die_committing,
    fix_refused,
    lease_moves,
    live_ids,
    settle,
    writer_holder,
)
from tests.waiting import wait_for

pytest.importorskip("sanlock")
pytestmark = [pytest.mark.skipif(shutil.which("sanlock") is None, reason="needs sanlock"), real_lvm]


@pytest.fixture
def make_two_hosts(tmp_path, pvs, lvm_dir):
    """make(hsmd_config=None) -> ([host 1, host 2] on one new block-1 repository on `pvs`, its VG name). At the end
    the hosts are killed and the loop devices over its LVs detached; the `loops` fixture then removes the VG."""
    hosts: list[Host] = []

    def make(hsmd_config: dict | None = None) -> tuple[list[Host], str]:
        made, params = block_cluster(tmp_path, 2, pvs, lvm_dir, hsmd_config)
        hosts.extend(made)
        return made, params["vgName"]

    try:
        yield make
    finally:
        for host in hosts:
            host.close()
        detach_loops_over(pvs)


@pytest.fixture
def two_hosts(make_two_hosts):
    return make_two_hosts()


def metadata_slots(host: Host, pvs: list[str], vg: str) -> MetadataSlots:
    repo_uuid = ok(host.proxy.getStorageRepositoryList())["repos"][BLOCK_ID]["uuid"]
    return MetadataSlots(host.lvm_dir, pvs, vg, repo_uuid)


def holds_exactly(host: Host, pvs: list[str], lvm_dir: str, vg: str, live: set[str]) -> dict[str, dict]:
    """The metadata LV holds exactly the records of `live` (no slot damaged), the VG exactly their volumes' LVs
    besides its own; answers {image id: record}."""
    slots = metadata_slots(host, pvs, vg)
    records = {image_id: json.loads(payload) for image_id, payload in slots.records().items()}
    assert set(records) == live
    assert not {number: slot.damage for number, slot in slots.slots().items() if slot.damage}
    volumes = {volume["id"] for image_id, record in records.items() for volume in record["volumes"]
               if volume["image"] == image_id}
    lvs = lv_names(lvm_dir, pvs, vg)
    assert {name for name in lvs if is_uuid(name)} == volumes
    assert {METADATA_LV, IDS_LV, LEASES_LV} <= lvs
    return records


@pytest.mark.timeout(600)  # about 30 s alone here (80 LV creates with their loop activations, 40 removes)
def test_120_creates_and_removes_spread_over_two_hosts(two_hosts, pvs, lvm_dir):
    """Two clients per host create disks and remove disks at random, 120 verbs in all, at once; a client removes
    any disk created so far, often one the other host made (whose record and LV the host it asks must know).
    Afterwards both hosts list exactly the disks acknowledged and not removed; the metadata LV holds exactly
    their records (no slot damaged), the VG exactly their volumes' LVs, and both hosts check clean."""
    hosts, vg = two_hosts
    live, removed = create_and_remove(hosts, clients=2, verbs=30, seed=20261201)
    assert removed, "no disk was removed: the test proves less than it says"
    settle(hosts, live)
    holds_exactly(hosts[0], pvs, lvm_dir, vg, live)
    for host in hosts:
        leases = host.leases()
        assert leases["joined"] and leases["hostId"] == host.host_id and leases["error"] == "", leases


def test_a_host_without_its_sanlock_daemon_writes_no_record(two_hosts, pvs):
    """Host 2's sanlock daemon dies while its hsmd runs: its createVirtualDisk is refused with 661 (it cannot
    say it is in the lockspace) and nothing in the metadata LV changes, while host 1 goes on; once the daemon
    is back, host 2 joins again and commits again."""
    (one, two), vg = two_hosts
    slots = metadata_slots(one, pvs, vg)
    made, again = daemon_lost_then_back(one, two, slots.slots, refused={661})
    assert set(slots.records()) == {made, again}


def test_volume_leases_of_block_images_live_in_the_leases_lv(make_two_hosts, pvs):
    """[irs] use_volume_leases on block-1: an image's lease is the MiB of the leases LV after its record slot's
    number (getImageInfo says where); prepareImage on host 1 holds it, so host 2's prepareImage is refused (651)
    and its removeImage too (203), naming host 1; after teardownImage host 2 may. A disk made later in the
    slot of a removed one gets its own lease in the same place."""
    import sanlock

    (one, two), vg = make_two_hosts({"irs": {"use_volume_leases": True}})
    slots = metadata_slots(one, pvs, vg)
    space = ok(one.proxy.getStorageRepositoryList())["repos"][BLOCK_ID]["uuid"].encode()
    disks = [ok(one.proxy.createVirtualDisk(BLOCK_ID, str(MiB), "", {}, {}))["imageId"] for _ in range(2)]
    for disk in disks:
        wait_image(one.proxy, BLOCK_ID, disk)
    wait_for(lambda: set(disks) <= live_ids(two), timeout=30, what="host 2 to see the disks")

    def slot_of(image_id: str) -> int:
        [number] = [n for n, slot in slots.slots().items() if n and slot.newest and slot.newest.image_id == image_id]
        return number

    first, second = disks
    lease = ok(one.proxy.getImageInfo(BLOCK_ID, second))["image"]["lease"]
    assert lease["offset"] == str((slot_of(second) + 1) * MiB) and lease["path"].startswith("/dev/"), lease
    assert ok(two.proxy.getImageInfo(BLOCK_ID, second))["image"]["lease"]["offset"] == lease["offset"]

    ok(one.proxy.prepareImage(BLOCK_ID, second))
    owners = sanlock.read_resource_owners(space, second.encode(), [(lease["path"], int(lease["offset"]))])
    assert [owner["host_id"] for owner in owners] == [1]
    lease_moves(one, two, second)
    ok(two.proxy.teardownImage(BLOCK_ID, second))

    freed = slot_of(first)
    ok(one.proxy.removeImage(BLOCK_ID, first, {}))
    wait_for(lambda: first not in live_ids(two), timeout=60, what="host 2 to see the removal")
    wait_for(lambda: first not in set(slots.records()), timeout=60, what="the record's slot to be freed")
    third = ok(two.proxy.createVirtualDisk(BLOCK_ID, str(MiB), "", {}, {}))["imageId"]
    wait_image(two.proxy, BLOCK_ID, third)
    assert slot_of(third) == freed
    ok(two.proxy.prepareImage(BLOCK_ID, third))
    lease = ok(two.proxy.getImageInfo(BLOCK_ID, third))["image"]["lease"]
    assert lease["offset"] == str((freed + 1) * MiB)
    owners = sanlock.read_resource_owners(space, third.encode(), [(lease["path"], int(lease["offset"]))])
    assert [owner["host_id"] for owner in owners] == [2]
    assert code(one.proxy.prepareImage(BLOCK_ID, third)) == 651


@pytest.mark.timeout(400)  # about 75 s here: sanlock takes host 1 for dead about 70 s after it dies
def test_a_host_that_dies_leaves_its_work_to_another(two_hosts, pvs, lvm_dir):
    """Host 1 commits disks whose create has not run (autoFix false: its work, left pending), goes on creating
    disks (records written, LVs created, under the writer lease), and dies at once (Host.die()) in the middle
    of a commit, holding the lease. While sanlock still takes host 1 for alive, before and after it died, host
    2 refuses to run its work (203 naming host 1); once sanlock calls host 1 dead, host 2's monitor takes the
    lease and the work over by itself: every pending disk ends optimized, with host 2's id in its record; host
    2 commits new disks; the metadata LV holds exactly host 2's listing, the VG exactly the LVs of their
    volumes, and host 2 checks clean."""
    (one, two), vg = two_hosts
    space = ok(one.proxy.getStorageRepositoryList())["repos"][BLOCK_ID]["uuid"]
    pv, offset, _ = lv_place(lvm_dir, pvs, vg, LEASES_LV)
    pending = [ok(one.proxy.createVirtualDisk(BLOCK_ID, str(MiB), "", {}, {"autoFix": False}))["imageId"]
               for _ in range(4)]
    wait_for(lambda: set(pending) <= live_ids(two), timeout=30, what="host 2 to see host 1's disks")
    fix_refused(two, pending[0], one)
    acknowledged = die_committing(one, holding=lambda: writer_holder(space, pv, offset + LEASE_OFFSET))
    died = time.monotonic()
    fix_refused(two, pending[-1], one)  # host 1's delta lease stopped, but sanlock does not call it dead yet
    assert time.monotonic() - died < HOST_DEAD_AFTER, "too late to tell a refusal from a host taken for alive"

    for image_id in pending:
        wait_image(two.proxy, BLOCK_ID, image_id, timeout=180)
    mine = [ok(two.proxy.createVirtualDisk(BLOCK_ID, str(MiB), "", {}, {}))["imageId"] for _ in range(2)]
    for image_id in mine:
        wait_image(two.proxy, BLOCK_ID, image_id)
    live = live_ids(two)
    assert set(pending) | set(acknowledged) | set(mine) <= live
    settle([two], live)
    records = holds_exactly(two, pvs, lvm_dir, vg, live)
    assert {records[image_id]["hostId"] for image_id in pending} == {2}, {i: records[i] for i in pending}
