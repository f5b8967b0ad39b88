"""GET /metrics: Prometheus text made by prometheus_client from hsm's own counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from hsm.api.stats import LATENCY_BUCKETS, CallStats

if TYPE_CHECKING:
    from hsm.storage.repository import Health

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class _Collector:
    def __init__(self, stats: CallStats, task_counts: Callable[[], dict[str, int]],
                 repositories: Callable[[], dict[str, Health]], server_counts: Callable[[], dict[str, int]]) -> None:
        self._stats = stats
        self._server_counts = server_counts
        self._task_counts = task_counts
        self._repositories = repositories

    def collect(self) -> Iterator:
        verbs, codes = self._stats.snapshot()
        calls = CounterMetricFamily("hsm_rpc_calls", "Calls answered, per verb", labels=["verb"])
        latency = HistogramMetricFamily("hsm_rpc_latency_seconds", "Time to answer a call, per verb",
                                        labels=["verb"])
        for name, s in sorted(verbs.items()):
            calls.add_metric([name], s.calls)
            cumulative, running = [], 0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), s.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([name], cumulative, s.seconds)
        errors = CounterMetricFamily("hsm_rpc_errors", "Failed calls, per status code", labels=["code"])
        for code, count in sorted(codes.items()):
            errors.add_metric([str(code)], count)
        tasks = GaugeMetricFamily("hsm_tasks", "Tasks, per state", labels=["state"])
        for state, count in sorted(self._task_counts().items()):
            tasks.add_metric([state], count)
        repos = GaugeMetricFamily("hsm_repository_up", "1 when the repository's last check passed",
                                  labels=["repo"])
        free = GaugeMetricFamily("hsm_repository_free_bytes", "Free space at the repository's last check",
                                 labels=["repo"])
        total = GaugeMetricFamily("hsm_repository_size_bytes", "Size of the repository's file system",
                                  labels=["repo"])
        delay = GaugeMetricFamily("hsm_repository_read_delay_seconds",
                                  "Time the repository's last check took to read its record", labels=["repo"])
        for repo_id, health in sorted(self._repositories().items()):
            repos.add_metric([repo_id], 1 if health.valid else 0)
            free.add_metric([repo_id], health.free)
            total.add_metric([repo_id], health.total)
            delay.add_metric([repo_id], health.read_delay)
        server = self._server_counts()
        connections = GaugeMetricFamily("hsm_rpc_connections", "Open connections, requests in progress or not",
                                        value=server.get("connections", 0))
        in_workers = GaugeMetricFamily("hsm_rpc_requests_in_workers",
                                       "Whole requests queued for or running on a worker",
                                       value=server.get("in_workers", 0))
        yield from (calls, latency, errors, tasks, repos, free, total, delay, connections, in_workers)


class Metrics:
    def __init__(self, stats: CallStats, task_counts: Callable[[], dict[str, int]] = dict,
                 repositories: Callable[[], dict[str, Health]] = dict) -> None:
        self.server_counts: Callable[[], dict[str, int]] = dict  # set by the RpcServer that serves these
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(stats, task_counts, repositories, lambda: self.server_counts()))

    def render(self) -> bytes:
        return generate_latest(self._registry)
