"""ServiceProxy: hsmd for VDSM, over the local Unix socket (or TCP), shared by VDSM's threads."""

from __future__ import annotations

import http.client
import logging
import threading
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from hsm.errors import HsmdUnavailable
from hsm.rpc import client
from vdsm_shim.local import LocalCalls, with_task_id

log = logging.getLogger("vdsm_shim")

PROBE_TIMEOUT = 2.0  # seconds hsmd has to answer the first ping before VDSM runs hsm in-process
_LOST = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)


class ServiceProxy(LocalCalls):
    """hsmd's verbs as methods answering VDSM's `{"status": {code, message}, ...}` dicts.

    Falsy when hsmd cannot be reached within `probe_timeout`, so VDSM writes
    `cli = ServiceProxy(); irs = cli if cli else in_process`. Safe to share
    between threads (one connection each). hsmd is switched to transparent task
    mode, so VDSM's own task ids name hsmd's tasks; after hsmd restarts, the first
    call reconnects and switches it again. While hsmd is away a call answers 5015
    at once (a refused connection), never hangs past `timeout`.
    """

    def __init__(self, address: str | None = None, timeout: float = 60.0, tls: client.TlsFiles | None = None,
                 probe_timeout: float = PROBE_TIMEOUT, config_path: str | None = None,
                 task_id: Callable[[], str | None] | None = None) -> None:
        self.task_id = task_id
        self.address = address or (client.DEFAULT_ADDRESS if tls else client.default_address(config_path))
        self._timeout = timeout
        self._tls = tls
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0  # bumped when a call finds hsmd gone: every thread's connection is then stale
        self._made: list[client.ServiceProxy] = []  # every thread's connection, for close()
        self._ready = False
        try:
            probe = client.ServiceProxy(self.address, tls=tls, timeout=probe_timeout)
            try:
                self._switch(probe)
                self._ready = True
            finally:
                probe.close()
        except _LOST as e:
            log.info("hsmd is not reachable at %s: %s", self.address, e)

    def __bool__(self) -> bool:
        return self._ready

    def __getattr__(self, verb: str) -> Any:
        if verb.startswith("_"):
            raise AttributeError(verb)
        return lambda *args: self.call(verb, *args)

    def call(self, verb: str, *args: Any) -> dict:
        """The verb's answer; 5015 when hsmd cannot be reached (tried twice: once more after a reconnect)."""
        args = with_task_id(verb, args, self.task_id)
        for attempt in range(2):
            try:
                return self._proxy().call(verb, *args)
            except _LOST as e:
                self._lost(e)
                if attempt:
                    log.warning("hsmd is not reachable at %s: %s", self.address, e)
                    return {"status": HsmdUnavailable(f"{self.address}: {e}").status()}
        raise AssertionError("not reached")

    def close(self) -> None:
        """Close every thread's connection (VDSM stopping); a later call connects again."""
        with self._lock:
            made, self._made = self._made, []
            self._generation += 1
        for proxy in made:
            proxy.close()

    def __enter__(self) -> ServiceProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _proxy(self) -> client.ServiceProxy:
        """This thread's connection; a new one (after an outage, say) switches hsmd to transparent mode first."""
        local = self._local
        proxy = getattr(local, "proxy", None)
        if proxy is not None and local.generation == self._generation:
            return proxy
        if proxy is not None:
            proxy.close()
            local.proxy = None
        # No silent second try on a closed connection: a new one may reach a restarted hsmd, which must be
        # switched to transparent mode before it takes a call.
        proxy = client.ServiceProxy(self.address, tls=self._tls, timeout=self._timeout, retry_stale=False)
        try:
            self._switch(proxy)
        except BaseException:
            proxy.close()
            raise
        with self._lock:
            self._made.append(proxy)
        local.proxy, local.generation = proxy, self._generation
        return proxy

    def _lost(self, error: Exception) -> None:
        """hsmd went away, restarted, or closed an idle connection: every thread's connection is stale."""
        with self._lock:
            self._generation += 1
        log.info("The connection to hsmd at %s is gone (%s): connecting again", self.address, error)
        proxy = getattr(self._local, "proxy", None)
        if proxy is not None:
            proxy.close()
            self._local.proxy = None
            with self._lock:
                if proxy in self._made:
                    self._made.remove(proxy)

    @staticmethod
    def _switch(proxy: client.ServiceProxy) -> None:
        """Put hsmd in transparent task mode (VDSM keeps its tasks); raises what a lost hsmd raises."""
        answer = proxy.call("setTaskMode", "transparent")
        if answer["status"]["code"] != 0:
            log.warning("hsmd refused transparent task mode: %s", answer["status"])
