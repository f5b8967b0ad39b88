"""hsm.storage.qemuimg with the real qemu-img: metadata reads time out, data copies run at low priority.

A FIFO stands in for storage that does not answer: qemu-img opening it blocks
until a writer comes, as on a dead NFS server, but stays killable.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from hsm.storage import qemuimg
from tests.waiting import wait_for


def qemu_img_on(path: str) -> int | None:
    """The pid of the qemu-img running on `path`, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"qemu-img" and path.encode() in argv:
            return int(pid)
    return None


@pytest.mark.parametrize("read", [qemuimg.info, qemuimg.check], ids=["info", "check"])
def test_a_metadata_read_on_storage_that_does_not_answer_times_out(tmp_path, read):
    fifo = str(tmp_path / "hung.qcow2")
    os.mkfifo(fifo)
    begin = time.monotonic()
    with pytest.raises(qemuimg.QemuImgTimeout) as info:
        read(fifo, timeout=0.5)
    assert 0.5 <= time.monotonic() - begin < 5
    assert isinstance(info.value, qemuimg.QemuImgError)  # what callers (fixes) already handle
    assert "no answer in 0.5 s" in str(info.value)
    wait_for(lambda: qemu_img_on(fifo) is None, what="qemu-img killed")


def test_metadata_reads_answer_as_before(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    qemuimg.create(path, 1 << 20)
    assert qemuimg.info(path)["virtual-size"] == 1 << 20
    assert qemuimg.check(path)["check-errors"] == 0


def test_a_copy_runs_at_low_cpu_and_idle_io_priority(tmp_path):
    if not qemuimg._LOW_PRIORITY:
        pytest.skip("no nice or ionice on this host")
    source = str(tmp_path / "source.qcow2")
    os.mkfifo(source)  # qemu-img blocks opening it: time to look at the running process
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            qemuimg.convert(source, str(tmp_path / "target.qcow2"))
        except qemuimg.QemuImgError as e:
            errors.append(e)

    copier = threading.Thread(target=copy)
    copier.start()
    pid = wait_for(lambda: qemu_img_on(source), what="qemu-img running")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        assert int(fields[16]) == 19  # nice
        ionice = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True, check=True)
        assert ionice.stdout.strip() == "idle"
        with open(f"/proc/{pid}/status") as f:
            assert f"PPid:\t{os.getpid()}\n" in f.read()  # exec'd in place: nothing between hsmd and qemu-img
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        assert argv[2:2 + len(qemuimg.CONVERT_FLAGS)] == qemuimg.CONVERT_FLAGS  # after "qemu-img convert"
    finally:
        os.kill(pid, 9)
        copier.join(10)
    assert errors and errors[0].rc == -9


def test_a_copy_writes_past_the_page_cache_where_the_file_system_can(tmp_path, hung_mount, caplog):
    """-t none (O_DIRECT) on ext4 (/tmp); tests/hungfs.py's FUSE file system (not hung here) cannot do
    O_DIRECT: there the copy goes through the page cache, as durable."""
    mountpoint, _ = hung_mount
    source = str(tmp_path / "source.qcow2")
    qemuimg.create(source, 64 << 20)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 8M", source], check=True, capture_output=True)
    caplog.set_level("INFO", logger="hsm.storage.qemuimg")
    for target, existing in ((str(tmp_path / "target.qcow2"), False), (os.path.join(mountpoint, "target.qcow2"), False),
                             (os.path.join(mountpoint, "target.qcow2"), True)):
        done: list[float] = []
        qemuimg.convert(source, target, progress=done.append, existing=existing)
        assert done and done[-1] == 100.0
        assert subprocess.run(["qemu-img", "compare", "-U", source, target], capture_output=True).returncode == 0
    refused = [record.getMessage() for record in caplog.records if "refuses O_DIRECT" in record.getMessage()]
    assert len(refused) == 2 and all(message.startswith(mountpoint) for message in refused)


_PARENT = """
import os, sys, time
from hsm.storage import qemuimg
argv = qemuimg._die_with_parent() + [qemuimg.QEMU_IMG, "create", "-q", "-f", "qcow2", sys.argv[1], "1M"]
parent = os.getpid()
child = os.fork()
if child == 0:  # what subprocess does, with the parent killed before the child execs
    while os.getppid() == parent:
        time.sleep(0.01)
    os.execvp(argv[0], argv)
print(child, flush=True)
"""


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("parent_dies", ["before", "after"])
def test_qemu_img_never_outlives_its_parent(tmp_path, parent_dies):
    """Killed with -9 while qemu-img starts (before setpriv set the parent-death
    signal) or runs: no orphan goes on writing a volume the next hsmd works on."""
    if not qemuimg._die_with_parent():
        pytest.skip("no setpriv on this host")
    target = tmp_path / "target.qcow2"
    if parent_dies == "before":
        done = subprocess.run([sys.executable, "-c", _PARENT, str(target)], check=True, timeout=30,
                              capture_output=True, text=True)
        child = int(done.stdout)
        wait_for(lambda: ended(child), what="the orphaned child ended")
        assert not target.exists()  # it never started qemu-img
        return
    source = str(tmp_path / "source.qcow2")
    os.mkfifo(source)  # the copy blocks on it: time to kill its parent
    script = ("import sys\nfrom hsm.storage import qemuimg\n"
              "qemuimg.convert(sys.argv[1], sys.argv[2])\n")
    parent = subprocess.Popen([sys.executable, "-c", script, source, str(target)])
    try:
        pid = wait_for(lambda: qemu_img_on(source), what="qemu-img running")
        parent.kill()
        parent.wait()
        wait_for(lambda: qemu_img_on(source) is None, what="qemu-img killed with its parent")
    finally:
        if qemu_img_on(source):
            os.kill(pid, 9)
