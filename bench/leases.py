"""Many hosts on one repository: commit rate under the metadata-writer lease, and failover, each beside a baseline.

Hosts are those of tests/multihost.py: per host its own sanlock daemon (io timeout 1), supervdsmd and
hsmd with its own host id, all on one posixfs-1 repository (a bind mount of one local folder).

1. Commits/s: createVirtualDisk(1 MiB) with `{"autoFix": false}` (a record commit under the lease,
   no qemu-img), `--creates` in all from `--clients` threads per host, spread over 1, 2 and 3 hosts
   (a new cluster each), and `--single` from one client on one host (a commit's own latency). Baseline:
   the same count from the same number of clients in all against the embedded localfs-1 repository
   `local` of one plain hsmd. Reported: ops/s, p50/p99/max of the answer, the ratio to localfs-1, the
   share of the commits each host made, and what the hosts' hsm.log say they read again (records
   changed by another host; whole rescans); beside them, sanlock alone acquiring and releasing the
   writer lease through one host's daemon.
2. Failover, 2 hosts, seconds from killing host 1 right after a commit of its own with
   `{"autoFix": false}` (its work, left pending), on host 2: (a) the first createVirtualDisk that
   succeeds, (b) host 1's pending disk optimized (host 2's monitor takes it over once sanlock calls
   host 1 dead), beside sanlock's own host-dead time, seen through host 2's daemon (get_hosts of host 1
   until HOST_DEAD, in a subprocess; in theory 8 io timeouts + 60 s). Host.die() freezes and kills the
   whole host at once (sanlock, hsmd, its I/O helper). Twice: "quiet", host 1 doing nothing else;
   "busy" (not with --quick), host 1 committing back-to-back from `--clients` threads, so that it
   likely dies holding the lease and host 2's first commit waits for sanlock too.

The default run takes about 5 minutes (each failover waits out sanlock's 68 s).

Run as root: .venv/bin/python bench/leases.py [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd  # noqa: E402
from tests.images_helpers import MiB, code, ok  # noqa: E402
from tests.multihost import CID, IO_TIMEOUT, Host, cluster  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

LOCAL = "local"
PENDING = {"autoFix": False}
REREAD = re.compile(r"was changed by another host|was removed from \S+ by another host")
RESCAN = re.compile(r"Repository \S+ read again:")

# Run with host 2's SANLOCK_RUN_DIR (the binding reads it once per process): one JSON line whenever what
# host 2's daemon says of host 1 changes: its flags, and the owners of the metadata-writer lease.
WATCHER = r"""
import json, sys, time
import sanlock
name, host_id, leases = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
seen = None
while True:
    try:
        flags = sanlock.get_hosts(name, host_id)[0]["flags"]
    except Exception as e:
        flags = repr(e)
    if flags != seen:
        try:
            owners = [o["host_id"] for o in sanlock.read_resource_owners(name, b"SDM", [(leases, 1 << 20)])]
        except Exception as e:
            owners = repr(e)
        print(json.dumps({"t": time.time(), "flags": flags, "dead": flags == sanlock.HOST_DEAD,
                          "owners": owners}), flush=True)
        seen = flags
    time.sleep(0.05)
"""

# Run with a host's SANLOCK_RUN_DIR: acquire and release the metadata-writer lease `count` times through that
# host's daemon (what one commit on an idle repository asks of sanlock); each pair's seconds, as JSON.
SANLOCK_PAIRS = r"""
import json, sys, time
import sanlock
name, leases, count = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3])
fd = sanlock.register()
pairs = []
while len(pairs) < count:
    begin = time.perf_counter()
    try:
        sanlock.acquire(name, b"SDM", [(leases, 1 << 20)], slkfd=fd)
    except sanlock.SanlockException:  # hsmd's helper still holds it (its monitor lets it go)
        time.sleep(0.05)
        continue
    sanlock.release(name, b"SDM", [(leases, 1 << 20)], slkfd=fd)
    pairs.append(time.perf_counter() - begin)
print(json.dumps(pairs))
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1)))]


def load(targets: list[tuple[Hsmd, str]], clients: int, total: int) -> dict:
    """`total` commits from `clients` threads per target (daemon, repository id): ops/s, p50/p99 ms."""
    left = [total]
    lock = threading.Lock()
    times: list[float] = []
    errors: list[str] = []
    workers = [(index, daemon, repo) for index, (daemon, repo) in enumerate(targets) for _ in range(clients)]
    done = [0] * len(targets)
    ready = threading.Barrier(len(workers) + 1)

    def client(index: int, daemon: Hsmd, repo: str) -> None:
        proxy = daemon.proxy(timeout=300)
        proxy.ping()
        ready.wait()
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            begin = time.perf_counter()
            answer = proxy.createVirtualDisk(repo, str(MiB), "", {}, PENDING)
            elapsed = time.perf_counter() - begin
            with lock:
                if code(answer):
                    errors.append(f"{code(answer)}: {answer['status']['message'][:100]}")
                else:
                    times.append(elapsed)
                    done[index] += 1

    threads = [threading.Thread(target=client, args=worker) for worker in workers]
    for thread in threads:
        thread.start()
    ready.wait()
    begin = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - begin
    return {"ops": len(times) / seconds, "p50": 1000 * percentile(times, 0.5), "p99": 1000 * percentile(times, 0.99),
            "max": 1000 * max(times),
            "errors": errors, "seconds": seconds, "clients": len(workers), "total": total,
            "share": [count / max(1, len(times)) for count in done]}


def log_counts(hosts: list[Host]) -> tuple[int, int]:
    """(records read again as changed by another host, whole rescans) in the hosts' hsm.log so far."""
    text = "".join(host.hsmd.log_text() for host in hosts)
    return len(REREAD.findall(text)), len(RESCAN.findall(text))


def localfs(root: pathlib.Path, jobs: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
    """The baseline: the same loads (clients, commits) on the embedded localfs-1 repository of one hsmd."""
    (root / "local").mkdir()
    daemon = Hsmd(str(root / "local")).start()
    try:
        ok(daemon.proxy().createVirtualDisk(LOCAL, str(MiB), "", {}, PENDING))  # warm up
        return {(clients, total): load([(daemon, LOCAL)], clients, total) for clients, total in jobs}
    finally:
        daemon.stop()


def shared(root: pathlib.Path, count: int, clients: int, total: int, single: int) -> dict:
    """`count` hosts on one new posixfs-1 repository: the load spread over all of them (and, on one host,
    one client first)."""
    top = root / f"hosts{count}"
    top.mkdir()
    begin = time.monotonic()
    hosts, _ = cluster(top, count)
    figures: dict = {"setup": time.monotonic() - begin}
    try:
        for host in hosts:  # each host's I/O helper started, its first lease taken
            ok(host.hsmd.proxy().createVirtualDisk(CID, str(MiB), "", {}, PENDING))
        if single:
            figures["single"] = load([(hosts[0].hsmd, CID)], 1, single)
            repo = ok(hosts[0].hsmd.proxy().getStorageRepositoryList())["repos"][CID]
            pairs = json.loads(subprocess.run(
                [sys.executable, "-c", SANLOCK_PAIRS, repo["uuid"], os.path.join(repo["path"], "leases", "leases"),
                 str(single)], env=hosts[0].sanlock_env, capture_output=True, text=True, check=True).stdout)
            figures["sanlock"] = {"p50": 1000 * percentile(pairs, 0.5), "p99": 1000 * percentile(pairs, 0.99)}
        before = log_counts(hosts)
        figures["load"] = load([(host.hsmd, CID) for host in hosts], clients, total)
        after = log_counts(hosts)
        figures["reread"], figures["rescans"] = after[0] - before[0], after[1] - before[1]
        generation = hosts[0].export / "repo" / "leases" / "generation"
        figures["generation_bytes"] = generation.stat().st_size
    finally:
        for host in hosts:
            host.close()
    return figures


def failover(root: pathlib.Path, name: str, busy_clients: int) -> dict:
    """Two hosts; host 1 commits a pending disk and dies at once (with `busy_clients` threads committing
    back-to-back on it meanwhile, when not 0). Seconds from the kill to what host 2 sees."""
    top = root / name
    top.mkdir()
    hosts, _ = cluster(top, 2)
    one, two = hosts
    watcher = None
    stop = threading.Event()
    try:
        on_two, on_one = two.hsmd.proxy(timeout=120), one.hsmd.proxy(timeout=120)
        repo = ok(on_two.getStorageRepositoryList())["repos"][CID]
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, repo["uuid"], "1",
                                    os.path.join(repo["path"], "leases", "leases")], env=two.sanlock_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        said = watcher.stdout
        assert said is not None
        first = json.loads(said.readline())
        assert not first["dead"], first
        ok(on_two.createVirtualDisk(CID, str(MiB), "", {}, PENDING))  # host 2's helper is up

        backlog: list[str] = []

        def keep_committing() -> None:
            proxy = one.hsmd.proxy(timeout=60)
            while not stop.is_set():
                try:
                    answer = proxy.createVirtualDisk(CID, str(MiB), "", {}, PENDING)
                except Exception:
                    return
                if not code(answer):
                    backlog.append(answer["imageId"])
        busy = [threading.Thread(target=keep_committing) for _ in range(busy_clients)]
        for thread in busy:
            thread.start()
        if busy:
            time.sleep(2)
        pending = ok(on_one.createVirtualDisk(CID, str(MiB), "", {}, PENDING))["imageId"]
        killed = time.time()
        one.die()
        stop.set()
        for thread in busy:
            thread.join(30)

        backlog.append(pending)
        figures: dict = {"backlog": len(backlog), "commit": float("nan")}  # nan: no commit on host 2 in 300 s
        refusals: list[int] = []

        def commit_on_two() -> None:
            proxy = two.hsmd.proxy(timeout=300)
            while True:
                answer = proxy.createVirtualDisk(CID, str(MiB), "", {}, PENDING)
                if not code(answer):
                    figures["commit"] = time.time() - killed
                    return
                refusals.append(code(answer))
        committer = threading.Thread(target=commit_on_two)
        committer.start()

        def optimized(image_id: str) -> bool:
            answer = on_two.getImageStatus(CID, image_id)
            return not code(answer) and answer["image"]["state"] == "optimized" and not answer["image"]["tasks"]
        wait_for(lambda: optimized(pending), timeout=300, poll=0.1, what=f"host 2 to finish host 1's {pending}")
        figures["optimized"] = time.time() - killed
        for image_id in backlog:  # acknowledged by host 1 before it died: every one is finished by host 2
            wait_for(functools.partial(optimized, image_id), timeout=300, poll=0.1,
                     what=f"host 2 to finish {image_id}")
        figures["all"] = time.time() - killed
        committer.join(300)
        figures["refusals"] = refusals
        # the watcher prints only on changes: read what it said until HOST_DEAD
        seen = [first]
        while not seen[-1]["dead"]:
            seen.append(json.loads(said.readline()))
        figures["dead"] = seen[-1]["t"] - killed
        after_kill = [line for line in seen if line["t"] >= killed] or seen[-1:]
        figures["owners_after_kill"] = after_kill[0]["owners"]
        figures["flags"] = [line["flags"] for line in seen]
        return figures
    finally:
        stop.set()
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        for host in hosts:
            host.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer commits (300 a configuration, 50 single), and no "
                        "busy failover")
    parser.add_argument("--creates", type=int, default=2000, help="commits per configuration")
    parser.add_argument("--single", type=int, default=200, help="commits of the one-client run")
    parser.add_argument("--clients", type=int, default=4, help="client threads per host")
    parser.add_argument("--hosts", default="1,2,3", help="host counts, comma-separated")
    parser.add_argument("--no-busy", action="store_true", help="skip the failover of a host committing back-to-back")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' folders (logs) in /var/tmp")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("sanlock") is None:
        sys.exit("bench/leases.py needs root and sanlock")
    if args.quick:
        args.creates, args.single = 300, 50
    counts = [int(count) for count in args.hosts.split(",")]
    root = pathlib.Path(tempfile.mkdtemp(prefix="hsm-leases-", dir="/var/tmp"))
    try:
        single = args.single if 1 in counts else 0
        jobs = sorted({*([(1, single)] if single else []), *((count * args.clients, args.creates) for count in counts)})
        base = localfs(root, jobs)
        results = {}
        for count in counts:
            results[count] = shared(root, count, args.clients, args.creates, single if count == 1 else 0)
            print(f"{count} host(s): cluster ready in {results[count]['setup']:.1f} s, "
                  f"{args.creates} commits in {results[count]['load']['seconds']:.1f} s", flush=True)
        fails = {} if args.no_failover else {"quiet": failover(root, "failover", 0)}
        if not (args.quick or args.no_busy or args.no_failover):
            fails["busy"] = failover(root, "failover-busy", args.clients)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\ncreateVirtualDisk autoFix false (a record commit), {args.creates} a configuration "
          f"({args.single} with one client); baseline: localfs-1 with the same clients in all")
    print(f"{'configuration':<22} {'clients':>7} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} | "
          f"{'localfs ops/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5} | reread rescans errors | "
          "commits by host")
    rows: list[tuple[str, dict, dict | None]] = []
    if 1 in results and "single" in results[1]:
        rows.append(("posixfs-1, 1 host", results[1]["single"], None))
    rows += [(f"posixfs-1, {count} host{'s' if count > 1 else ''}", results[count]["load"], results[count])
             for count in counts]
    for label, figures, extra in rows:
        local = base[figures["clients"], figures["total"]]
        more = f"{extra['reread']:>6} {extra['rescans']:>7}" if extra else f"{'':>6} {'':>7}"
        print(f"{label:<22} {figures['clients']:>7} {figures['ops']:>7.1f} {figures['p50']:>7.1f} "
              f"{figures['p99']:>7.1f} {figures['max']:>7.0f} | {local['ops']:>13.1f} {local['p50']:>7.1f} "
              f"{local['p99']:>7.1f} | "
              f"{figures['ops'] / local['ops']:>5.2f} | {more} {len(figures['errors']) + len(local['errors']):>6} | "
              + " / ".join(f"{100 * share:.0f}%" for share in figures["share"]))
        for error in (figures["errors"] + local["errors"])[:3]:
            print(f"    {error}")
    if 1 in results and "sanlock" in results[1]:
        pairs = results[1]["sanlock"]
        print(f"sanlock alone, acquire + release of the writer lease on 1 host ({args.single} times, one client): "
              f"p50 {pairs['p50']:.1f} ms, p99 {pairs['p99']:.1f} ms")
    sizes = ", ".join(f"{count} host(s) {results[count]['generation_bytes'] / 1024:.0f} KiB" for count in counts)
    print(f"leases/generation at the end: {sizes}")

    if not fails:
        return 0
    theory = 8 * IO_TIMEOUT + 60
    names = list(fails)
    print(f"\nfailover, 2 hosts, io timeout {IO_TIMEOUT}: seconds from killing host 1 right after a commit of its "
          f"own, the host frozen and killed at once (quiet: nothing else running; busy: {args.clients} clients "
          "committing back-to-back)")
    print(f"{'':<58}" + "".join(f"{name:>8}" for name in names))
    lines = [(f"sanlock (host 2's daemon) calls host 1 dead (theory {theory} s)", "dead", "{:.1f}"),
            ("host 2's first createVirtualDisk succeeds", "commit", "{:.1f}"),
            ("host 1's pending disk optimized by host 2", "optimized", "{:.1f}"),
            ("  after sanlock called host 1 dead", "late", "{:+.1f}"),
            ("disks host 1 left pending (host 2 takes them over)", "backlog", "{}"),
            ("all of them optimized by host 2", "all", "{:.1f}"),
            ("writer lease owners on storage after the kill", "owners_after_kill", "{}"),
            ("refusals of host 2's commit before it succeeded", "refusals", "{}")]
    for label, key, form in lines:
        cells = []
        for name in names:
            figures = fails[name]
            value = figures["optimized"] - figures["dead"] if key == "late" else figures[key]
            cells.append(form.format(len(value) if key == "refusals" else value))
        print(f"{label:<58}" + "".join(f"{cell:>8}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
