"""Driving runTestTask tasks on a real hsmd, and a small filesystem to fill up under a task journal."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.waiting import wait_for

DONE = ("finished", "recovered", "failed")


def diagnostics_config(mode: str = "non-transparent", **tasks: object) -> dict:
    return {"tasks": {"diagnostics": "true", "mode": mode, **tasks}}


def start_task(proxy, steps: list[dict], **options) -> str:
    answer = proxy.runTestTask(steps, options)
    assert answer["status"]["code"] == 0, answer
    return answer["taskId"]


def status(proxy, task_id: str) -> dict:
    answer = proxy.getTaskStatus(task_id)
    assert answer["status"]["code"] == 0, answer
    return answer["taskStatus"]


def wait_state(proxy, task_id: str, states=DONE, timeout: float = 30.0) -> dict:
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = status(proxy, task_id)
        return seen[0] if seen[0]["state"] in states else None

    return wait_for(reached, timeout, what=lambda: f"task {task_id} in {states}: still {seen[0].get('state')}")


def journal(daemon, task_id: str) -> list[str]:
    """What the task's steps really did, minus the crash markers."""
    path = os.path.join(daemon.state_dir, "diagnostics", task_id + ".journal")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f.read().splitlines() if not line.startswith("crash")]


def wait_killed(daemon, timeout: float = 30.0) -> int:
    """Wait for hsmd to die of its own SIGKILL (a crash point); returns the exit status."""
    return daemon.process.wait(timeout)


@contextlib.contextmanager
def small_filesystem(path: str, size: str = "512k") -> Iterator[str]:
    """A tmpfs of `size` mounted on `path` for the block; the test is skipped where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: an hsmd still holding the journal open must not keep the mount (or the test) alive.
        subprocess.run(["umount", "-l", path], capture_output=True)


def fill(folder: str) -> str:
    """Write a file in `folder` until its filesystem has no free block left; returns its path."""
    path = os.path.join(folder, "filler")
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return path
