"""VDSM's SPM verbs on a shared master domain: the SPM is the host that pinned the master's metadata-writer
lease (hsm.storage.pools). Two hsmd, each with its own sanlock daemon and host id, on one posixfs-1
repository (tests/multihost.py) that is the master domain of a pool both hosts connect."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from tests.images_helpers import code, ok, wait_image
from tests.multihost import CID, cluster
from tests.waiting import wait_for

sanlock = pytest.importorskip("sanlock")
pytestmark = [pytest.mark.skipif(shutil.which("sanlock") is None, reason="needs sanlock"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: bind mounts through supervdsmd")]

SP = "33333333-3333-4333-8333-333333333333"
MiB = 1 << 20
LEASE_OFFSET = 1 << 20  # hsm.leases.lockspace.LEASE_OFFSET: VDSM's SDM lease place


@pytest.fixture
def make_pool(tmp_path):
    """make_pool(n): n hosts on one new posixfs-1 repository, which is the master domain of pool SP on each
    (createStoragePool over the repository's uuid, which the legacy verbs list as a domain). Returns
    (hosts, sdUUID); the hosts are closed at the end."""
    made = []

    def make(count: int) -> tuple[list, str]:
        hosts, _ = cluster(tmp_path, count)
        made.extend(hosts)
        sd = ok(hosts[0].proxy.getStorageRepositoryList())["repos"][CID]["uuid"]
        for host in hosts:
            assert sd in ok(host.proxy.getStorageDomainsList())["domlist"]
            ok(host.proxy.createStoragePool(0, SP, "pool", sd, [sd], 1))
        return hosts, sd
    yield make
    for host in made:
        host.close()


def spm(host) -> dict:
    return ok(host.proxy.getSpmStatus(SP))["spm_st"]


def lease_version(host) -> int:
    """What sanlock itself reads of the lease (the test reads the shared file directly)."""
    return sanlock.read_resource(str(host.export / "repo" / "leases" / "leases"), LEASE_OFFSET)["version"]


def ended(host, task: str) -> dict:
    """The task's status once it has ended."""
    return wait_for(lambda: (lambda st: st if st["taskState"] == "finished" else None)(
        ok(host.proxy.getTaskStatus(task, SP))["taskStatus"]), timeout=120, what=f"host {host.host_id}'s spmStart")


def run_spm_start(host) -> dict:
    return ended(host, ok(host.proxy.spmStart(SP, -1, -1, -1, 0))["uuid"])


def test_the_spm_is_the_host_that_pinned_the_masters_lease(make_pool):
    """Host 1's spmStart pins the lease: it answers SPM, host 2 Free with spmId 1, both with the lease's
    version as sanlock reads it. Host 2's spmStart fails with 651 while host 1 keeps it; a new-API commit
    on host 2 waits for the lease and goes through once host 1's spmStop lets it go; then host 2 becomes
    SPM. The SPM cannot disconnect the pool (656) nor start again (656)."""
    (one, two), sd = make_pool(2)
    for host in (one, two):
        ok(host.proxy.connectStoragePool(SP, host.host_id, "key", sd, 1))
    for host in (one, two):
        wait_for(lambda host=host: spm(host) == {"spmStatus": "Free", "spmLver": lease_version(host), "spmId": -1},
                 what=lambda host=host: f"host {host.host_id} Free, no holder: {spm(host)}")

    started = run_spm_start(one)
    assert (started["taskResult"], started["code"]) == ("success", 0), started
    lver = lease_version(one)
    assert spm(one) == {"spmStatus": "SPM", "spmLver": lver, "spmId": 1}
    wait_for(lambda: spm(two) == {"spmStatus": "Free", "spmLver": lver, "spmId": 1},
             what=lambda: f"host 2 to see host 1 as SPM: {spm(two)}")
    info = ok(two.proxy.getStoragePoolInfo(SP))["info"]
    assert (info["spm_id"], info["lver"]) == (1, lver)
    assert code(one.proxy.spmStart(SP, -1, -1, -1, 0)) == 656  # VDSM's validateNotSPM
    assert code(one.proxy.disconnectStoragePool(SP, 1, "key")) == 656

    task = ok(two.proxy.spmStart(SP, 1, lver, -1, 0))["uuid"]
    wait_for(lambda: spm(two)["spmStatus"] == "Contend", what="host 2 Contend while its spmStart tries")
    failed = ended(two, task)
    assert (failed["taskResult"], failed["code"]) == ("cleanSuccess", 651), failed  # failed, nothing to undo
    assert "host 1" in failed["message"], failed
    assert spm(two)["spmStatus"] == "Free"

    # The SPM commits at once; host 2's commit waits for the lease (at most 8 io timeouts + 80 s, then 651).
    mine = ok(one.proxy.createVirtualDisk(CID, str(MiB), "", {}, {}))["imageId"]
    answers: list = []
    since = int(time.clock_gettime(time.CLOCK_MONOTONIC)) + 1  # past host 2's spmStart's own attempts
    creator = threading.Thread(target=lambda: answers.append(two.proxy.createVirtualDisk(CID, str(MiB), "", {}, {})))
    creator.start()
    wait_for(lambda: refused_since(two, since), timeout=60,
             what="host 2's sanlock daemon to refuse host 2's commit the lease host 1 keeps")
    assert creator.is_alive() and not answers  # waiting for the lease
    assert spm(one)["spmStatus"] == "SPM"
    ok(one.proxy.spmStop(SP))
    wait_for(lambda: answers, timeout=120, what="host 2's commit once host 1 let the lease go")
    creator.join()
    theirs = ok(answers[0])["imageId"]
    for image_id in (mine, theirs):
        wait_image(two.proxy, CID, image_id)
    wait_for(lambda: {mine, theirs} <= set(ok(one.proxy.getImageList(CID, {}))["images"]), timeout=30,
             what="host 1 to list host 2's disk")
    assert spm(one)["spmStatus"] == "Free"
    ok(one.proxy.spmStop(SP))  # not the SPM: nothing to do, as in VDSM

    started = run_spm_start(two)
    assert (started["taskResult"], started["code"]) == ("success", 0), started
    lver2 = lease_version(two)
    assert lver2 > lver
    assert spm(two) == {"spmStatus": "SPM", "spmLver": lver2, "spmId": 2}
    wait_for(lambda: spm(one) == {"spmStatus": "Free", "spmLver": lver2, "spmId": 2},
             what=lambda: f"host 1 to see host 2 as SPM: {spm(one)}")
    assert ok(one.proxy.fenceSpmStorage(SP, 2, lver2))["spm_st"] == spm(one)  # only the status
    ok(one.proxy.disconnectStoragePool(SP, 1, "key"))
    ok(two.proxy.spmStop(SP))
    ok(two.proxy.disconnectStoragePool(SP, 2, "key"))


def refused_since(host, since: int) -> bool:
    """Whether the host's sanlock daemon has refused it a lease another live host holds (-243, IDLIVE) at or
    after `since` (seconds of CLOCK_MONOTONIC, sanlock's clock), by its log buffer."""
    dump = subprocess.run(["sanlock", "client", "log_dump"], env=host.sanlock_env, capture_output=True,
                          text=True).stdout  # it exits 1 even when it prints the buffer
    for line in dump.splitlines():  # "<date> <time> <monotonic s> [<tid>]: s1:r2 acquire_token held error -243"
        words = line.split()
        if "acquire_token held error -243" in line and len(words) > 2 and words[2].isdigit() \
                and int(words[2]) >= since:
            return True
    return False


def test_host_id_and_a_moving_master(make_pool):
    """On a shared master the hostID VDSM passes is the host's [sanlock] host_id: another answers 700 and
    connects nothing. The SPM keeps its role when the master moves to another shared domain: it holds the
    new master's lease and lets the old one's go."""
    (one,), sd = make_pool(1)
    assert code(one.proxy.connectStoragePool(SP, 2, "key", sd, 1)) == 700
    assert ok(one.proxy.getConnectedStoragePoolsList())["poollist"] == []
    ok(one.proxy.connectStoragePool(SP, 1, "key", sd, 1))
    assert ok(one.proxy.getConnectedStoragePoolsList())["poollist"] == [SP]
    assert code(one.proxy.connectStoragePool(SP, 3, "key", sd, 1)) == 700
    assert spm(one)["spmStatus"] == "Free"

    second = {"connectionId": CID, "subdir": "repo2"}
    ok(one.proxy.createStorageRepository("posixfs-1", second, {}))
    ok(one.proxy.connectStorageRepository("second", "posixfs-1", second, {}))

    def repos() -> dict:
        return ok(one.proxy.getStorageRepositoryList())["repos"]
    wait_for(lambda: repos()["second"]["leases"]["joined"], timeout=120, what="host 1's join of the second")
    other = repos()["second"]["uuid"]
    ok(one.proxy.attachStorageDomain(other, SP))
    ok(one.proxy.activateStorageDomain(other, SP))
    assert run_spm_start(one)["code"] == 0
    wait_for(lambda: (repos()[CID]["leases"]["writer"], repos()["second"]["leases"]["writer"]) == (1, 0),
             what=lambda: f"host 1 to hold the master's lease only: {repos()}")
    ok(one.proxy.deactivateStorageDomain(sd, SP, other, 2))
    assert ok(one.proxy.getStoragePoolInfo(SP))["info"]["master_uuid"] == other
    assert spm(one) == {"spmStatus": "SPM", "spmLver": ok(one.proxy.getStoragePoolInfo(SP))["info"]["lver"],
                        "spmId": 1}
    wait_for(lambda: (repos()[CID]["leases"]["writer"], repos()["second"]["leases"]["writer"]) == (0, 1),
             what=lambda: f"the SPM's lease to move to the new master: {repos()}")
    assert code(one.proxy.disconnectStoragePool(SP, 1, "key")) == 656
    ok(one.proxy.spmStop(SP))
    wait_for(lambda: repos()["second"]["leases"]["writer"] == 0, what="the new master's lease let go")
    assert spm(one)["spmStatus"] == "Free"
    ok(one.proxy.disconnectStoragePool(SP, 1, "key"))
