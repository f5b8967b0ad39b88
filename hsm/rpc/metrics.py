"""GET /metrics: Prometheus text made by prometheus_client from hsm's own counters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from hsm.api.stats import LATENCY_BUCKETS, CallStats

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class _Collector:
    def __init__(self, stats: CallStats, task_counts: Callable[[], dict[str, int]],
                 repositories: Callable[[], dict[str, bool]], server_counts: Callable[[], dict[str, int]]) -> None:
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
        for repo_id, valid in sorted(self._repositories().items()):
            repos.add_metric([repo_id], 1 if valid else 0)
        server = self._server_counts()
        connections = GaugeMetricFamily("hsm_rpc_connections", "Open connections, requests in progress or not",
                                        value=server.get("connections", 0))
        in_workers = GaugeMetricFamily("hsm_rpc_requests_in_workers",
                                       "Whole requests queued for or running on a worker",
                                       value=server.get("in_workers", 0))
        yield from (calls, latency, errors, tasks, repos, connections, in_workers)


class Metrics:
    def __init__(self, stats: CallStats, task_counts: Callable[[], dict[str, int]] = dict,
                 repositories: Callable[[], dict[str, bool]] = dict) -> None:
        self.server_counts: Callable[[], dict[str, int]] = dict  # set by the RpcServer that serves these
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(stats, task_counts, repositories, lambda: self.server_counts()))

    def render(self) -> bytes:
        return generate_latest(self._registry)
