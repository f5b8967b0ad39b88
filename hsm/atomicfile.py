"""The one way hsm writes a file that must survive a crash."""

from __future__ import annotations

import os
import threading


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: after a crash it holds the old or the new content, whole.

    Written to a temporary file in the same folder, fsynced, renamed over
    `path`, and the folder fsynced so that the rename itself is durable.
    """
    folder = os.path.dirname(os.path.abspath(path))
    # One temporary name per target and thread: no random names to retry, no clash.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{threading.get_native_id()}.tmp")
    try:
        os.unlink(tmp)  # left by a crash; whatever is there (a link planted by someone) is not written through
    except FileNotFoundError:
        pass
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(folder)


def atomic_remove(path: str) -> None:
    """Remove `path` durably; a missing file is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
