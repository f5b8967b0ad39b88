"""The service verbs: ping, getCapabilities, getHsmConfig, getStats."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import hsm
from hsm.api.stats import CallStats
from hsm.api.verbs import verb
from hsm.config import Config
from hsm.errors import ConfigError, InvalidParameterException
from hsm.sizes import format_size
from hsm.storage.repository import Health


class ServiceAPI:
    def __init__(self, config: Config, stats: CallStats,
                 task_mode: Callable[[], str] | None = None,
                 task_counts: Callable[[], dict[str, int]] = dict,
                 repositories: Callable[[], dict[str, Health]] = dict, repo_formats: list[str] | None = None,
                 offload_backends: Callable[[], list[str]] = list) -> None:
        self._config = config
        self._stats = stats
        self._task_mode = task_mode or (lambda: config.tasks.mode)
        self._task_counts = task_counts
        self._repositories = repositories
        self._repo_formats = repo_formats or []
        self._offload_backends = offload_backends
        self._started = time.time()

    @verb()
    def ping(self) -> dict:
        return {}

    @verb()
    def getCapabilities(self) -> dict:
        return {"info": {
            "version": hsm.__version__,
            "hostname": socket.gethostname(),
            "hostId": self._config.sanlock.host_id,
            "taskMode": self._task_mode(),
            "repoFormats": list(self._repo_formats),
            "offloadBackends": self._offload_backends(),
            "pid": os.getpid(),
        }}

    @verb()
    def getHsmConfig(self, section: str | None = None) -> dict:
        if section is not None and not isinstance(section, str):
            raise InvalidParameterException(f"section={section!r}: expected a string")
        try:
            return {"config": self._config.as_wire(section or None)}
        except ConfigError as e:
            raise InvalidParameterException(e.detail) from None

    @verb()
    def getStats(self) -> dict:
        verbs, codes = self._stats.snapshot()
        return {"stats": {
            "uptime": round(time.time() - self._started, 3),
            "verbs": {name: {"calls": s.calls, "errors": s.errors,
                             "avgMs": round(1000 * s.seconds / s.calls, 3) if s.calls else 0.0,
                             "maxMs": round(1000 * s.max_seconds, 3)}
                      for name, s in verbs.items()},
            "errors": {str(code): count for code, count in codes.items()},
            "tasks": self._task_counts(),
            "repositories": {repo_id: {"valid": health.valid, "freeBytes": format_size(health.free),
                                       "totalBytes": format_size(health.total),
                                       "readDelay": f"{health.read_delay:.6f}"}
                             for repo_id, health in self._repositories().items()},
        }}
