"""Managed connection figures, each beside its baseline measured in the same run.

1. getStorageServerList with 1,000 CIDs over 10 physical connections (localfs
   paths, so that no mount is needed), p50 and p90 over 50 calls with hsm's
   ServiceProxy, beside the same call with no CID and beside ping, and split
   into hsmd's own time and the bare HTTP round trip. Target: under 50 ms.
2. hsmd start-up (exec to first answered ping) with those 1,000 CIDs
   persisted, beside start-up with none. Target: under 5 s.

Run: .venv/bin/python bench/connections.py [--cids 1000 --physical 10]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
import xmlrpc.client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd  # noqa: E402


def timed_calls(call, count: int = 50) -> list[float]:
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - begin))
    return sorted(times)


def raw_round_trip(address: str) -> float:
    """p50 ms of the same call over plain HTTP, its answer not parsed: what the client's parsing adds is the rest."""
    connection = http.client.HTTPConnection(address)
    body = xmlrpc.client.dumps((), "getStorageServerList").encode()

    def call() -> None:
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        connection.getresponse().read()

    times = timed_calls(call)
    connection.close()
    return statistics.median(times)


def started(daemon: Hsmd) -> float:
    begin = time.monotonic()
    daemon.start(timeout=120)
    return time.monotonic() - begin


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cids", type=int, default=1000)
    parser.add_argument("--physical", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as root:
        daemon = Hsmd(root, config={"irs": {"default_repository": "none"}})
        empty_start = started(daemon)
        proxy = daemon.proxy()
        pings = timed_calls(proxy.ping)
        empty = timed_calls(proxy.getStorageServerList)
        paths = [os.path.join(root, f"storage{i}") for i in range(args.physical)]
        for path in paths:
            os.mkdir(path)
        for i in range(args.cids):
            assert proxy.manageStorageServer(f"localfs://{paths[i % args.physical]}", f"cid-{i}")["status"]["code"] == 0
        deadline = time.monotonic() + 60
        while not all(s["connected"] for s in proxy.getStorageServerList()["servers"].values()):
            assert time.monotonic() < deadline, "connections did not come up"
            time.sleep(0.1)
        full = timed_calls(proxy.getStorageServerList)
        server_ms = proxy.getStats()["stats"]["verbs"]["getStorageServerList"]["avgMs"]
        raw = raw_round_trip(daemon.address)
        daemon.stop()
        full_start = started(daemon)
        listed = daemon.proxy().getStorageServerList()["servers"]
        daemon.stop()
    assert len(listed) == args.cids
    p50 = statistics.median(full)
    verdict = "PASS" if p50 < 50 else "FAIL"
    print(f"getStorageServerList, 50 calls: {args.cids} CIDs on {args.physical} connections p50 {p50:.1f} ms "
          f"p90 {full[44]:.1f} ms; no CID p50 {statistics.median(empty):.2f} ms; ping p50 "
          f"{statistics.median(pings):.2f} ms  target < 50 ms: {verdict}")
    print(f"  of which: hsmd's own time {server_ms:.1f} ms (getStats), the HTTP round trip without parsing the "
          f"answer {raw:.1f} ms; the rest is the client reading {args.cids} entries")
    start_verdict = "PASS" if full_start < 5 else "FAIL"
    print(f"hsmd start-up to first ping: with {args.cids} CIDs {full_start:.2f} s, with none {empty_start:.2f} s"
          f"  target < 5 s: {start_verdict}")
    return 0 if verdict == start_verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
