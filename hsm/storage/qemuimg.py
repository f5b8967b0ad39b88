"""A thin, typed wrapper of qemu-img: every data operation on an image goes through it.

Each function builds an argv and runs it without a shell. A failure raises
QemuImgError with the command, its exit code and stderr. Long operations
(convert, rebase) report progress through a callback and can be stopped: the
callback may raise, which kills qemu-img.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable

QEMU_IMG = "qemu-img"
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    def __init__(self, argv: list[str], rc: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)}: exit code {rc}: {stderr.strip()}")
        self.argv, self.rc, self.stderr = argv, rc, stderr


# qemu-img must not outlive hsmd: an orphan would go on writing a volume that the
# next hsmd works on. setpriv (util-linux) sets the parent-death signal and execs,
# which keeps subprocess's fast vfork path (a preexec_fn would not).
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


def _run(argv: list[str]) -> str:
    proc = subprocess.run(_DIE_WITH_PARENT + argv, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise QemuImgError(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode()


def _run_with_progress(argv: list[str], progress: Callable[[float], None] | None) -> None:
    """Run a command given `-p`, passing each percentage it prints to `progress`."""
    proc = subprocess.Popen(_DIE_WITH_PARENT + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        buffer = b""
        while chunk := proc.stdout.read1(4096):
            buffer = (buffer + chunk)[-256:]
            found = _PROGRESS.findall(buffer)
            if found and progress is not None:
                progress(float(found[-1]))
        stderr = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if rc != 0:
        raise QemuImgError(argv, rc, stderr)


def create(path: str, size: int, fmt: str = "qcow2", backing: str | None = None, backing_format: str = "qcow2",
           compat: str = "1.1") -> None:
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if fmt == "qcow2":
        argv += ["-o", f"compat={compat}"]
    if backing:
        argv += ["-b", backing, "-F", backing_format]
    _run([*argv, path, str(size)])


def convert(source: str, target: str, source_format: str = "qcow2", target_format: str = "qcow2",
            backing: str | None = None, backing_format: str = "qcow2", compat: str = "1.1",
            progress: Callable[[float], None] | None = None) -> None:
    """Copy `source` (its whole chain) into a new `target`; with `backing`, only what its top holds."""
    argv = [QEMU_IMG, "convert", "-p", "-f", source_format, "-O", target_format]
    if target_format == "qcow2":
        argv += ["-o", f"compat={compat}"]
    if backing:
        argv += ["-B", backing, "-F", backing_format]
    _run_with_progress([*argv, source, target], progress)


def rebase(path: str, backing: str | None, backing_format: str = "qcow2",
           progress: Callable[[float], None] | None = None) -> None:
    """Safe rebase: `path` keeps its content and reads through `backing` (None: stands alone)."""
    argv = [QEMU_IMG, "rebase", "-p", "-f", "qcow2", "-b", backing or ""]
    if backing:
        argv += ["-F", backing_format]
    _run_with_progress([*argv, path], progress)


def info(path: str, fmt: str | None = None, chain: bool = False) -> dict | list[dict]:
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    if chain:
        argv.append("--backing-chain")
    return json.loads(_run([*argv, path]))


def check(path: str, fmt: str = "qcow2") -> dict:
    """qemu-img check's report; a damaged image raises QemuImgError."""
    return json.loads(_run([QEMU_IMG, "check", "--output=json", "-U", "-f", fmt, path]))
