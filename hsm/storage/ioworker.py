"""The child side of an IOProcess: runs file operations on one repository's storage.

It may block forever in the kernel (a dead NFS server puts a process in D
state); that is why it is a separate process: only it hangs, never hsmd.
Requests and answers are pickled tuples on a pipe between hsmd and its own
child: (id, op, args) in, (id, ok, value) out.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from hsm.atomicfile import atomic_remove, atomic_write, fsync_dir

BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"mode": st.st_mode, "size": st.st_size, "mtime": st.st_mtime, "ctime": st.st_ctime, "uid": st.st_uid,
            "gid": st.st_gid, "blocks": st.st_blocks, "dev": st.st_dev}


def _read(path: str, limit: int) -> bytes:
    """A file's first `limit` bytes; never through a symbolic link (ELOOP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _folder(path: str) -> int:
    """An fd of the directory `path` itself: a symbolic link in its place fails (ELOOP, ENOTDIR)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _is_folder(path: str) -> bool:
    """Whether `path` is a real directory (False if missing); a symbolic link raises ELOOP."""
    try:
        os.close(_folder(path))
    except FileNotFoundError:
        return False
    return True


def _empty_folder(path: str) -> int:
    """Unlink every file in the directory `path`, never following a link to elsewhere; returns the count."""
    fd = _folder(path)
    try:
        names = os.listdir(fd)
        for name in names:
            os.unlink(name, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(names)


def _rmdir(path: str) -> None:
    """Remove an empty directory durably; a missing one is not an error."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))


def _read_all(folder: str, suffix: str) -> dict[str, bytes]:
    """Every file in `folder` whose name ends with `suffix`, by name: one call loads a whole index."""
    found = {}
    for name in os.listdir(folder):
        if name.endswith(suffix):
            try:
                found[name] = _read(os.path.join(folder, name), 1 << 20)
            except FileNotFoundError:  # removed while we listed
                pass
    return found


def _read_many(folder: str, names: list[str]) -> dict[str, bytes]:
    """The files of `folder` named (plain names only), by name; a missing one is left out."""
    found = {}
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise OSError(errno.EINVAL, f"not a plain file name: {name!r}")
        try:
            found[name] = _read(os.path.join(folder, name), 1 << 20)
        except FileNotFoundError:
            pass
    return found


def _statvfs(path: str) -> dict:
    st = os.statvfs(path)
    return {"free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}


def _reserve(path: str, size: int) -> bool:
    """Hold `size` bytes of real blocks in `path`, so that a full filesystem can still take a few records."""
    try:
        if os.stat(path).st_blocks * 512 >= size:
            return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        atomic_remove(path)
        raise
    os.close(fd)
    fsync_dir(os.path.dirname(path))
    return True


# <linux/fs.h> FICLONE, _IOW(0x94, 9, int); the fcntl module names it from Python 3.12 on.
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)
# What a clone or copy_file_range answers where the file system (or this pair of files) cannot do it.
UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF})


def _open_source(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _create(path: str) -> int:
    """A new file at `path`: one already there, or a symbolic link, fails (EEXIST)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _clone(src: str, dst: str) -> None:
    """Make the new file `dst` share every extent of `src` (FICLONE, a reflink); durable when it returns.
    On failure `dst` is gone again."""
    source = _open_source(src)
    try:
        target = _create(dst)
        try:
            fcntl.ioctl(target, FICLONE, source)
            os.fsync(target)
        except BaseException:
            os.close(target)
            os.unlink(dst)
            raise
        os.close(target)
    finally:
        os.close(source)
    fsync_dir(os.path.dirname(dst))


# copy_file_range in pieces on a few threads at once: a single one waits on each piece in turn (measured on
# ext4, the I/O helper alone: 4 threads of 16 MiB pieces beat one).
PIECE = 16 << 20
COPY_THREADS = 4


def _data_pieces(source: int, offset: int, end: int, budget: int) -> tuple[list[tuple[int, int]], int]:
    """The (start, stop) runs of data of `source` from `offset` towards `end`, holes skipped, at most PIECE
    each, `budget` bytes of data in all; and the offset they reach."""
    pieces: list[tuple[int, int]] = []
    taken = 0
    while offset < end and taken < budget:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: only a hole is left
                raise
            return pieces, end
        stop = min(os.lseek(source, start, os.SEEK_HOLE), end, start + budget - taken)
        pieces += [(piece, min(piece + PIECE, stop)) for piece in range(start, stop, PIECE)]
        taken += stop - start
        offset = stop
    return pieces, min(offset, end)


def _copy_piece(source: int, target: int, start: int, stop: int) -> None:
    begin = start
    while start < stop:
        done = os.copy_file_range(source, target, stop - start, start, start)
        if done == 0:
            raise OSError(errno.EIO, f"the source ended at {start} while being copied")
        start += done
    # Its write-back starts now, without waiting: the last call's fsync finds little left.
    os.posix_fadvise(target, begin, stop - begin, os.POSIX_FADV_DONTNEED)


def _copy_range(src: str, dst: str, offset: int, budget: int) -> tuple[int, int]:
    """Copy `src` into `dst` by copy_file_range, holes left holes, from `offset` until `budget` bytes of data
    are copied; answers (the offset to go on from, src's size): all is copied, and `dst` durable, when they
    are equal. Offset 0 creates `dst`, which must not exist; later calls write into it."""
    source = _open_source(src)
    try:
        size = os.fstat(source).st_size
        target = _create(dst) if offset == 0 else os.open(dst, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if offset == 0:
                os.ftruncate(target, size)
            pieces, offset = _data_pieces(source, offset, size, budget)
            with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="copy") as pool:
                for _ in pool.map(lambda piece: _copy_piece(source, target, *piece), pieces):
                    pass  # the first error is raised here
            if offset == size:
                os.fsync(target)
        finally:
            os.close(target)
    finally:
        os.close(source)
    if offset == size:
        fsync_dir(os.path.dirname(dst))
    return offset, size


# statfs(2) f_type of the file systems whose copy_file_range copies on the server, the data never crossing this
# host: NFS (4.2 COPY) and SMB (server-side copychunk). Elsewhere it goes through this host's page cache, slower
# than qemu-img convert (ext4: README, Benchmarks), and reflinks on XFS and btrfs: it is not offered there.
SERVER_SIDE_COPY = frozenset({0x6969, 0xFF534D42, 0xFE534D42})  # NFS, CIFS, SMB2 _SUPER_MAGIC
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def _fs_type(path: str) -> int:
    """The magic number (statfs f_type) of the file system holding `path`."""
    buf = ctypes.create_string_buffer(256)  # struct statfs, f_type first: 120 bytes on 64-bit Linux
    if _statfs(os.fsencode(path), buf) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _offload_probe(folder: str) -> dict[str, bool]:
    """What `folder`'s file system does between two files in it: {"reflink": FICLONE works,
    "copyFileRange": copy_file_range works and copies on the server (SERVER_SIDE_COPY)}. Two probe files are
    made and removed again."""
    name = os.path.join(folder, f"offload-probe-{uuid.uuid4().hex}")
    tries: dict[str, Callable[[str, str], object]] = {"reflink": _clone}
    if _fs_type(folder) in SERVER_SIDE_COPY:
        tries["copyFileRange"] = lambda src, dst: _copy_range(src, dst, 0, 4096)
    found = {"reflink": False, "copyFileRange": False}
    try:
        fd = _create(name + ".src")
        try:
            os.write(fd, b"\x5a" * 4096)  # an empty file clones and copies anywhere: data tells
        finally:
            os.close(fd)
        for kind, op in tries.items():
            try:
                op(name + ".src", name + ".dst")
                found[kind] = True
            except OSError as e:
                if e.errno not in UNSUPPORTED:
                    raise
            finally:
                atomic_remove(name + ".dst")
    finally:
        atomic_remove(name + ".src")
    return found


def _direct_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer, as O_DIRECT wants."""
    return mmap.mmap(-1, size)


def _read_at(path: str, offset: int, size: int) -> bytes:
    """`size` bytes of the block device `path` from `offset`, read past the page cache (O_DIRECT): what
    the storage holds now, as another host may have written it. Offset and size: multiples of 4096."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        buf = _direct_buffer(size)
        done = os.preadv(fd, [buf], offset)
        return bytes(buf[:done])
    finally:
        os.close(fd)


def _write_at(path: str, offset: int, data: bytes) -> None:
    """Write `data` to the block device `path` at `offset`, durable when it returns (O_DIRECT | O_DSYNC).
    Offset and length: multiples of 4096."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC)
    try:
        buf = _direct_buffer(len(data))
        buf[:] = data
        if os.pwritev(fd, [buf], offset) != len(data):
            raise OSError(errno.EIO, f"short write at {offset} of {path}")
    finally:
        os.close(fd)


def _zero_range(path: str, offset: int, size: int) -> None:
    """Make `size` bytes of the block device `path` from `offset` read as zeros: unmapped where the device
    can promise zeros after it (fallocate PUNCH_HOLE: a thin LUN gives the space back, a loop device
    punches holes in its file), else written as zeros by the device (BLKZEROOUT)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, size) != 0:
            error = ctypes.get_errno()
            if error not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise OSError(error, os.strerror(error), path)
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, size))
    finally:
        os.close(fd)


class _Leases:
    """The sanlock leases this child holds: the metadata writes it makes on a shared repository are made only
    while it holds the repository's metadata-writer lease. sanlock ties a lease to the process that acquired
    it: if this child dies, its leases go with it, and when the host loses its lockspace sanlock kills this
    child (the process that writes), not hsmd."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._held: set[tuple[bytes, bytes]] = set()
        self._acquiring = 0  # acquires in flight on the registration

    def acquire(self, lockspace: bytes, resource: bytes, path: str, offset: int) -> None:
        import sanlock  # only shared repositories' helpers need it
        with self._lock:
            if self._fd is None:
                self._fd = sanlock.register()
            fd = self._fd
            self._acquiring += 1
        try:  # not under the lock: sanlock may wait out a failing holder, and writes under other leases go on
            sanlock.acquire(lockspace, resource, [(path, offset)], slkfd=fd)
        except sanlock.SanlockException:
            with self._lock:
                self._acquiring -= 1
                if not self._held and not self._acquiring and self._fd == fd:
                    os.close(fd)  # a daemon restarted since forgot us: register again next time
                    self._fd = None
            raise
        with self._lock:
            self._acquiring -= 1
            self._held.add((lockspace, resource))

    def release(self, lockspace: bytes, resource: bytes, path: str, offset: int) -> None:
        import sanlock
        with self._lock:
            if (lockspace, resource) in self._held:
                self._held.discard((lockspace, resource))
                sanlock.release(lockspace, resource, [(path, offset)], slkfd=self._fd)

    @staticmethod
    def init(lockspace: bytes, resource: bytes, path: str, size: int) -> bool:
        """Make the lease file `path` (a new file of `size` bytes, never through a link) holding a free lease
        at offset 0; False when it is there already."""
        import sanlock
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o660)
        except FileExistsError:
            return False
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            sanlock.write_resource(lockspace, resource, [(path, 0)])
        except BaseException:
            os.unlink(path)  # no half-made lease left to be taken for a real one
            raise
        fsync_dir(os.path.dirname(path))
        return True

    @staticmethod
    def owners(lockspace: bytes, resource: bytes, path: str, offset: int) -> list[int]:
        """The host ids holding the lease at `offset` of `path`."""
        import sanlock
        return [owner["host_id"] for owner in sanlock.read_resource_owners(lockspace, resource, [(path, offset)])]

    @staticmethod
    def format(lockspace: bytes, resource: bytes, path: str, offset: int) -> None:
        """Write a free lease at `offset` of `path` (a block device's leases area), over what was there."""
        import sanlock
        sanlock.write_resource(lockspace, resource, [(path, offset)])

    @staticmethod
    def read(path: str, offset: int) -> dict:
        """The lease at `offset` of `path` as sanlock reads it: {lockspace, resource, version}."""
        import sanlock
        return sanlock.read_resource(path, offset)

    def check(self, lockspace: bytes, resource: bytes) -> None:
        if (lockspace, resource) not in self._held:
            raise OSError(errno.ENOLCK, f"this helper does not hold lease {resource.decode()} of "
                                        f"{lockspace.decode()}")

    def write(self, lockspace: bytes, resource: bytes, path: str, data: bytes) -> None:
        with self._lock:  # a release waits for the write in progress
            self.check(lockspace, resource)
            atomic_write(path, data)

    def remove(self, lockspace: bytes, resource: bytes, path: str) -> None:
        with self._lock:
            self.check(lockspace, resource)
            atomic_remove(path)

    def write_at(self, lockspace: bytes, resource: bytes, device: str, offset: int, data: bytes) -> None:
        with self._lock:
            self.check(lockspace, resource)
            _write_at(device, offset, data)


_leases = _Leases()

OPS: dict[str, Callable[..., object]] = {
    "stat": _stat,
    "exists": os.path.exists,
    "listdir": lambda path: sorted(os.listdir(path)),
    "read": _read,
    "read_all": _read_all,
    "read_many": _read_many,
    "write": atomic_write,
    "remove": atomic_remove,
    "makedirs": lambda path: os.makedirs(path, exist_ok=True),
    "rename": os.rename,
    "statvfs": _statvfs,
    "reserve": _reserve,
    "is_folder": _is_folder,
    "empty_folder": _empty_folder,
    "rmdir": _rmdir,
    "clone": _clone,
    "copy_range": _copy_range,
    "offload_probe": _offload_probe,
    "read_at": _read_at,
    "write_at": _write_at,
    "zero_range": _zero_range,
    "lease_acquire": _leases.acquire,
    "lease_release": _leases.release,
    "lease_write": _leases.write,
    "lease_remove": _leases.remove,
    "lease_write_at": _leases.write_at,
    "lease_init": _leases.init,
    "lease_owners": _leases.owners,
    "lease_format": _leases.format,
    "lease_read": _leases.read,
}


def serve(conn: Connection, threads: int) -> None:
    send_lock = threading.Lock()

    def answer(call_id: int, op: str, args: tuple) -> None:
        try:
            reply = (call_id, True, OPS[op](*args))
        except Exception as e:  # the caller re-raises it as a storage error
            reply = (call_id, False, (type(e).__name__, getattr(e, "errno", None), str(e)))
        with send_lock:
            conn.send(reply)

    with ThreadPoolExecutor(threads, thread_name_prefix="io") as pool:
        while True:
            try:
                call_id, op, args = conn.recv()
            except (EOFError, OSError):  # hsmd went away or closed us
                os._exit(0)
            pool.submit(answer, call_id, op, args)


if __name__ == "__main__":
    fd, slots = int(sys.argv[1]), int(sys.argv[2])
    serve(Connection(fd), slots)
