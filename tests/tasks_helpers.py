"""Driving runTestTask tasks on a real hsmd."""

from __future__ import annotations

import os
import time

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
    deadline = time.monotonic() + timeout
    while True:
        current = status(proxy, task_id)
        if current["state"] in states:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {current['state']} after {timeout} s")
        time.sleep(0.02)


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
