"""hsm run inside VDSM's process, when hsmd is not there: the same verbs and answers as on the wire."""

from __future__ import annotations

import logging
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from hsm import config as hsmconfig
from hsm.api.app import Application
from hsm.api.dispatch import BadArguments, UnknownVerb
from hsm.rpc.marshal import INVALID_PARAMS, METHOD_NOT_FOUND
from vdsm_shim.local import LocalCalls, with_task_id

log = logging.getLogger("vdsm_shim")

STOP_TIMEOUT = 30.0  # seconds running tasks get to end at close(); the rest resume at the next start


def config_from_irs(irs: dict[str, object] | None) -> hsmconfig.Config:
    """hsm's configuration from VDSM's own [irs] values (VDSM never reads hsm.conf), in transparent task mode."""
    overrides = {("tasks", "mode"): "transparent"}
    unknown = []
    for name, value in (irs or {}).items():
        if ("irs", name) in hsmconfig.OPTIONS:
            overrides[("irs", name)] = str(value)
        else:
            unknown.append(name)
    if unknown:
        log.debug("VDSM [irs] options hsm has no use for: %s", ", ".join(sorted(unknown)))
    return hsmconfig.load(None, overrides)


class InProcess(LocalCalls):
    """hsm's Application in this process, called as ServiceProxy is: `irs.createVirtualDisk(...)` -> dict.

    A verb that does not exist, or arguments that do not fit it, raise
    xmlrpc.client.Fault with the codes hsmd's wire uses, so that callers see
    one behaviour whichever way hsm runs.
    """

    def __init__(self, irs: dict[str, object] | None = None, task_id: Callable[[], str | None] | None = None) -> None:
        self.task_id = task_id
        self.config = config_from_irs(irs)
        self.app = Application(self.config)

    def __bool__(self) -> bool:
        return True

    def __getattr__(self, verb: str) -> Any:
        if verb.startswith("_"):
            raise AttributeError(verb)
        return lambda *args: self.call(verb, *args)

    def call(self, verb: str, *args: Any) -> dict:
        try:
            return self.app.call(verb, *with_task_id(verb, args, self.task_id))
        except UnknownVerb as e:
            raise xmlrpc.client.Fault(METHOD_NOT_FOUND, str(e)) from None
        except BadArguments as e:
            raise xmlrpc.client.Fault(INVALID_PARAMS, str(e)) from None

    def close(self) -> None:
        self.app.stop(STOP_TIMEOUT)
