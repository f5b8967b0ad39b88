"""A repository's lockspace with real sanlock daemons, unprivileged, one per host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.waiting import wait_for

sanlock = pytest.importorskip("sanlock")

pytestmark = pytest.mark.skipif(shutil.which("sanlock") is None, reason="needs sanlock")


@pytest.fixture
def daemon(sanlock_daemon):
    """The session's sanlock daemon (tests/conftest.py), host 1's."""
    if sanlock_daemon is None:
        pytest.skip("needs sanlock")
    return sanlock_daemon


def test_join_hold_the_writer_lease_and_leave(daemon, tmp_path):
    """The lease is held as hsmd holds it: by an I/O helper, the process that writes records."""
    from hsm.leases.lockspace import IDS_SIZE, LEASE_OFFSET, LEASES_SIZE, WRITER, Lockspace, Paths
    from hsm.storage.ioprocess import IOProcess

    ids, leases = tmp_path / "ids", tmp_path / "leases"
    ids.write_bytes(b"\0" * IDS_SIZE)
    leases.write_bytes(b"\0" * LEASES_SIZE)
    space = Lockspace("8d4b3c5e-0f71-4b0e-9d57-4f3e3a0f6c11", Paths(str(ids), str(leases)), host_id=1)
    space.initialize(io_timeout=1)
    space.join()
    wait_for(space.joined, timeout=60, what="the join")
    assert space.writer() == 0
    io = IOProcess("lease-test", timeout=30)
    try:
        io.lease_acquire(space.name, WRITER, str(leases), LEASE_OFFSET, timeout=30)
        assert space.writer() == 1
        io.lease_release(space.name, WRITER, str(leases), LEASE_OFFSET)
        assert space.writer() == 0
    finally:
        io.close()
    space.leave()
    wait_for(lambda: not space.joined(), timeout=60, what="the leave")


HOST2 = """
import os, sys, sanlock
from hsm.leases.lockspace import LEASE_OFFSET, WRITER, Lockspace, Paths
from hsm.storage.ioprocess import IOProcess
space = Lockspace(sys.argv[1], Paths(sys.argv[2], sys.argv[3]), host_id=2)
space.join()
import time
deadline = time.monotonic() + 60
while not space.joined():
    assert time.monotonic() < deadline, "no join"
    time.sleep(0.2)
io = IOProcess("host2", timeout=30)
try:
    io.lease_acquire(space.name, WRITER, sys.argv[3], LEASE_OFFSET, timeout=30)
    print("acquired", flush=True)
except OSError as e:
    print("refused", abs(e.errno), flush=True)
finally:
    io.close()
"""


def test_a_second_host_cannot_take_the_writer_lease_while_the_first_holds_it(daemon, tmp_path):
    """Host 2 is another sanlock daemon (its own run dir) in another process, as sanlock needs."""
    from hsm.leases.lockspace import IDS_SIZE, LEASE_OFFSET, LEASES_SIZE, WRITER, Lockspace, Paths
    from hsm.storage.ioprocess import IOProcess

    ids, leases = tmp_path / "ids", tmp_path / "leases"
    ids.write_bytes(b"\0" * IDS_SIZE)
    leases.write_bytes(b"\0" * LEASES_SIZE)
    name = "5b1e9a43-2f1c-4c36-9b39-6b8f7c2a9d10"
    space = Lockspace(name, Paths(str(ids), str(leases)), host_id=1)
    space.initialize(io_timeout=1)
    space.join()
    wait_for(space.joined, timeout=60, what="host 1's join")
    io = IOProcess("host1", timeout=30)
    io.lease_acquire(space.name, WRITER, str(leases), LEASE_OFFSET, timeout=30)
    run2 = tmp_path / "run2"
    run2.mkdir()
    env2 = {**os.environ, "SANLOCK_RUN_DIR": str(run2), "SANLOCK_PRIVILEGED": "0"}
    other = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
                              "-e", "host2"], env=env2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run2 / "sanlock.sock").exists(), timeout=10, what="host 2's daemon")
        done = subprocess.run([sys.executable, "-c", HOST2, name, str(ids), str(leases)],
                              env=env2, capture_output=True, text=True, timeout=120)
        assert done.stdout.split()[:2] == ["refused", "243"], done.stdout + done.stderr
        io.lease_release(space.name, WRITER, str(leases), LEASE_OFFSET)
        done = subprocess.run([sys.executable, "-c", HOST2, name, str(ids), str(leases)],
                              env=env2, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "acquired", done.stdout + done.stderr
    finally:
        io.close()
        subprocess.run(["sanlock", "client", "shutdown", "-f", "1"], env=env2, capture_output=True)
        other.wait(10)


def test_a_posixfs_repository_has_a_lockspace_joined_while_connected(daemon, make_hsmd, tmp_path):
    """hsmd (talking to the test's sanlock daemon through [sanlock] run_dir) makes a posixfs-1 repository
    with its lockspace, joins it at connect (the repository list says so once sanlock is done) and leaves
    it at disconnect."""
    from tests.images_helpers import ok
    from tests.supervdsmd import Supervdsmd
    from tests.test_connections import bind_uri, servers

    repository = tmp_path / "rhev"
    supervdsmd = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository)}},
                            mount_sources=str(tmp_path)).start()
    hsmd = make_hsmd(config={"supervdsm": {"socket": supervdsmd.socket},
                             "sanlock": {"run_dir": str(daemon), "io_timeout": 1},
                             "irs": {"repository": str(repository), "sd_health_check_delay": 0.2},
                             "connections": {"monitor_interval": 0.2}}).start()
    try:
        proxy = hsmd.proxy()
        export = tmp_path / "export"
        export.mkdir()
        ok(proxy.manageStorageServer(bind_uri(export), "shared"))
        wait_for(lambda: servers(proxy)["shared"]["connected"], what="mounted")
        params = {"connectionId": "shared", "subdir": "repo"}
        repo_uuid = ok(proxy.createStorageRepository("posixfs-1", params, {}))["repoUuid"]
        assert sorted(os.listdir(export / "repo" / "leases")) == ["ids", "leases"]
        ok(proxy.connectStorageRepository("shared", "posixfs-1", params, {}))

        def lease() -> dict:
            return ok(proxy.getStorageRepositoryList())["repos"]["shared"].get("leases", {})
        state = wait_for(lambda: lease() if lease().get("joined") else None, timeout=60, what="the join")
        assert state == {"joined": True, "hostId": 1, "writer": 0, "error": ""}
        assert ok(proxy.getStorageRepositoryList())["repos"]["shared"]["capabilities"]["leases"] is True
        ok(proxy.disconnectStorageRepository("shared", {}))
        env = {**os.environ, "SANLOCK_RUN_DIR": str(daemon)}
        wait_for(lambda: repo_uuid not in subprocess.run(["sanlock", "client", "status"], env=env,
                                                         capture_output=True, text=True).stdout,
                 timeout=60, what="the lockspace left")
        ok(proxy.unmanageStorageServer("shared"))
    finally:
        hsmd.kill()
        supervdsmd.kill()
        subprocess.run(f"grep -o ' {repository}/mnt/[^ ]*' /proc/mounts | xargs -r -n1 umount -l", shell=True,
                       check=False)
