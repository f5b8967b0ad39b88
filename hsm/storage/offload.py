"""Offload: a whole copy of a volume by the array or the file system itself instead of qemu-img.

A reflink (FICLONE: XFS with reflink=1, btrfs) makes the copy share the
source's extents, in milliseconds and with no new space; copy_file_range,
holes left holes, is used only where the file server copies (NFS 4.2, SMB):
on a local file system it moves the data through this host's page cache,
slower than qemu-img convert (ext4: README, Benchmarks). Which of them a
repository's file system does is found once, at connect, by two probe files
in the repository's folder (FileRepository.offload); every call goes through
the repository's I/O helper, as all file work does.

A file repository whose folder lives on an array's file system (an NFS export
of a libstoragemgmt FileSystem) says so in its record (`array`: the arrayId,
the fsId and the folder's path inside that file system, given to
createStorageRepository); there the array's own file clone (lsm
fs_file_clone, capability FILE_CLONE) is tried first. The array's answer is
checked: the clone must be where the repository sees it, as large as its
source, else the next mechanism copies. qemu-img stays the general way: for
chains, format changes, copies across file systems, local file systems
without reflink, and `options.offload=false`.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hsm.errors import HsmError, InvalidParameterException, StorageTimeout
from hsm.storage.ioprocess import IOProcess
from hsm.storage.ioworker import UNSUPPORTED

if TYPE_CHECKING:
    from hsm.arrays import Arrays
    from hsm.storage.image import Volume
    from hsm.storage.repository import FileRepository

log = logging.getLogger("hsm.storage.offload")

ARRAY = "array"
REFLINK = "reflink"
COPY_FILE_RANGE = "copy_file_range"
FILE_CLONE = "FILE_CLONE"  # the lsm capability an array's file clone needs
MAX_ARRAY_ID = 1024  # characters of an arrayId, fsId or path read from a record
# Data one copy_file_range call of the I/O helper copies: each call ends in well under the helper's timeout,
# and progress (and a stop) is looked at between them.
CHUNK = 128 << 20


@dataclass(frozen=True)
class Offload:
    """What a repository's file system does for a copy inside it."""
    reflink: bool = False
    copy_file_range: bool = False

    def mechanisms(self) -> list[str]:
        """The offload mechanisms available, fastest first: the wire's capabilities.offload."""
        return [name for name, ok in ((REFLINK, self.reflink), (COPY_FILE_RANGE, self.copy_file_range)) if ok]


@dataclass(frozen=True)
class ArrayPlace:
    """Where a file repository's folder lives on an array: file system `fs_id` of array `array_id`
    (its [offload] arrays URI), at `path` inside it ("" for the file system's root)."""
    array_id: str
    fs_id: str
    path: str = ""

    @classmethod
    def parse(cls, data: object) -> ArrayPlace:
        """From createStorageRepository's options.array or a record's `array` (which comes from shared
        storage, so every field is checked); InvalidParameterException says what is wrong."""
        if not isinstance(data, dict) or set(data) - {"arrayId", "fsId", "path"}:
            raise InvalidParameterException(f"array={str(data)[:120]!r}: expected {{arrayId, fsId[, path]}}")
        values = [data.get("arrayId"), data.get("fsId"), data.get("path", "")]
        if not all(isinstance(v, str) and v.isprintable() and len(v) <= MAX_ARRAY_ID for v in values) \
                or not values[0] or not values[1]:
            raise InvalidParameterException(f"array={str(data)[:120]!r}: arrayId and fsId are non-empty printable "
                                            f"strings, path a printable string")
        path = values[2]
        if path and (path.startswith("/") or posixpath.normpath(path) != path or ".." in path.split("/")):
            raise InvalidParameterException(f"array.path={path!r}: a relative path inside the file system, "
                                            f"without '..'")
        return cls(values[0], values[1], path)

    def wire(self) -> dict:
        return {"arrayId": self.array_id, "fsId": self.fs_id, "path": self.path}

    def name_of(self, folder: str, filename: str) -> str:
        """The array's name of a file of the repository: relative to the file system's root."""
        return posixpath.join(self.path, folder, filename)


def discover(io: IOProcess, folder: str) -> Offload:
    """Try a reflink, and where the server copies a copy_file_range, between two probe files in `folder`;
    none when the probe fails."""
    try:
        found = io.offload_probe(folder)
    except (OSError, HsmError) as e:
        log.warning("Cannot probe offload in %s, copies use qemu-img: %s", folder, e)
        return Offload()
    return Offload(reflink=found["reflink"], copy_file_range=found["copyFileRange"])


def same_filesystem(source_io: IOProcess, source_folder: str, target_io: IOProcess, target_folder: str) -> bool:
    """Whether both folders are on one file system (st_dev), where a clone or copy_file_range can work."""
    return source_io.stat(source_folder)["dev"] == target_io.stat(target_folder)["dev"]


def copy_file(io: IOProcess, offload: Offload, src: str, dst: str,
              progress: Callable[[float], None] | None = None) -> str:
    """Copy the file `src` to `dst` (a file there is replaced) by the fastest mechanism `offload` has;
    the one used, or "" when none could (then `dst` is absent). `progress` takes percents and may raise to stop.

    Both paths are on one file system (same_filesystem); `io` is the target repository's helper.
    """
    io.remove(dst)  # a partial copy of a run cut short
    if offload.reflink:
        try:
            io.clone(src, dst)
            return REFLINK
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                raise
            log.info("reflink of %s refused (%s): trying copy_file_range", src, os.strerror(e.errno or 0))
    if offload.copy_file_range:
        try:
            _copy_range(io, src, dst, progress)
            return COPY_FILE_RANGE
        except OSError as e:
            io.remove(dst)
            if e.errno not in UNSUPPORTED:
                raise
            log.info("copy_file_range of %s refused (%s)", src, os.strerror(e.errno or 0))
    return ""


def _copy_range(io: IOProcess, src: str, dst: str, progress: Callable[[float], None] | None) -> None:
    """copy_file_range in calls of CHUNK bytes of data each: each within the helper's timeout."""
    offset, size = io.copy_range(src, dst, 0, CHUNK)
    while offset < size:
        if progress is not None:
            progress(100 * offset / size)
        offset, size = io.copy_range(src, dst, offset, CHUNK)


def clone_volume(arrays: Arrays | None, source_repo: FileRepository, source: Volume, repo: FileRepository,
                 target: Volume, progress: Callable[[float], None] | None = None) -> str:
    """Make `target` of `repo` a whole copy of the file of `source` (of `source_repo`) by the array, else by
    the file system (a reflink or copy_file_range); the mechanism used, or "" when none could (then the
    target's file is absent and the caller copies with qemu-img)."""
    from hsm.storage.repository import VOLUMES  # repository imports this module
    if not repo.offloading:
        return ""
    src, dst = source_repo.volume_path(source), repo.volume_path(target)
    if arrays is not None and _array_clone(arrays, source_repo, src, repo, dst, source.filename, target.filename):
        return ARRAY
    if not repo.offload.mechanisms() or not same_filesystem(source_repo.io, os.path.join(source_repo.path, VOLUMES),
                                                            repo.io, os.path.join(repo.path, VOLUMES)):
        return ""
    return copy_file(repo.io, repo.offload, src, dst, progress)


def _array_clone(arrays: Arrays, source_repo: FileRepository, src: str, repo: FileRepository, dst: str,
                 src_name: str, dst_name: str) -> bool:
    """Whether the array cloned the file: both repositories on one of its file systems, FILE_CLONE in the
    repository's record, and the clone found where this host sees it, as large as its source."""
    from hsm.storage.repository import VOLUMES
    place = repo.array
    if place is None or source_repo.array is None or (source_repo.array.array_id, source_repo.array.fs_id) != \
            (place.array_id, place.fs_id) or not repo.array_capabilities.get(FILE_CLONE):
        return False
    repo.io.remove(dst)  # a partial copy of a run cut short; the array clones to a new name only
    try:
        arrays.file_clone(place.array_id, place.fs_id, source_repo.array.name_of(VOLUMES, src_name),
                          place.name_of(VOLUMES, dst_name))
    except StorageTimeout:
        raise  # the job goes on on the array: nothing else may write the target meanwhile; the fix fails
    except HsmError as e:
        log.warning("The array did not clone %s (%s): copying it by other means", src, e)
        return False
    try:
        made, wanted = repo.io.stat(dst)["size"], source_repo.io.stat(src)["size"]
    except FileNotFoundError:
        made, wanted = -1, 0
    if made != wanted:
        log.warning("The array answered a clone of %s, but %s is %s here (array.path %r of repository %s wrong?): "
                    "copying it by other means", src, dst, "missing" if made < 0 else f"{made} bytes, not {wanted}",
                    place.path, repo.id)
        repo.io.remove(dst)
        return False
    return True
