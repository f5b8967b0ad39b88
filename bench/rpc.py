"""XML-RPC service figures: hsmd beside a bare stdlib SimpleXMLRPCServer, same run.

For each server, each verb (ping, getStats) and each level of concurrency
(1, 16, 64 client *processes*, each with one ServerProxy it reuses), all
clients wait at a barrier, then make their calls; calls/s is counted from the
release to the last client's end, and p50/p99 over every call's latency.
Errors (refused, reset, faults) are counted, not raised. The baseline is the
stdlib server with its defaults, answering ping and, for getStats, the very
struct hsmd answered at the start (so both write the same bytes). Also
printed: hsmd's resident memory idle and after the load.

Targets: hsmd >= 0.9x the bare server's calls/s at every level; 0 errors for
hsmd at 64; hsmd idle RSS < 60 MB.

Run: .venv/bin/python bench/rpc.py [--calls 300] [--levels 1,16,64]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import xmlrpc.client

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hsmd import Hsmd, free_port  # noqa: E402


def bare_server(port: int, stats: dict) -> None:
    """The baseline: answers ping, and getStats with the very struct hsmd answered (same bytes to write)."""
    from xmlrpc.server import SimpleXMLRPCServer
    server = SimpleXMLRPCServer(("127.0.0.1", port), logRequests=False)
    server.register_function(lambda: {"status": {"code": 0, "message": "OK"}}, "ping")
    server.register_function(lambda: stats, "getStats")
    server.serve_forever()


def client(address: str, verb: str, calls: int, barrier, results) -> None:
    proxy = xmlrpc.client.ServerProxy(f"http://{address}/RPC2")
    method = getattr(proxy, verb)
    latencies, errors = [], 0
    barrier.wait()
    for _ in range(calls):
        begin = time.perf_counter()
        try:
            method()
        except Exception:
            errors += 1
            proxy = xmlrpc.client.ServerProxy(f"http://{address}/RPC2")
            method = getattr(proxy, verb)
        latencies.append(time.perf_counter() - begin)
    results.put((latencies, errors, time.perf_counter()))


def measure(address: str, verb: str, level: int, calls: int) -> dict:
    barrier = multiprocessing.Barrier(level + 1)
    results = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=client, args=(address, verb, calls, barrier, results))
               for _ in range(level)]
    for w in workers:
        w.start()
    barrier.wait()
    begin = time.perf_counter()
    done = [results.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = max(end for _, _, end in done) - begin
    latencies = sorted(x for lat, _, _ in done for x in lat)
    return {"rate": len(latencies) / elapsed, "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "errors": sum(e for _, e, _ in done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per client")
    parser.add_argument("--levels", default="1,16,64")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as root:
        hsmd = Hsmd(root).start()
        for verb in ("ping", "getStats", "getCapabilities"):
            hsmd.proxy().call(verb)
        time.sleep(0.5)
        idle = hsmd.rss_mb()
        bare_port = free_port()
        bare = multiprocessing.Process(target=bare_server, args=(bare_port, hsmd.proxy().getStats()),
                                       daemon=True)
        bare.start()
        time.sleep(0.5)
        rows = []
        for verb in ("ping", "getStats"):
            for level in levels:
                calls = max(args.calls // max(level // 4, 1), 50)
                base = measure(f"127.0.0.1:{bare_port}", verb, level, calls)
                ours = measure(hsmd.address, verb, level, calls)
                rows.append((verb, level, base, ours))
        loaded = hsmd.rss_mb()
        hsmd.stop()
    os.kill(bare.pid, signal.SIGTERM)
    print(f"{'verb':<9}{'clients':>8}  {'server':<6}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'hsmd/bare':>11}")
    misses = []
    for verb, level, base, ours in rows:
        ratio = ours["rate"] / base["rate"]
        for name, r in (("bare", base), ("hsmd", ours)):
            extra = f"{ratio:>10.2f}x" if name == "hsmd" else ""
            print(f"{verb:<9}{level:>8}  {name:<6}{r['rate']:>9.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                  f"{r['errors']:>8}{extra}")
        if ratio < 0.9:
            misses.append(f"{verb}@{level}: {ratio:.2f}x")
        if level == 64 and ours["errors"]:
            misses.append(f"{verb}@64: {ours['errors']} errors")
    print(f"\nhsmd RSS: {idle:.1f} MB idle, {loaded:.1f} MB after the load")
    print("target >= 0.9x bare at every level:", "PASS" if not any("x" in m for m in misses) else "MISS")
    print("target 0 errors for hsmd at 64:", "PASS" if not any("errors" in m for m in misses) else "MISS")
    print("target idle RSS < 60 MB:", "PASS" if idle < 60 else "MISS")
    for miss in misses:
        print("  miss:", miss)


if __name__ == "__main__":
    main()
