"""Offload: a whole copy of a volume by the file system itself instead of qemu-img.

A reflink (FICLONE: XFS with reflink=1, btrfs) makes the copy share the
source's extents, in milliseconds and with no new space; copy_file_range,
holes left holes, is used only where the file server copies (NFS 4.2, SMB):
on a local file system it moves the data through this host's page cache,
slower than qemu-img convert (ext4: README, Benchmarks). Which of them a
repository's file system does is found once, at connect, by two probe files
in the repository's folder (FileRepository.offload); every call goes through
the repository's I/O helper, as all file work does. qemu-img stays the
general way: for chains, format changes, copies across file systems, local
file systems without reflink, and `options.offload=false`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from hsm.errors import HsmError
from hsm.storage.ioprocess import IOProcess
from hsm.storage.ioworker import UNSUPPORTED

log = logging.getLogger("hsm.storage.offload")

REFLINK = "reflink"
COPY_FILE_RANGE = "copy_file_range"
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
