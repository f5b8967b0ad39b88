"""A block-1 repository with 10 and with 1,000 LVs: the lvm commands hsm runs per verb, and create latency.

Real LVM on loop devices over sparse files, a real supervdsmd (LVM's activation off through
LVM_SYSTEM_DIR, as on these machines) and a real hsmd with `[irs] lv_activation = loop`. Per size:

- the repository is filled with that many disks of 1 MiB (each one LV, made by its create fix);
- lvm commands (counted from supervdsmd's log, by command: every LVM command hsm runs goes through its
  `lvm` verb, and each LV activation or deactivation runs one `pvs` there) for 200 getImageList, 200
  getImageStatus from 8 threads at once, and 50 createVirtualDisk whose fixes run (lvcreate,
  activation, qemu-img create, deactivation);
- createVirtualDisk answer p50 over 200 calls with `{"autoFix": false}` (the commit: a slot write),
  and over 50 that start their fix (each settled before the next, so the answer is measured, not the
  CPU of fixes still running), beside the 10-LV figures.

Targets (issue 14): at most one `lvs` per sampling interval whatever the number of concurrent calls
(here: none for reads, which the index answers; at most one per create, which invalidates the cache),
and create p50 with 1,000 LVs within 1.2x of 10 LVs.

Run as root: .venv/bin/python bench/block.py [--sizes 10,1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.block_helpers import detach_loops_over  # noqa: E402
from tests.hsmd import Hsmd  # noqa: E402
from tests.supervdsmd import Supervdsmd  # noqa: E402

MiB = 1 << 20
LVM_CALL = re.compile(r": lvm \{'command': '([a-z]+)'|: (loop|lvm)(Activate|Deactivate)LV ")


def ok(answer: dict) -> dict:
    assert answer["status"]["code"] == 0, answer["status"]
    return answer


class Rig:
    """supervdsmd + hsmd + a VG on two sparse loop devices, in a folder of its own."""

    def __init__(self, root: str, pv_gib: int) -> None:
        self.root = root
        lvm_dir = os.path.join(root, "lvm")
        os.makedirs(lvm_dir)
        with open(os.path.join(lvm_dir, "lvm.conf"), "w") as f:
            f.write("global { activation = 0 }\n")
        self.lvm_env = {**os.environ, "LVM_SYSTEM_DIR": lvm_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"}
        self.pvs = []
        for n in range(2):
            image = os.path.join(root, f"pv{n}.img")
            with open(image, "wb") as f:
                f.truncate(pv_gib << 30)
            self.pvs.append(subprocess.run(["losetup", "-f", "--show", image], capture_output=True, text=True,
                                           check=True).stdout.strip())
        for folder in ("repository/mnt", "state", "hsmd"):
            os.makedirs(os.path.join(root, folder))
        self.supervdsmd: Supervdsmd | None = None
        self.hsmd: Hsmd | None = None
        self.vg = f"hsmbench{uuid.uuid4().hex[:8]}"
        try:
            self._start(lvm_dir)
        except BaseException:
            self.close()
            raise

    def _start(self, lvm_dir: str) -> None:
        root = self.root
        self.supervdsmd = Supervdsmd(os.path.join(root, "sv"), config={"irs": {
            "repository": os.path.join(root, "repository"), "state_dir": os.path.join(root, "state")}},
            env={"LVM_SYSTEM_DIR": lvm_dir}).start()
        self.hsmd = Hsmd(os.path.join(root, "hsmd"), config={
            "supervdsm": {"socket": self.supervdsmd.socket}, "irs": {"lv_activation": "loop"},
            "tasks": {"max_tasks": 2000}}).start()
        proxy = self.hsmd.proxy()
        ok(proxy.createStorageRepository("block-1", {"vgName": self.vg, "devices": self.pvs}))
        ok(proxy.connectStorageRepository("blk", "block-1", {"vgName": self.vg}))

    def lvm_calls(self) -> collections.Counter[str]:
        assert self.supervdsmd is not None
        with open(os.path.join(self.supervdsmd.log_dir, "supervdsm.log"), errors="replace") as f:
            found = LVM_CALL.findall(f.read())
        # an activation or deactivation runs one `pvs` inside supervdsmd (where the LV's extents are)
        return collections.Counter(command or f"pvs ({change.lower()})" for command, _, change in found)

    @property
    def daemon(self) -> Hsmd:
        assert self.hsmd is not None
        return self.hsmd

    def close(self) -> None:
        if self.hsmd is not None:
            self.hsmd.kill()
        detach_loops_over(self.pvs)
        subprocess.run(["lvm", "vgremove", "-f", self.vg], env=self.lvm_env, capture_output=True)
        subprocess.run(["lvm", "pvremove", "-y", *self.pvs], env=self.lvm_env, capture_output=True)
        if self.supervdsmd is not None:
            self.supervdsmd.kill()
        for pv in self.pvs:
            subprocess.run(["losetup", "-d", pv], check=False)


def fill(rig: Rig, count: int, threads: int = 8) -> float:
    """Make `count` disks (their fixes make the LVs) from `threads` clients; the seconds it took."""
    left = iter(range(count))
    lock = threading.Lock()
    made: list[str] = []

    def client() -> None:
        proxy = rig.daemon.proxy(timeout=120)
        while True:
            with lock:
                if next(left, None) is None:
                    return
            image = ok(proxy.createVirtualDisk("blk", str(MiB), "", {}, {}))["imageId"]
            with lock:
                made.append(image)

    begin = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    settle(rig, made)
    return time.monotonic() - begin


def settle(rig: Rig, images: list[str], timeout: float = 3600) -> None:
    proxy = rig.daemon.proxy(timeout=120)
    deadline = time.monotonic() + timeout
    pending = set(images)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} images not optimized"
        for image in list(pending):
            status = ok(proxy.getImageStatus("blk", image))["image"]
            assert not status["lastError"], status
            if status["state"] == "optimized":
                pending.discard(image)
        if pending:
            time.sleep(0.2)


def calls_during(rig: Rig, work) -> dict[str, int]:
    before = rig.lvm_calls()
    work()
    after = rig.lvm_calls()
    return {command: after[command] - before[command] for command in after if after[command] > before[command]}


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(rig: Rig) -> dict:
    proxy = rig.daemon.proxy(timeout=120)
    figures: dict = {}
    figures["lvm per 200 getImageList"] = calls_during(rig, lambda: [ok(proxy.getImageList("blk")) for _ in range(200)])
    images = ok(proxy.getImageList("blk"))["images"]

    def statuses() -> None:
        def client(n: int) -> None:
            mine = rig.daemon.proxy(timeout=120)
            for i in range(25):
                ok(mine.getImageStatus("blk", images[(n * 25 + i) % len(images)]))
        workers = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    figures["lvm per 200 getImageStatus (8 threads)"] = calls_during(rig, statuses)
    commits = []

    def creates_committed() -> None:
        for _ in range(200):
            begin = time.perf_counter()
            ok(proxy.createVirtualDisk("blk", str(MiB), "", {}, {"autoFix": False}))
            commits.append(time.perf_counter() - begin)
    figures["lvm per 200 createVirtualDisk autoFix false"] = calls_during(rig, creates_committed)
    figures["createVirtualDisk p50 ms (commit)"] = round(p50_ms(commits), 2)
    made, answers = [], []

    def creates_fixed() -> None:
        for _ in range(50):  # one at a time, each settled before the next: the answer, not the fixes' CPU
            begin = time.perf_counter()
            made.append(ok(proxy.createVirtualDisk("blk", str(MiB), "", {}, {}))["imageId"])
            answers.append(time.perf_counter() - begin)
            settle(rig, made[-1:])
    figures["lvm per 50 createVirtualDisk with their fixes"] = calls_during(rig, creates_fixed)
    figures["createVirtualDisk p50 ms (fix started)"] = round(p50_ms(answers), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000", help="LV counts, comma-separated (the first is the base)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("lvm"):
        sys.exit("bench/block.py needs root and lvm2")
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {}
    for size in sizes:
        root = tempfile.mkdtemp(prefix=f"hsm-block-{size}-", dir="/var/tmp")
        rig = Rig(root, pv_gib=max(20, size * 128 // 1024 // 2 + 20))
        try:
            seconds = fill(rig, size)
            print(f"{size} LVs made in {seconds:.1f} s ({size / seconds:.1f} creates/s with their fixes)",
                  flush=True)
            results[size] = measure(rig)
        finally:
            rig.close()
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps({size: results[size]}, indent=1), flush=True)
    base = results[sizes[0]]
    for size in sizes[1:]:
        for key in ("createVirtualDisk p50 ms (commit)", "createVirtualDisk p50 ms (fix started)"):
            ratio = results[size][key] / base[key]
            verdict = "PASS" if ratio <= 1.2 else "FAIL"
            print(f"{key}: {base[key]} ms at {sizes[0]} LVs, {results[size][key]} ms at {size} LVs: "
                  f"{ratio:.2f}x (target <= 1.2x) {verdict}")
        reads = sum(results[size]["lvm per 200 getImageList"].values()) + \
            sum(results[size]["lvm per 200 getImageStatus (8 threads)"].values())
        print(f"lvm commands for 400 reads at {size} LVs: {reads} (target: 0, the index answers) "
              f"{'PASS' if reads == 0 else 'FAIL'}")


if __name__ == "__main__":
    main()
