"""VDSM's storage flow through vdsm_shim: to a real hsmd, beside hsm in VDSM's own process, same run.

The flow, in VDSM's legacy verbs: createStorageDomain of a localfs domain;
createVolume of N volumes, each a new 1 GiB COW sparse image, every call made
first and then each task waited for with getTaskStatus(taskId, BLANK) until
its taskState is "finished"; getVolumeInfo of each; deleteImage of each, its
tasks waited for the same way. It runs through vdsm_shim.ServiceProxy to an
hsmd started here with its own --state-dir (on its Unix socket, as VDSM finds
it, or on loopback TCP), and through vdsm_shim.InProcess with no hsmd (its own
state_dir); each round both in turn, a new domain each, the best round of each
kept (the machine may be shared). Tasks are polled every --poll seconds on both
sides. Printed per phase: wall-clock time, and where it went (hsm's own time in
the verbs, from getStats; the task polls made).

Target: the proxy's whole flow within 1.5x of in-process.

Run: .venv/bin/python bench/shim.py [--volumes 100] [--rounds 3] [--transport unix|tcp] [--poll 0.01]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd  # noqa: E402
from vdsm_shim import ServiceProxy  # noqa: E402
from vdsm_shim.inprocess import InProcess  # noqa: E402

BLANK = "00000000-0000-0000-0000-000000000000"
SECTORS = 2 * 1024 * 1024  # 1 GiB in 512-byte sectors
COW, SPARSE, NFS_VERSION_LOCALFS, DATA_CLASS, DOMAIN_VERSION = 4, 2, 4, 1, 3
PHASES = ("domain", "create", "info", "delete")
TARGET = 1.5


def ok(answer: dict) -> dict:
    if answer["status"]["code"] != 0:
        raise RuntimeError(f"hsm answered {answer['status']}")
    return answer


def wait_task(irs, task_id: str, poll: float, timeout: float = 300) -> int:
    """Poll getTaskStatus in VDSM's form until the task is finished; the polls made."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        status = ok(irs.getTaskStatus(task_id, BLANK))["taskStatus"]
        if status["taskState"] == "finished":
            if status["code"] != 0:
                raise RuntimeError(f"task {task_id} ended {status}")
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} not finished after {timeout} s: {status}")
        time.sleep(poll)


def flow(irs, root: str, count: int, poll: float) -> dict:
    """One run of the flow on a new domain under `root`: {phase: seconds, "polls": task polls made}."""
    sd_uuid = str(uuid.uuid4())
    path = os.path.join(root, sd_uuid)
    os.mkdir(path)
    images = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(count)]
    seconds: dict = {"polls": 0}
    begin = time.perf_counter()
    ok(irs.createStorageDomain(NFS_VERSION_LOCALFS, sd_uuid, "bench", path, DATA_CLASS, DOMAIN_VERSION))
    seconds["domain"] = time.perf_counter() - begin

    begin = time.perf_counter()
    tasks = [ok(irs.createVolume(sd_uuid, BLANK, img, SECTORS, COW, SPARSE, "DATA", vol, "bench"))["uuid"]
             for img, vol in images]
    seconds["polls"] += sum(wait_task(irs, task, poll) for task in tasks)
    seconds["create"] = time.perf_counter() - begin

    begin = time.perf_counter()
    for img, vol in images:
        assert ok(irs.getVolumeInfo(sd_uuid, BLANK, img, vol))["info"]["uuid"] == vol
    seconds["info"] = time.perf_counter() - begin

    begin = time.perf_counter()
    tasks = [ok(irs.deleteImage(sd_uuid, BLANK, img))["uuid"] for img, _ in images]
    seconds["polls"] += sum(wait_task(irs, task, poll) for task in tasks)
    seconds["delete"] = time.perf_counter() - begin
    seconds["total"] = sum(seconds[phase] for phase in PHASES)
    return seconds


def verb_ms(irs) -> dict[str, tuple[int, float]]:
    """hsm's own time in each verb so far (calls, ms in all), from getStats: the same count on both sides."""
    verbs = ok(irs.getStats())["stats"]["verbs"]
    return {name: (v["calls"], v["calls"] * v["avgMs"]) for name, v in verbs.items()}


def own_ms(before: dict, after: dict, names: tuple[str, ...]) -> float:
    return sum(after.get(name, (0, 0.0))[1] - before.get(name, (0, 0.0))[1] for name in names)


PHASE_VERBS = {"domain": ("createStorageDomain",), "create": ("createVolume", "getTaskStatus"),
               "info": ("getVolumeInfo",), "delete": ("deleteImage", "getTaskStatus")}


def measured(irs, root: str, count: int, poll: float) -> dict:
    """flow() with hsm's own time in the round's verbs (ms) beside it, under "own"."""
    before = verb_ms(irs)
    seconds = flow(irs, root, count, poll)
    after = verb_ms(irs)
    seconds["own"] = own_ms(before, after, tuple({n for names in PHASE_VERBS.values() for n in names}))
    seconds["info_own"] = own_ms(before, after, PHASE_VERBS["info"])
    return seconds


def started_hsmd(root: str, transport: str) -> tuple[Hsmd, str]:
    folder = os.path.join(root, "hsmd")
    os.mkdir(folder)
    socket_path = os.path.join(folder, "hsmd.sock")
    daemon = Hsmd(folder, config={"rpc": {"unix_socket": socket_path}}).start()
    return daemon, f"unix:{socket_path}" if transport == "unix" else daemon.address


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, the best kept")
    parser.add_argument("--transport", choices=("unix", "tcp"), default="unix", help="how the proxy reaches hsmd")
    parser.add_argument("--poll", type=float, default=0.01, help="seconds between two getTaskStatus of a task")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as root:
        daemon, address = started_hsmd(root, args.transport)
        proxy = ServiceProxy(address)
        assert proxy, f"hsmd does not answer at {address}"
        local = InProcess({"state_dir": os.path.join(root, "in-process")})
        storage = {"proxy": os.path.join(root, "storage-proxy"), "in-process": os.path.join(root, "storage-local")}
        for folder in storage.values():
            os.mkdir(folder)
        runs: dict[str, list[dict]] = {"proxy": [], "in-process": []}
        try:
            for _ in range(args.rounds):
                runs["proxy"].append(measured(proxy, storage["proxy"], args.volumes, args.poll))
                runs["in-process"].append(measured(local, storage["in-process"], args.volumes, args.poll))
        finally:
            proxy.close()
            local.close()
            daemon.stop()
    best = {side: min(rounds, key=lambda r: r["total"]) for side, rounds in runs.items()}
    print(f"VDSM's flow, {args.volumes} volumes (1 GiB COW sparse, each a new image), best of {args.rounds} rounds;"
          f" proxy over {args.transport}, tasks polled every {args.poll * 1000:.0f} ms")
    print(f"{'phase':<9}{'proxy s':>10}{'in-process s':>14}{'proxy/in-process':>18}")
    for phase in (*PHASES, "total"):
        ours, base = best["proxy"][phase], best["in-process"][phase]
        print(f"{phase:<9}{ours:>10.3f}{base:>14.3f}{ours / base:>17.2f}x")
    for side, figures in best.items():
        print(f"  {side}: hsm's own time in the verbs {figures['own'] / 1000:.3f} s (getVolumeInfo "
              f"{figures['info_own'] / args.volumes:.2f} ms each), {figures['polls']} task polls")
    ratio = best["proxy"]["total"] / best["in-process"]["total"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"whole flow: proxy {ratio:.2f}x in-process  target <= {TARGET}x: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
