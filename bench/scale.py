"""One repository of 1,000, 10,000 and 100,000 images: issue 17's figures, each beside the 1,000-image one.

Per size, on hsmd's embedded `local` repository:

- hsmd start-up, exec to the first answered ping (the best of the two starts below);
- createVirtualDisk p50 in the first 10 s after that ping (one client, back to back), and once settled
  (no task queued or running, and hsmd's CPU under 5 % for a second: the fixes that
  start-up resumed have run), 200 calls;
- getImageList (the whole list, the median of 5) and its first page of 1,000 (`options.limit`);
- hsmd's RSS (its I/O helpers not counted);
- checkStorageRepository, its time and number of entries, and its first page of 1,000.

The images are what the issue measured: records only (createVirtualDisk with `{"autoFix": false}`, a
committed disk whose volume a fix makes later) from 8 client threads. Making 100,000 takes minutes, so
each size is made once into `--cache` and reused: every start runs on a fresh copy whose records are
hard links to the cached ones (hsmd replaces a record by an atomic rename, never writes one in place),
so what a run does never reaches the cache (but for one start and stop of hsmd on the cache itself, which
writes its index snapshot for this boot: each copy starts from it). Targets (issue 17): start-up < 2 s and
list within 3x of 1,000 images, create p50 < 3 ms from the first ping, list < 100 ms, RSS < 150 MB, check
< 1 s or paged.

Run: .venv/bin/python bench/scale.py [--sizes 1000,10000,100000] [--cache /var/tmp/hsm-scale]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd  # noqa: E402

GiB = 1 << 30
RECORDS_ONLY = {"autoFix": False}
ENDED = ("finished", "failed", "recovered", "waitrecover")  # task states that take no CPU
READY = "ready"  # in a size's cache folder once its images are all made


def ok(answer: dict) -> dict:
    assert answer["status"]["code"] == 0, answer["status"]
    return answer


def create_records(daemon: Hsmd, count: int, threads: int) -> float:
    """Make `count` records-only disks from `threads` clients; the creates/s."""
    left = iter(range(max(0, count)))
    lock = threading.Lock()

    def client() -> None:
        proxy = daemon.proxy(timeout=120)
        while True:
            with lock:
                if next(left, None) is None:
                    return
            ok(proxy.createVirtualDisk("local", str(GiB), "", {}, RECORDS_ONLY))

    begin = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return max(0, count) / (time.monotonic() - begin)


def prepared(cache: str, count: int, threads: int) -> str:
    """The cached hsmd root holding `count` images, made now if it is not there yet.

    An interrupted making goes on from the records already there (the restart resumes the fixes of
    up to [tasks] max_tasks of them, which then hold volumes: the figures barely notice).
    """
    root = os.path.join(cache, str(count))
    if os.path.exists(os.path.join(root, READY)):
        Hsmd(root).start(timeout=600).stop(timeout=600)  # its index snapshot written by this hsmd, this boot
        return root
    os.makedirs(root, exist_ok=True)
    images = os.path.join(root, "state", "local", "images")
    made = sum(name.endswith(".json") for name in os.listdir(images)) if os.path.isdir(images) else 0
    daemon = Hsmd(root).start(timeout=600)
    try:
        rate = create_records(daemon, count - made, threads)
    finally:
        daemon.stop(timeout=600)
    with open(os.path.join(root, READY), "w") as f:
        f.write(f"{rate:.0f} creates/s\n")
    print(f"  made {count - made} records in {root} at {rate:.0f} creates/s from {threads} clients", flush=True)
    return root


def fresh_copy(cached: str, scratch: str) -> Hsmd:
    """A hsmd on a copy of the cached state whose image records are hard links to the cached ones."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    images = os.path.join("local", "images")
    shutil.copytree(os.path.join(cached, "state"), os.path.join(scratch, "state"),
                    ignore=lambda folder, names: names if folder.endswith(images) else [])
    source, target = os.path.join(cached, "state", images), os.path.join(scratch, "state", images)
    for name in os.listdir(source):
        os.link(os.path.join(source, name), os.path.join(target, name))
    return Hsmd(scratch)


def started(daemon: Hsmd) -> float:
    begin = time.monotonic()
    daemon.start(timeout=600)
    return time.monotonic() - begin


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(daemon: Hsmd, limit: float = 900.0) -> float:
    """Wait until no task is queued or running (the fixes start-up resumed) and hsmd uses under 5 % of a CPU
    over a second; the seconds waited."""
    begin = time.monotonic()
    proxy = daemon.proxy(timeout=120)
    while time.monotonic() - begin < limit:
        tasks = ok(proxy.getStats())["stats"]["tasks"]
        if any(count for state, count in tasks.items() if state not in ENDED):
            time.sleep(1.0)
            continue
        used = cpu_seconds(daemon.process.pid)
        time.sleep(1.0)
        if cpu_seconds(daemon.process.pid) - used < 0.05:
            break
    return time.monotonic() - begin


def create_p50(proxy, seconds: float | None = None, calls: int = 200) -> tuple[float, int]:
    """(p50 ms, calls) of createVirtualDisk calls one after the other: for `seconds`, or `calls` of them.

    Back to back: calls paced with sleeps between them measured 2-3x slower here (a CPU woken each time).
    """
    times: list[float] = []
    begin = time.monotonic()
    while (time.monotonic() - begin < seconds) if seconds else len(times) < calls:
        start = time.perf_counter()
        ok(proxy.createVirtualDisk("local", str(GiB), "", {}, RECORDS_ONLY))
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), len(times)


def timed(call) -> tuple[float, dict]:
    begin = time.perf_counter()
    answer = ok(call())
    return 1000 * (time.perf_counter() - begin), answer


def measure(cached: str, scratch: str) -> dict:
    figures: dict = {}
    daemon = fresh_copy(cached, scratch)
    first_start = started(daemon)
    figures["create_early"] = create_p50(daemon.proxy(), seconds=10.0)
    daemon.stop(timeout=600)

    daemon = fresh_copy(cached, scratch)  # the same images again, without those made above
    figures["start"] = min(first_start, started(daemon))
    try:
        figures["settle"] = settle(daemon)
        proxy = daemon.proxy(timeout=600)
        proxy.getImageList("local")
        lists = [timed(lambda: proxy.getImageList("local")) for _ in range(5)]
        figures["list"] = statistics.median(ms for ms, _ in lists)
        figures["images"] = len(lists[0][1]["images"])
        figures["list_page"] = statistics.median(timed(lambda: proxy.getImageList("local", {"limit": 1000}))[0]
                                                 for _ in range(5))
        figures["rss"] = daemon.rss_mb()
        figures["check"], answer = timed(lambda: proxy.checkStorageRepository("local"))
        figures["fixes"] = len(answer["fixes"])
        figures["check_page"] = timed(lambda: proxy.checkStorageRepository("local", {"limit": 1000}))[0]
        figures["create_settled"] = create_p50(proxy, calls=200)
    finally:
        daemon.stop(timeout=600)
        shutil.rmtree(scratch, ignore_errors=True)
    return figures


ROWS = [  # (figure, key, format, absolute target or None)
    ("hsmd start-up to first ping (s)", "start", "{:.2f}", 2.0),
    ("createVirtualDisk p50, first 10 s after start (ms)", "create_early", "{:.1f}", 3.0),
    ("createVirtualDisk p50 once settled (ms)", "create_settled", "{:.2f}", None),
    ("  seconds until settled", "settle", "{:.0f}", None),
    ("getImageList, all (ms)", "list", "{:.1f}", 100.0),
    ("getImageList, a page of 1,000 (ms)", "list_page", "{:.1f}", None),
    ("RSS (MB)", "rss", "{:.0f}", 150.0),
    ("checkStorageRepository, all (ms)", "check", "{:.0f}", 1000.0),
    ("  its entries", "fixes", "{:d}", None),
    ("checkStorageRepository, a page of 1,000 (ms)", "check_page", "{:.0f}", None),
]


def value(figures: dict, key: str) -> float:
    found = figures[key]
    return found[0] if isinstance(found, tuple) else found


def table(results: dict[int, dict]) -> list[str]:
    sizes = sorted(results)
    base = results[sizes[0]]
    lines = ["| figure | " + " | ".join(f"{size:,} images" for size in sizes) + " | target |",
             "| --- |" + " --- |" * (len(sizes) + 1)]
    for title, key, fmt, target in ROWS:
        cells = []
        for size in sizes:
            mine = value(results[size], key)
            cell = fmt.format(mine)
            if size != sizes[0] and value(base, key) and key not in ("fixes", "settle"):
                cell += f" ({mine / value(base, key):.1f}x)"
            cells.append(cell)
        goal = f"< {target:g}" if target is not None else ""
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {goal} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="image counts, comma-separated; the first "
                        "is the baseline")
    parser.add_argument("--cache", default="/var/tmp/hsm-scale", help="where each size's images are kept")
    parser.add_argument("--threads", type=int, default=8, help="clients making the images")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = {}
    for size in sizes:
        print(f"{size} images:", flush=True)
        cached = prepared(args.cache, size, args.threads)
        results[size] = measure(cached, os.path.join(args.cache, f"{size}.run"))
        print(f"  {results[size]}", flush=True)
    print("\n".join(table(results)))
    print("(x): beside the first size, measured in this run. Start-up and getImageList are held within 3x of it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
