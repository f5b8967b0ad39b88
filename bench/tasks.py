"""Task manager figures, each beside its baseline measured in the same run.

1. Start-up recovery: hsmd's time from exec to its first answered ping with
   1,000 unfinished tasks on disk (non-transparent: all resumed; transparent:
   all sent to waitrecover), beside the same start with no tasks. Target:
   under 5 s.
2. Throughput of no-op tasks (one step that does nothing) created over
   XML-RPC by 8 client threads until all have finished, beside the ceilings
   it sits on: ping calls/s from the same clients, and atomic writes/s
   (temp file, fsync, rename, fsync dir) on the same filesystem. A no-op task
   costs one call and two state moves appended to the task journal, where
   concurrent moves share one fdatasync (group commit). Target: 500 tasks/s
   or more.

Run: .venv/bin/python bench/tasks.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hsm.atomicfile import atomic_write  # noqa: E402
from hsm.tasks.states import State  # noqa: E402
from hsm.tasks.store import TaskStore  # noqa: E402
from hsm.tasks.task import Task  # noqa: E402
from tests.hsmd import Hsmd  # noqa: E402

NOOP = [{"seconds": 0, "journal": False}]


def _config(mode: str, max_tasks: int) -> dict:
    return {"tasks": {"diagnostics": "true", "mode": mode, "max_tasks": max_tasks}}


def seed_tasks(state_dir: str, count: int, mode: str) -> None:
    store = TaskStore(os.path.join(state_dir, "tasks"))
    for _ in range(count):
        store.save(Task(id=str(uuid.uuid4()), kind="diagnostics.sleep", verb="runTestTask",
                        args={"steps": NOOP, "locks": []}, mode=mode, state=State.RUNNING, nsteps=1))


def wait_all(proxy, count: int, states: tuple[str, ...], timeout: float = 120) -> float:
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        counts = proxy.getStats()["stats"]["tasks"]  # cheap to ask, unlike the list of every task
        if sum(counts.get(state, 0) for state in states) >= count:
            return time.monotonic() - begin
        time.sleep(0.05)
    raise RuntimeError(f"tasks did not reach {states} in {timeout} s")


def start_time(root: str, count: int, mode: str) -> tuple[float, float]:
    """(seconds to the first ping, seconds more until every task settled)."""
    daemon = Hsmd(root, config=_config(mode, max(count, 1)))
    seed_tasks(daemon.state_dir, count, mode)
    begin = time.monotonic()
    daemon.start(timeout=120)
    first_ping = time.monotonic() - begin
    settled = wait_all(daemon.proxy(), count, ("finished",) if mode == "non-transparent" else ("waitrecover",))
    daemon.stop()
    return first_ping, settled


def throughput(root: str, count: int, clients: int = 8) -> tuple[float, float]:
    """(no-op tasks/s to completion, ping calls/s) with `clients` threads."""
    daemon = Hsmd(root, config=_config("non-transparent", count))
    daemon.start()
    proxies = [daemon.proxy() for _ in range(clients)]
    share = count // clients

    def run(fn) -> float:
        threads = [threading.Thread(target=lambda p=p: [fn(p) for _ in range(share)]) for p in proxies]
        begin = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - begin

    ping_seconds = run(lambda p: p.ping())
    submit = run(lambda p: p.runTestTask(NOOP, {}))
    settle = wait_all(daemon.proxy(), share * clients, ("finished",))
    daemon.stop()
    return share * clients / (submit + settle), share * clients / ping_seconds


def write_rate(folder: str, count: int = 2000) -> float:
    begin = time.monotonic()
    for i in range(count):
        atomic_write(os.path.join(folder, f"w{i % 100}"), b"x" * 400)
    return count / (time.monotonic() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as root:
        def fresh(name: str) -> str:
            path = os.path.join(root, name)
            os.mkdir(path)
            return path

        empty_ping, _ = start_time(fresh("empty"), 0, "non-transparent")
        print(f"{'start-up':<44}{'first ping s':>14}{'all settled s':>15}{'target':>10}")
        print(f"{'  no tasks (baseline)':<44}{empty_ping:>14.2f}{'':>15}")
        for mode in ("non-transparent", "transparent"):
            ping, settled = start_time(fresh(mode), args.tasks, mode)
            verdict = "PASS" if ping < 5 else "MISS"
            print(f"{f'  {args.tasks} unfinished tasks, {mode}':<44}{ping:>14.2f}{settled:>15.2f}"
                  f"{'< 5 s ' + verdict:>10}")
        tasks_rate, ping_rate = throughput(fresh("throughput"), args.tasks)
        writes = write_rate(fresh("writes"))
        print()
        print(f"{'throughput (8 client threads)':<44}{'per second':>14}")
        print(f"{'  atomic writes, same filesystem (ceiling)':<44}{writes:>14.0f}")
        print(f"{'  ping calls (ceiling)':<44}{ping_rate:>14.0f}")
        verdict = "PASS" if tasks_rate >= 500 else "MISS"
        print(f"{'  no-op tasks, created to finished':<44}{tasks_rate:>14.0f}   target >= 500: {verdict}")


if __name__ == "__main__":
    main()
