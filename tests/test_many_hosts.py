"""Many hosts on one repository: three hsmd, each with its own sanlock daemon, supervdsmd and host id, on one
posixfs-1 repository (tests/multihost.py). Record changes go under the metadata-writer lease, every host's
index follows the others', work a dead host left is taken over (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.images_helpers import code, ok, wait_image
from tests.multihost import (
    CID,
    cluster,
    create_and_remove,
    daemon_lost_then_back,
    die_committing,
    fix_refused,
    lease_moves,
    live_ids,
    settle,
)
from tests.waiting import wait_for

pytest.importorskip("sanlock")
pytestmark = [pytest.mark.skipif(shutil.which("sanlock") is None, reason="needs sanlock"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: bind mounts through supervdsmd")]

MiB = 1 << 20


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(n): n hosts on one new posixfs-1 repository, closed at the end."""
    made = []

    def make(count: int) -> list:
        hosts, _ = cluster(tmp_path, count)
        made.extend(hosts)
        return hosts
    yield make
    for host in made:
        host.close()


def repo_folder(host) -> str:
    return str(host.export / "repo")


def record_ids(host) -> set[str]:
    return {name[:-5] for name in os.listdir(os.path.join(repo_folder(host), "images")) if name.endswith(".json")}


def owned_volumes(host, image_ids) -> set[str]:
    files = set()
    for image_id in image_ids:
        with open(os.path.join(repo_folder(host), "images", f"{image_id}.json")) as f:
            record = json.load(f)
        files.update(f"{vol['id']}.{vol['format']}" for vol in record["volumes"] if vol["image"] == image_id)
    return files


def test_300_creates_and_removes_spread_over_three_hosts(make_cluster):
    """Two clients per host create disks and remove disks at random, 300 verbs in all, at once; a client
    removes any disk created so far, mostly one another host made (so the host it asks must know what the
    others committed). Afterwards every host lists exactly the disks acknowledged and not removed, none lost,
    none doubled; the repository holds exactly their records and volumes, and checks clean from every host."""
    hosts3 = make_cluster(3)
    live, _ = create_and_remove(hosts3, clients=2, verbs=50, seed=20261130)
    settle(hosts3, live)
    assert record_ids(hosts3[0]) == live
    assert set(os.listdir(os.path.join(repo_folder(hosts3[0]), "volumes"))) == owned_volumes(hosts3[0], live)
    for host in hosts3:
        assert ok(host.proxy.getStorageRepositoryList())["repos"][CID]["leases"]["error"] == ""


def test_a_host_that_dies_leaves_its_work_to_another(make_cluster):
    """Host 1 commits disks whose create has not run (autoFix false: its work, left pending) and goes on
    creating; then it dies at once (hsmd and its sanlock daemon killed -9), perhaps holding the writer
    lease in the middle of a commit. While host 1 lived, host 2 refused to run its work (203: two hosts
    never run one fix); once sanlock calls host 1 dead, host 2 takes the lease and the work over by itself:
    every disk host 1 acknowledged ends optimized, and the repository checks clean."""
    one, two = make_cluster(2)
    pending = [ok(one.proxy.createVirtualDisk(CID, str(MiB), "", {}, {"autoFix": False}))["imageId"]
               for _ in range(4)]
    wait_for(lambda: set(pending) <= live_ids(two), timeout=30, what="host 2 to see host 1's disks")
    fix_refused(two, pending[0], one)
    acknowledged = die_committing(one)

    # host 2 commits on once sanlock has called host 1 dead (8 io timeouts and 60 s), and takes over its work
    mine = ok(two.proxy.createVirtualDisk(CID, str(MiB), "", {}, {}))["imageId"]
    expected = set(pending) | set(acknowledged) | {mine}
    wait_for(lambda: expected <= live_ids(two), timeout=60, what="host 2 to list host 1's disks")
    for image_id in pending:
        wait_image(two.proxy, CID, image_id, timeout=240)
    settle([two], live_ids(two))
    assert expected <= record_ids(two)
    volumes = set(os.listdir(os.path.join(repo_folder(two), "volumes")))
    assert volumes == owned_volumes(two, live_ids(two))
    for name in volumes:
        subprocess.run(["qemu-img", "check", "-q", os.path.join(repo_folder(two), "volumes", name)], check=True)


def test_a_host_without_its_lockspace_writes_no_record(make_cluster):
    """Host 2's sanlock daemon dies while its hsmd runs: its commits are refused (661/651, no record written,
    nothing in the repository changes) while host 1 goes on; once the daemon is back, host 2 joins again
    and commits again."""
    one, two = make_cluster(2)
    daemon_lost_then_back(one, two, lambda: record_ids(two), refused={651, 661})


def test_a_vm_holds_its_image_on_one_host_at_a_time(tmp_path):
    """[irs] use_volume_leases: prepareImage takes the image's volume lease (getImageInfo says where it is),
    so another host's prepareImage is refused (651) and so is its removeImage (203), naming the host; after
    teardownImage the other host may; a host restarted with the image prepared holds it again."""
    hosts, params = cluster(tmp_path, 2, hsmd_config={"irs": {"use_volume_leases": True}})
    one, two = hosts
    try:
        disk = ok(one.proxy.createVirtualDisk(CID, str(MiB), "", {}, {}))["imageId"]
        wait_image(one.proxy, CID, disk)
        wait_for(lambda: disk in live_ids(two), timeout=30, what="host 2 to see the disk")
        lease = ok(one.proxy.getImageInfo(CID, disk))["image"]["lease"]
        assert lease["offset"] == "0" and lease["path"].endswith(f"/repo/leases/{disk}.lease"), lease
        assert ok(two.proxy.getImageInfo(CID, disk))["image"]["lease"]["path"].endswith(f"/leases/{disk}.lease")

        ok(one.proxy.prepareImage(CID, disk))
        assert os.path.getsize(os.path.join(repo_folder(one), "leases", f"{disk}.lease")) == MiB
        lease_moves(one, two, disk)

        two.hsmd.kill()  # its I/O helper dies with it: sanlock frees the lease until host 2 takes it again
        two.start_hsmd()
        two.connect(params)
        import sanlock
        space = ok(one.proxy.getStorageRepositoryList())["repos"][CID]["uuid"].encode()
        path = os.path.join(repo_folder(one), "leases", f"{disk}.lease")
        wait_for(lambda: [owner["host_id"] for owner in sanlock.read_resource_owners(space, disk.encode(),
                                                                                     [(path, 0)])] == [2],
                 timeout=60, what="host 2, restarted, to hold the prepared image again")
        assert code(one.proxy.prepareImage(CID, disk)) == 651
        ok(two.proxy.teardownImage(CID, disk))
        ok(one.proxy.removeImage(CID, disk, {}))
        wait_for(lambda: not os.path.exists(os.path.join(repo_folder(one), "leases", f"{disk}.lease")),
                 timeout=60, what="the lease to go with the disk")
    finally:
        for host in hosts:
            host.close()


def test_a_chain_another_host_rewrites_is_left_alone(make_cluster):
    """While host 1's merge or optimize rewrites a disk's chain (the mark `rewriting: 1` in its record, as
    host 1 writes it under the writer lease for the length of the rewrite; written here by hand, as it
    would be mid-rewrite), host 2 refuses to snapshot, prepare or remove the disk (203 naming host 1); a
    mark of a host that is not alive in the lockspace (host 7) holds nothing. A real optimize on host 1
    leaves no mark behind."""
    one, two = make_cluster(2)
    base = ok(one.proxy.createVirtualDisk(CID, str(MiB), "", {}, {}))["imageId"]
    wait_image(one.proxy, CID, base)
    snapshot = ok(one.proxy.createSnapshot(CID, base, {}, {}))["imageId"]
    wait_image(one.proxy, CID, snapshot)
    disk = ok(one.proxy.createVirtualDisk(CID, str(MiB), snapshot, {}, {"strategy": "performance"}))["imageId"]
    wait_image(one.proxy, CID, disk)  # optimized: host 1 copied it out of the snapshot, marking it meanwhile
    record_path = os.path.join(repo_folder(one), "images", f"{disk}.json")
    with open(record_path) as f:
        record = json.load(f)
    assert record["rewriting"] == 0 and record["hostId"] == 1, record
    wait_for(lambda: disk in live_ids(two), timeout=30, what="host 2 to see the disk")

    def mark(host_id: int) -> None:
        with open(record_path) as f:
            record = json.load(f)
        record["rewriting"] = host_id
        record["generation"] += 1
        with open(record_path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(record_path + ".tmp", record_path)
        generation_path = os.path.join(repo_folder(one), "leases", "generation")  # as host 1's commit closes it
        with open(generation_path) as f:
            generation = json.load(f)
        generation["generation"] += 1
        generation["changed"].append([generation["generation"], disk])
        with open(generation_path + ".tmp", "w") as f:
            json.dump(generation, f)
        os.rename(generation_path + ".tmp", generation_path)
        wait_for(lambda: ok(two.proxy.getImageInfo(CID, disk))["image"]["generation"] == record["generation"],
                 timeout=30, what="host 2 to read the record again")
    mark(1)
    for answer in (two.proxy.createSnapshot(CID, disk, {}, {}), two.proxy.prepareImage(CID, disk),
                   two.proxy.removeImage(CID, disk, {})):
        assert code(answer) == 203 and "host 1" in answer["status"]["message"], answer
    mark(7)
    ok(two.proxy.prepareImage(CID, disk))
    ok(two.proxy.teardownImage(CID, disk))
    wait_image(two.proxy, CID, ok(two.proxy.createSnapshot(CID, disk, {}, {}))["imageId"])
