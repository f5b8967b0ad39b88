"""A repository's lockspace with real sanlock daemons, unprivileged, one per host (work in progress, issue 15)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.waiting import wait_for

sanlock = pytest.importorskip("sanlock")

pytestmark = pytest.mark.skipif(shutil.which("sanlock") is None, reason="needs sanlock")


@pytest.fixture
def daemon(tmp_path):
    """A sanlock daemon in unprivileged mode with its own run dir; SANLOCK_RUN_DIR points this process at it."""
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "SANLOCK_RUN_DIR": str(run), "SANLOCK_PRIVILEGED": "0"}
    process = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
                                "-e", "host1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old = os.environ.get("SANLOCK_RUN_DIR")
    os.environ["SANLOCK_RUN_DIR"] = str(run)
    wait_for(lambda: (run / "sanlock.sock").exists(), timeout=10, what="sanlock's socket")
    yield run
    subprocess.run(["sanlock", "client", "shutdown", "-f", "1"], env=env, capture_output=True)
    process.wait(10)
    if old is None:
        del os.environ["SANLOCK_RUN_DIR"]
    else:
        os.environ["SANLOCK_RUN_DIR"] = old


def test_join_hold_the_writer_lease_and_leave(daemon, tmp_path):
    from hsm.leases.lockspace import IDS_SIZE, LEASES_SIZE, Lockspace, Paths

    ids, leases = tmp_path / "ids", tmp_path / "leases"
    ids.write_bytes(b"\0" * IDS_SIZE)
    leases.write_bytes(b"\0" * LEASES_SIZE)
    space = Lockspace("8d4b3c5e-0f71-4b0e-9d57-4f3e3a0f6c11", Paths(str(ids), str(leases)), host_id=1)
    space.initialize(io_timeout=1)
    space.join()
    wait_for(space.joined, timeout=60, what="the join")
    assert space.writer() == 0
    space.acquire_writer()
    assert space.writer() == 1
    space.release_writer()
    assert space.writer() == 0
    space.leave()
    wait_for(lambda: not space.joined(), timeout=60, what="the leave")
