"""The child side of an IOProcess: runs file operations on one repository's storage.

It may block forever in the kernel (a dead NFS server puts a process in D
state); that is why it is a separate process: only it hangs, never hsmd.
Requests and answers are pickled tuples on a pipe between hsmd and its own
child: (id, op, args) in, (id, ok, value) out.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from hsm.atomicfile import atomic_remove, atomic_write, fsync_dir


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"mode": st.st_mode, "size": st.st_size, "mtime": st.st_mtime, "ctime": st.st_ctime, "uid": st.st_uid,
            "gid": st.st_gid, "blocks": st.st_blocks}


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


OPS: dict[str, Callable[..., object]] = {
    "stat": _stat,
    "exists": os.path.exists,
    "listdir": lambda path: sorted(os.listdir(path)),
    "read": _read,
    "read_all": _read_all,
    "write": atomic_write,
    "remove": atomic_remove,
    "makedirs": lambda path: os.makedirs(path, exist_ok=True),
    "rename": os.rename,
    "statvfs": _statvfs,
    "reserve": _reserve,
    "is_folder": _is_folder,
    "empty_folder": _empty_folder,
    "rmdir": _rmdir,
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
