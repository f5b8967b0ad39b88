"""A thin, typed wrapper of qemu-img: every data operation on an image goes through it.

Each function builds an argv and runs it without a shell. A failure raises
QemuImgError with the command, its exit code and stderr. Long operations
(convert, rebase) report progress through a callback and can be stopped: the
callback may raise, which kills qemu-img; they run at low CPU and idle I/O
priority. Calls that only read metadata (info, check) have a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger("hsm.storage.qemuimg")

QEMU_IMG = "qemu-img"
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    def __init__(self, argv: list[str], rc: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: exit code {rc}: {stderr.strip()}")
        self.argv, self.rc, self.stderr = argv, rc, stderr


class QemuImgTimeout(QemuImgError):
    """qemu-img did not finish in time (storage that hangs) and was killed."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        super().__init__(argv, -9, f"no answer in {timeout:g} s, killed")
        self.timeout = timeout


# Seconds a call that only reads metadata may run: a healthy image answers in
# milliseconds; check and map read every table of a large image.
INFO_TIMEOUT = 60.0
CHECK_TIMEOUT = 600.0

# qemu-img must not outlive hsmd: an orphan would go on writing a volume that the
# next hsmd works on. setpriv (util-linux) sets the parent-death signal and execs,
# which keeps subprocess's fast vfork path (a preexec_fn would not). A parent that
# dies before setpriv has set it leaves the child to init, where the signal never
# comes: sh then sees its parent is no longer hsmd and exits before qemu-img starts.
# The script is fixed; the command is passed as arguments, never parsed by sh.
_ORPHAN_GUARD = '[ "$PPID" = "$0" ] && exec "$@"'


_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> list[str]:
    """The prefix that ties a qemu-img to this process (its pid: hsmd's, or a forked child's)."""
    if not _SETPRIV:
        return []
    return [_SETPRIV, "--pdeathsig", "KILL", "sh", "-c", _ORPHAN_GUARD, str(os.getpid())]


# Data copies yield the CPU and the disks to the API and to VMs; the parent-death
# signal survives these execs.
_LOW_PRIORITY = ((["nice", "-n", "19"] if shutil.which("nice") else [])
                 + (["ionice", "-c", "3"] if shutil.which("ionice") else []))


def _run(argv: list[str], timeout: float) -> str:
    """Run qemu-img; past `timeout` it is killed and QemuImgTimeout raised."""
    proc = subprocess.Popen(_die_with_parent() + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        # In the kernel on hung storage (D state) it dies only when its I/O returns: reaped out of our way.
        threading.Thread(target=proc.communicate, name="qemu-img-reaper", daemon=True).start()
        raise QemuImgTimeout(argv, timeout) from None
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise QemuImgError(argv, proc.returncode, stderr.decode(errors="replace"))
    return stdout.decode()


def _run_with_progress(argv: list[str], progress: Callable[[float], None] | None) -> None:
    """Run a command given `-p`, passing each percentage it prints to `progress`."""
    proc = subprocess.Popen(_die_with_parent() + _LOW_PRIORITY + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, err = proc.stdout, proc.stderr
    assert out is not None and err is not None  # both piped
    try:
        buffer = b""
        while chunk := out.read1(4096):  # type: ignore[attr-defined]  # a BufferedReader: Popen's pipes
            buffer = (buffer + chunk)[-256:]
            found = _PROGRESS.findall(buffer)
            if found and progress is not None:
                progress(float(found[-1]))
        stderr = err.read().decode(errors="replace")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        out.close()
        err.close()
    if rc != 0:
        raise QemuImgError(argv, rc, stderr)


def create(path: str, size: int, fmt: str = "qcow2", backing: str | None = None, backing_format: str = "qcow2",
           compat: str = "1.1", preallocate: bool = False) -> None:
    """A new volume; `preallocate` allocates all its space now (fallocate), as VDSM's PREALLOCATED."""
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if fmt == "qcow2":
        argv += ["-o", f"compat={compat}"]
    if preallocate:
        argv += ["-o", "preallocation=falloc"]
    if backing:
        argv += ["-b", backing, "-F", backing_format]
    _run([*argv, path, str(size)], INFO_TIMEOUT)


def resize(path: str, size: int, fmt: str = "qcow2") -> None:
    """Grow the volume to virtual `size` (a clone of a smaller snapshot made a larger disk)."""
    _run([QEMU_IMG, "resize", "-q", "-f", fmt, path, str(size)], INFO_TIMEOUT)


# The target's flags, the fastest durable set in bench/images.py (README, Benchmarks): -t none writes past
# the host's page cache (O_DIRECT: a large copy evicts nothing VMs use) and flushes before qemu-img exits;
# -W -m 16 keeps 16 writes in flight, each made when ready. Out of order is safe only because every target
# is new, or an ILLEGAL volume rewritten whole: nothing reads it before its fix completes, and a copy cut
# short is made again from the start.
CONVERT_FLAGS = ["-t", "none", "-W", "-m", "16"]
# Where the target's file system refuses O_DIRECT (qemu-img says so when it opens the target, before it
# writes): through the page cache, flushed before qemu-img exits as well.
BUFFERED_FLAGS = ["-t", "writeback"]


def convert(source: str, target: str, source_format: str = "qcow2", target_format: str = "qcow2",
            backing: str | None = None, backing_format: str = "qcow2", compat: str = "1.1",
            progress: Callable[[float], None] | None = None, existing: bool = False) -> None:
    """Copy `source` (its whole chain) into a new `target`, durable when this returns; with `backing`, only
    what its top holds; `existing`: into the volume `target` is now, all of it rewritten."""
    argv = ["-p", "-f", source_format, "-O", target_format]
    if existing:
        argv.append("-n")
    elif target_format == "qcow2":
        argv += ["-o", f"compat={compat}"]
    if backing:
        argv += ["-B", backing, "-F", backing_format]
    try:
        _run_with_progress([QEMU_IMG, "convert", *CONVERT_FLAGS, *argv, source, target], progress)
    except QemuImgError as e:
        if "O_DIRECT" not in e.stderr:
            raise
        log.info("%s refuses O_DIRECT, copying through the page cache: %s", target,
                 e.stderr.strip().splitlines()[0])
        _run_with_progress([QEMU_IMG, "convert", *BUFFERED_FLAGS, *argv, source, target], progress)


def rebase(path: str, backing: str | None, backing_format: str = "qcow2",
           progress: Callable[[float], None] | None = None) -> None:
    """Safe rebase: `path` keeps its content and reads through `backing` (None: stands alone).

    Write-through (-t writethrough): each write is durable, the qcow2 tables that find it too, before the
    next. qemu-img writes the new backing name into the header before it flushes the tables of the
    clusters it copied, so a rebase killed there (with hsmd) left the new header over clusters it had
    lost, and a merge or an optimize run again found the header done and the data gone."""
    argv = [QEMU_IMG, "rebase", "-p", "-t", "writethrough", "-f", "qcow2", "-b", backing or ""]
    if backing:
        argv += ["-F", backing_format]
    _run_with_progress([*argv, path], progress)


def measure(size: int | None = None, source: str | None = None, source_format: str = "qcow2",
            target_format: str = "qcow2") -> dict:
    """qemu-img measure: {"required", "fully-allocated"} bytes of a new `target_format` volume of virtual
    `size`, or of a copy of `source` (its whole chain)."""
    argv = [QEMU_IMG, "measure", "--output=json", "-O", target_format]
    argv += ["--size", str(size)] if source is None else ["-f", source_format, source]
    return json.loads(_run(argv, INFO_TIMEOUT))


def info(path: str, fmt: str | None = None, chain: bool = False,
         timeout: float = INFO_TIMEOUT) -> dict | list[dict]:
    """qemu-img info's report; past `timeout` QemuImgTimeout."""
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    if chain:
        argv.append("--backing-chain")
    return json.loads(_run([*argv, path], timeout))


def check(path: str, fmt: str = "qcow2", timeout: float = CHECK_TIMEOUT) -> dict:
    """qemu-img check's report; a damaged image raises QemuImgError, past `timeout` QemuImgTimeout."""
    return json.loads(_run([QEMU_IMG, "check", "--output=json", "-U", "-f", fmt, path], timeout))
