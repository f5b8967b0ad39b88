"""A FUSE filesystem that hangs on demand, standing in for a dead NFS server.

    python tests/hungfs.py SOURCE MOUNTPOINT FLAG

Serves SOURCE read-write at MOUNTPOINT. While the file FLAG exists, every
operation blocks, so whoever touches the mount waits in the kernel (D state)
as with a hung NFS server. Only a SIGKILL of this process (or an abort through
/sys/fs/fuse/connections) releases the waiters.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from fuse import FUSE, FuseOSError, Operations


class HungFS(Operations):
    def __init__(self, source: str, flag: str) -> None:
        self.source = source
        self.flag = flag

    def _path(self, path: str) -> str:
        while os.path.exists(self.flag):
            time.sleep(0.05)
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno) from None
        return {key: getattr(st, key) for key in ("st_mode", "st_size", "st_uid", "st_gid", "st_nlink",
                                                 "st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        self._path(path)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._path(path)
        return os.pwrite(fh, data, offset)

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def unlink(self, path):
        os.unlink(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                 "f_files", "f_ffree", "f_namemax")}

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def flush(self, path, fh):
        return 0


@contextlib.contextmanager
def mounted(root: str) -> Iterator[tuple[str, str]]:
    """(mountpoint, flag) of a HungFS under `root` for the block, serving a file `meta`; touching the mount
    blocks while the flag file exists. For tests and benchmarks; needs root and /dev/fuse."""
    from tests.waiting import wait_for

    source, mountpoint, flag = (os.path.join(root, name) for name in ("source", "mnt", "hang"))
    os.makedirs(source)
    os.makedirs(mountpoint)
    with open(os.path.join(source, "meta"), "w") as f:
        f.write("hello")
    fuse = subprocess.Popen([sys.executable, os.path.abspath(__file__), source, mountpoint, flag],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            assert fuse.poll() is None, f"the FUSE filesystem exited {fuse.returncode}"
            return os.path.ismount(mountpoint)

        wait_for(up, what="the FUSE filesystem mounted")
        yield mountpoint, flag
    finally:
        fuse.send_signal(signal.SIGKILL)
        fuse.wait()
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


if __name__ == "__main__":
    source, mountpoint, flag = sys.argv[1:4]
    if not os.path.isdir(source):
        raise SystemExit(errno.ENOENT)
    # No attribute or name caching: every stat must reach us, as every stat reaches a dead NFS server.
    FUSE(HungFS(source, flag), mountpoint, foreground=True, nothreads=False, allow_other=True,
         attr_timeout=0, entry_timeout=0, negative_timeout=0)
