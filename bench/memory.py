"""hsmd's memory under a long mixed load: RSS after N minutes beside RSS after 1 minute, same run.

64 client processes (each with one ServerProxy it reuses) call in turn:
ping, getStats, runTestTask with one no-op step, and runTestTask with a new
options.requestId (every fourth of those repeats the previous requestId,
which must answer the first call's taskId). hsmd runs with [tasks]
diagnostics = true and otherwise its defaults ([tasks] finished_ttl 3600 s,
max_finished 1,000; [rpc] request_id_ttl 86,400 s, max_request_ids 10,000)
unless flags say otherwise. hsmd's RSS is sampled every minute; the baseline
is RSS after the first minute, when the bounds are reached.

Target: RSS after N minutes <= 1.2x RSS after 1 minute; 0 transport errors.

Run: .venv/bin/python bench/memory.py [--minutes 10] [--clients 64] [--request-id-ttl S]
     [--max-finished N] [--max-request-ids N]   (0 and 0: unbounded, as hsmd was before)
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
import tempfile
import time
import xmlrpc.client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd  # noqa: E402

NOOP = [{"seconds": 0, "journal": False}]
TARGET = 1.2


def client(index: int, address: str, stop, results) -> None:
    """Call the mix until `stop`; put (answers by verb and status code, transport errors, repeats that differed)."""
    proxy = xmlrpc.client.ServerProxy(f"http://{address}/RPC2")
    codes: collections.Counter = collections.Counter()
    errors = mismatches = 0
    previous: tuple[str, str] | None = None
    n = 0
    while not stop.is_set():
        n += 1
        try:
            kind = n % 4
            if kind == 0:
                answer, verb = proxy.ping(), "ping"
            elif kind == 1:
                answer, verb = proxy.getStats(), "getStats"
            elif kind == 2:
                answer, verb = proxy.runTestTask(NOOP, {}), "runTestTask"
            elif previous is not None and n % 16 == 3:
                answer, verb = proxy.runTestTask(NOOP, {"requestId": previous[0]}), "runTestTask repeat"
                if answer["status"]["code"] == 0 and answer["taskId"] != previous[1]:
                    mismatches += 1
            else:
                request_id = f"bench-{index}-{n}"
                answer, verb = proxy.runTestTask(NOOP, {"requestId": request_id}), "runTestTask requestId"
                if answer["status"]["code"] == 0:
                    previous = (request_id, answer["taskId"])
            codes[(verb, answer["status"]["code"])] += 1
        except Exception:
            errors += 1
            proxy = xmlrpc.client.ServerProxy(f"http://{address}/RPC2")
    results.put((codes, errors, mismatches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="length of the load (the issue's figure: 10)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--request-id-ttl", type=int, help="[rpc] request_id_ttl (default: hsmd's)")
    parser.add_argument("--max-finished", type=int, help="[tasks] max_finished (default: hsmd's; 0: unbounded)")
    parser.add_argument("--max-request-ids", type=int, help="[rpc] max_request_ids (default: hsmd's; 0: unbounded)")
    args = parser.parse_args()
    config: dict = {"tasks": {"diagnostics": "true"}}
    config["rpc"] = {}
    if args.request_id_ttl is not None:
        config["rpc"]["request_id_ttl"] = args.request_id_ttl
    if args.max_request_ids is not None:
        config["rpc"]["max_request_ids"] = args.max_request_ids
    if args.max_finished is not None:
        config["tasks"]["max_finished"] = args.max_finished
    with tempfile.TemporaryDirectory() as root:
        hsmd = Hsmd(root, config=config).start()
        proxy = hsmd.proxy()
        for verb in ("ping", "getStats"):
            proxy.call(verb)
        time.sleep(0.5)
        idle = hsmd.rss_mb()
        stop, results = multiprocessing.Event(), multiprocessing.Queue()
        workers = [multiprocessing.Process(target=client, args=(i, hsmd.address, stop, results))
                   for i in range(args.clients)]
        begin = time.monotonic()
        for w in workers:
            w.start()
        samples = []  # (minutes, RSS MB, tasks by state)
        marks = sorted({*[m for m in range(1, int(args.minutes) + 1)], args.minutes})
        for mark in marks:
            time.sleep(max(0.0, begin + 60 * mark - time.monotonic()))
            samples.append((mark, hsmd.rss_mb(), proxy.getStats()["stats"]["tasks"]))
            print(f"  {mark:>5.1f} min  RSS {samples[-1][1]:6.1f} MB  tasks {samples[-1][2]}", flush=True)
        stop.set()
        done = [results.get() for _ in workers]
        for w in workers:
            w.join()
        elapsed = time.monotonic() - begin
        requests_kept = len(os.listdir(os.path.join(hsmd.state_dir, "requests")))
        journal = os.path.getsize(os.path.join(hsmd.state_dir, "tasks", "journal"))
        hsmd.stop()
    codes = sum((c for c, _, _ in done), collections.Counter())
    errors = sum(e for _, e, _ in done)
    mismatches = sum(m for _, _, m in done)
    print(f"\n{args.clients} clients for {elapsed / 60:.1f} min: {sum(codes.values()) / elapsed:.0f} calls/s")
    for (verb, code), count in sorted(codes.items()):
        print(f"  {verb:<22} status {code:>4}: {count:>9}")
    print(f"  transport errors: {errors}; repeats answering another taskId: {mismatches}")
    print(f"  requestId answers on disk at the end: {requests_kept}; task journal {journal / 1e6:.1f} MB")
    first = samples[0][1]
    last = samples[-1][1]
    ratio = last / first
    print(f"\nhsmd RSS: {idle:.1f} MB idle (before the load), {first:.1f} MB after 1 min (baseline), "
          f"{last:.1f} MB after {samples[-1][0]:g} min: {ratio:.2f}x")
    print(f"target <= {TARGET}x the 1-minute RSS:", "PASS" if ratio <= TARGET else "MISS")
    print("target 0 transport errors and every repeat answered as its first call:",
          "PASS" if not errors and not mismatches else "MISS")


if __name__ == "__main__":
    main()
