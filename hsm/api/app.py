"""hsm's parts wired together from a configuration, without a server in front."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from hsm import config as hsmconfig
from hsm.api.arrays import ArraysAPI
from hsm.api.connections import ConnectionsAPI
from hsm.api.devices import DevicesAPI
from hsm.api.diagnostics import DiagnosticsAPI
from hsm.api.dispatch import Dispatcher
from hsm.api.images import ImagesAPI
from hsm.api.legacy_connections import LegacyConnectionsAPI
from hsm.api.legacy_devices import LegacyDevicesAPI
from hsm.api.legacy_domains import LegacyDomainsAPI
from hsm.api.legacy_pool import LegacyPoolAPI
from hsm.api.legacy_tasks import LegacyTasksAPI
from hsm.api.legacy_volumes import LegacyVolumesAPI
from hsm.api.repositories import RepositoriesAPI
from hsm.api.requests import RequestLog
from hsm.api.service import ServiceAPI
from hsm.api.stats import CallStats
from hsm.api.tasks import TasksAPI
from hsm.arrays import Arrays
from hsm.connections.backends import Backends
from hsm.connections.manager import ConnectionManager
from hsm.storage import repository
from hsm.storage.domains import Domains
from hsm.storage.engine import Engine
from hsm.storage.pools import Pools
from hsm.storage.repository import FileRepository
from hsm.tasks import TaskManager
from hsm.tasks.manager import TRANSPARENT
from hsm.watch import Watcher, watch_for_file
from supervdsm.client import SupervdsmClient

log = logging.getLogger("hsm.app")

LOCAL_REPO_ID = "local"
LOCAL_FORMAT = "localfs-1"


class Application:
    """hsm's parts built from a configuration, started and stopped together: what hsmd serves over
    XML-RPC, and what vdsm_shim runs in VDSM's process when hsmd is not there. `call` runs a verb
    by name and answers as the wire does."""

    def __init__(self, config: hsmconfig.Config) -> None:
        self.config = config
        state_dir = config.irs.state_dir
        os.makedirs(state_dir, exist_ok=True)
        self.stats = CallStats()
        self.watcher = Watcher()
        self.tasks = TaskManager(
            os.path.join(state_dir, "tasks"), mode=config.tasks.mode, pool_size=config.tasks.thread_pool_size,
            max_tasks=config.tasks.max_tasks, finished_ttl=config.tasks.finished_ttl,
            max_finished=config.tasks.max_finished,
            lock_timeout=config.irs.task_resource_default_timeout / 1000)
        irs = config.irs
        self.supervdsm = supervdsm = SupervdsmClient(
            config.supervdsm.socket, config.supervdsm.connect_timeout, config.supervdsm.call_timeout,
            max_calls=config.supervdsm.max_calls)
        conns = config.connections
        self.connections = ConnectionManager(
            state_dir, Backends(supervdsm, os.path.join(irs.repository, "mnt")), interval=conns.monitor_interval,
            backoff_min=conns.reconnect_backoff_min, backoff_max=conns.reconnect_backoff_max,
            users=lambda cids: self.engine.users_of(cids))
        offload = config.offload
        self.arrays = Arrays(offload.arrays, offload.array_password, refresh_interval=offload.capabilities_refresh,
                             job_timeout=offload.array_job_timeout)
        self.engine = Engine(self.tasks, host_id=config.sanlock.host_id, io_timeout=irs.process_pool_timeout,
                             io_slots=irs.process_pool_max_slots_per_domain,
                             monitor_interval=irs.sd_health_check_delay, qcow2_compat=irs.qcow2_compat,
                             state_dir=state_dir, prepare_timeout=irs.prepare_image_timeout / 1000,
                             progress_interval=irs.progress_interval, watcher=self.watcher,
                             connections=self.connections, supervdsm=supervdsm, lv_activation=irs.lv_activation,
                             lease_io_timeout=config.sanlock.io_timeout, use_volume_leases=irs.use_volume_leases,
                             offload_enabled=offload.enabled, arrays=self.arrays)
        self.domains = Domains(self.engine, self.connections, state_dir)  # VDSM's storage domains and pool
        self.pools = Pools(self.domains, state_dir)
        groups: list[object] = [
            ServiceAPI(config, self.stats, task_mode=lambda: self.tasks.mode, task_counts=self.tasks.counts,
                       repositories=self.engine.health,
                       repo_formats=["localfs-1", "nfs-1", "posixfs-1", "block-1"],
                       offload_backends=self.engine.offload_backends),
            TasksAPI(self.tasks),
            RepositoriesAPI(self.engine),
            ImagesAPI(self.engine),
            DevicesAPI(supervdsm),
            ConnectionsAPI(self.connections),
            LegacyConnectionsAPI(self.connections),
            LegacyDomainsAPI(self.engine, self.domains, self.pools),
            LegacyPoolAPI(self.pools, self.tasks),
            LegacyDevicesAPI(supervdsm, self.domains, self.pools),
            LegacyTasksAPI(self.tasks),
            LegacyVolumesAPI(self.engine, self.domains, self.pools, self.tasks),
            ArraysAPI(self.arrays),
        ]
        if config.tasks.diagnostics:
            groups.append(DiagnosticsAPI(self.tasks, os.path.join(state_dir, "diagnostics")))
        requests = RequestLog(os.path.join(state_dir, "requests"), ttl=config.rpc.request_id_ttl,
                              max_answers=config.rpc.max_request_ids)
        self.dispatcher = Dispatcher(groups, requests, self.stats)
        self.connections.start()
        self.arrays.start()
        watch_for_file(self.watcher, config.supervdsm.socket, self._supervdsmd_is_back)
        local = self._connect_default_repository()
        self.tasks.recover_all()
        if local is not None:
            self._recover_intents(local)

    def _recover_intents(self, local: FileRepository) -> None:
        """The fixes of the default repository's pending intents. Non-transparent: resumed in the background,
        so that a repository of 100,000 pending records answers at once (each resumed fix is a task written
        to the journal); transparent: given back before hsmd answers, for VDSM's first getAllTasksStatuses."""
        if self.tasks.mode == TRANSPARENT:
            self.engine.fixes.recover_intents(local)
            return
        threading.Thread(target=self.engine.fixes.recover_intents, args=(local,), name="resume-local",
                         daemon=True).start()

    def call(self, verb: str, *args: Any) -> dict:
        """A verb's answer ({status, ...}), as hsmd's wire gives it; UnknownVerb or BadArguments otherwise."""
        return self.dispatcher.call(verb, args)

    def _supervdsmd_is_back(self) -> None:
        log.info("supervdsmd's socket is back: reconnecting lost storage now")
        self.connections.retry_now()

    def _connect_default_repository(self) -> FileRepository | None:
        """The embedded default: a localfs-1 repository connected as 'local', made on first start."""
        where = self.config.irs.default_repository
        if where == "none":
            return None
        path = os.path.join(self.config.irs.state_dir, "local") if where == "auto" else os.path.abspath(where)
        os.makedirs(path, exist_ok=True)
        if not os.path.exists(os.path.join(path, repository.RECORD)):
            self.engine.create_repository(LOCAL_FORMAT, {"path": path})
        return self.engine.connect(LOCAL_REPO_ID, LOCAL_FORMAT, {"path": path})

    def expire(self) -> None:
        """Forget ended tasks and requestId answers past their age or count, even when no call comes."""
        self.tasks.expire()
        if self.dispatcher.requests is not None:
            self.dispatcher.requests.expire()

    def stop(self, timeout: float) -> None:
        """Let running tasks end for up to `timeout` seconds (the rest resume at the next start)."""
        self.tasks.shutdown(timeout)
        self.connections.stop()
        self.arrays.close()
        self.watcher.close()
        self.engine.close()
        self.supervdsm.close()
        if self.dispatcher.requests is not None:
            self.dispatcher.requests.expire()
