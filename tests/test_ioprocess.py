"""Hang-proof storage I/O: a FUSE filesystem that blocks every call stands in for a dead NFS server.

The FUSE process is real and the hang is real (the helper's threads sit in D
state); teardown kills the FUSE process, which is the only way to free them.
"""

import os
import signal
import time

import pytest

from hsm.errors import StorageTimeout
from hsm.storage.ioprocess import IOProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs root and /dev/fuse")


def test_healthy_storage_through_the_helper(tmp_path):
    io = IOProcess("healthy", timeout=5)
    try:
        io.makedirs(str(tmp_path / "images"))
        io.write(str(tmp_path / "images" / "a.meta"), b"SIZE=1\n")
        assert io.read(str(tmp_path / "images" / "a.meta")) == b"SIZE=1\n"
        assert io.listdir(str(tmp_path / "images")) == ["a.meta"]
        assert io.statvfs(str(tmp_path))["total"] > 0
        with pytest.raises(FileNotFoundError):
            io.stat(str(tmp_path / "nothing"))
    finally:
        io.close()


def _answers(call):
    """What the helper answered, or None while it times out."""
    try:
        return call()
    except StorageTimeout:
        return None


def test_a_dead_helper_is_replaced(tmp_path):
    io = IOProcess("respawn", timeout=5)
    try:
        first = io.pid if io.exists(str(tmp_path)) else 0
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: _answers(lambda: io.exists(str(tmp_path))), what="an answer from a new helper")
        assert io.pid != first
    finally:
        io.close()


def test_hung_storage_times_out_and_spares_the_others(hung_mount, tmp_path):
    mountpoint, flag = hung_mount
    hung = IOProcess("hung", timeout=1, slots=2, max_queued=2)
    healthy = IOProcess("healthy", timeout=5)
    try:
        assert hung.read(os.path.join(mountpoint, "meta")) == b"hello"
        flag.write_text("")
        begin = time.monotonic()
        with pytest.raises(StorageTimeout, match="gave no answer in 1"):
            hung.stat(os.path.join(mountpoint, "meta"))
        assert 0.9 < time.monotonic() - begin < 5  # by its timeout, not the hang's end
        latencies = []
        for _ in range(100):
            begin = time.monotonic()
            assert healthy.exists(str(tmp_path))
            latencies.append(time.monotonic() - begin)
        # Well under the hung one's 1 s: none waited on it (the figures against a baseline: bench/stalls.py).
        assert max(latencies) < 0.5, f"the healthy helper took {max(latencies):.2f} s"
        with pytest.raises(StorageTimeout):
            hung.listdir(mountpoint)
        # Its slots are now stuck in the kernel: more calls fail at once instead of piling up.
        for _ in range(4):
            try:
                hung.exists(mountpoint)
            except StorageTimeout:
                pass
        begin = time.monotonic()
        with pytest.raises(StorageTimeout, match="already waiting"):
            hung.exists(mountpoint)
        assert time.monotonic() - begin < 0.5  # at once: not the 1 s timeout
        flag.unlink()  # the server comes back: the stuck calls finish, the helper serves again
        assert wait_for(lambda: _answers(lambda: hung.read(os.path.join(mountpoint, "meta"))),
                        what="the hung helper serving again", poll=0.1) == b"hello"
    finally:
        hung.close()
        healthy.close()
