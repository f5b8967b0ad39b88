import os
import signal
import subprocess
import sys
import time

import pytest

from tests.hsmd import Hsmd


@pytest.fixture
def hsmd(tmp_path):
    """A running hsmd with its default configuration, on a free loopback port."""
    daemon = Hsmd(str(tmp_path)).start()
    yield daemon
    daemon.kill()


@pytest.fixture
def proxy(hsmd):
    """A client of the `hsmd` fixture's daemon."""
    return hsmd.proxy()


@pytest.fixture
def make_hsmd(tmp_path):
    """Build hsmd processes with extra config; each is killed at the end if still running."""
    made = []

    def make(name: str = "hsmd", **kwargs) -> Hsmd:
        root = tmp_path / name
        root.mkdir()
        daemon = Hsmd(str(root), **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def hung_mount(tmp_path):
    """(mountpoint, flag): a real FUSE mount (tests/hungfs.py); touching it blocks while the flag file exists."""
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs root and /dev/fuse")
    source, mountpoint, flag = tmp_path / "source", tmp_path / "mnt", tmp_path / "hang"
    source.mkdir()
    mountpoint.mkdir()
    (source / "meta").write_text("hello")
    here = os.path.dirname(os.path.abspath(__file__))
    fuse = subprocess.Popen([sys.executable, os.path.join(here, "hungfs.py"), str(source), str(mountpoint),
                             str(flag)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.ismount(mountpoint):
        assert time.monotonic() < deadline and fuse.poll() is None, "the FUSE filesystem did not mount"
        time.sleep(0.05)
    yield str(mountpoint), flag
    fuse.send_signal(signal.SIGKILL)
    fuse.wait()
    subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
